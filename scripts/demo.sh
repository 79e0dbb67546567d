#!/usr/bin/env bash
# The main job on a fresh machine: set up, write a sample photo library, index it with the embedded
# default model and serve the search app on http://127.0.0.1:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/coca-search" demo "$@"
