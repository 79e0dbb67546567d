#!/usr/bin/env bash
# The exact command that trained the embedded default model (coca/default_model/MODEL_CARD.md):
#   bash scripts/train_default.sh OUT_DIR [--seed 0] [--time-budget 420] ...
# One GPU, ~7.5 minutes: renders 131,072 training scenes and trains, 420 s for both together,
# writes OUT_DIR/default_model (the bundle) and OUT_DIR/training (logs), then evaluates on the
# 2,000-image held-out split. Needs torch, numpy, pillow, tokenizers, safetensors and ftfy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# coca.tokenizer imports ftfy; a bare GPU box may lack it, so use a carried copy when present
# (make one with: mkdir -p build/gpu_pydeps && cp -r .venv/lib/python3*/site-packages/{ftfy,wcwidth} build/gpu_pydeps/).
if ! "$PY" -c "import ftfy" 2>/dev/null && [ -d build/gpu_pydeps ]; then
    export PYTHONPATH="$PYTHONPATH:$PWD/build/gpu_pydeps"
fi
exec "$PY" scripts/train_default.py "$@"
