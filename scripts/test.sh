#!/usr/bin/env bash
# Sets up everything the tests need and runs them: lint, then the whole suite (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
