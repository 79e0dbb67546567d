#!/usr/bin/env bash
# Sets up a virtual environment for coca-search on a fresh machine.
#   bash scripts/setup.sh          # the app (CPU torch 2.13.0 from this machine's disk if torch is missing)
#   bash scripts/setup.sh --test   # + test tools: torch 2.14.1 + torchvision 0.29.1 (needed by open_clip_torch),
#                                  #   open_clip_torch 3.3.0, pytest, ruff, playwright, Debian's chromium
# torch is always installed by an exact pin first, so no resolver ever pulls a newer multi-GB build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)

if [ "$want_tests" = 1 ]; then
    if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
        "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
    fi
    "${PIP[@]}" -e ".[test]"
    if [ ! -x /usr/bin/chromium ]; then
        echo "Installing Debian's chromium for the browser tests..."
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    fi
else
    if ! "$PY" -c "import torch" 2>/dev/null; then
        "${PIP[@]}" torch==2.13.0
    fi
    "${PIP[@]}" -e .
fi
echo "coca-search is set up in $VENV"
