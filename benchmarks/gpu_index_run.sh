#!/usr/bin/env bash
# GPU indexing throughput (issue 4), one command on the device machine:
#
#     bash benchmarks/gpu_index_run.sh "$OUT"            # one H100: ~5 minutes, capped at 400 s
#     SMOKE=1 bash benchmarks/gpu_index_run.sh /tmp/out  # tiny CPU dry run of the same steps
#
# Random-weight coca_ViT-B-32 (20,480 photos) and coca_ViT-L-14 (8,192 photos), greedy captions of
# at most 20 tokens, 1024x768 JPEGs written to /tmp first, batch 512, fp32 weights under bf16
# autocast (as `coca-search index` runs them); each model with JPEGs decoded on the GPU
# (--decode gpu: nvJPEG through torchvision, from the carried .whl_gpu wheels) and on the CPU
# (--decode cpu: Pillow in 14 processes), plus the decode stage alone for each B-32 run; then the
# four runs again on 8 of the 16 cores (taskset, 6 decode workers). Writes at
# most three files to OUT: gpu_index.log (everything printed), gpu_index.json (one object per
# run), gpu_index.md (a table for BENCHMARKS.md).
set -uo pipefail

OUT=${1:?usage: bash benchmarks/gpu_index_run.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEADLINE=$(($(date +%s) + ${BUDGET_S:-400}))
RUNS=/tmp/coca_gpu_index_runs
rm -rf "$RUNS" && mkdir -p "$RUNS"
exec > >(tee "$OUT/gpu_index.log") 2>&1

# Packages the device lacks come from the carried wheels (skipped when already importable):
# .whl for the catalog and CLI, .whl_gpu for torchvision (nvJPEG; built for the device's torch).
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
install_wheels() {  # install_wheels FOLDER IMPORTS
    $PY -c "import $2" 2>/dev/null && return
    if ! compgen -G "$1/*.whl" >/dev/null; then
        echo "no wheels in $1: $2 missing"
        return
    fi
    echo "installing the carried wheels of $1 into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$1"/*.whl || echo "wheel install from $1 failed"
}
install_wheels .whl "sqlalchemy, faiss"
install_wheels .whl_gpu torchvision
$PY -c "import sys, torch, PIL; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'pillow', PIL.__version__)"
$PY -c "import torchvision; print('torchvision', torchvision.__version__)" || true
$PY -c "from indexer.gpu_decode import probe_decode_jpeg as p; print('nvJPEG:', p('cuda') or 'ok')"
nvidia-smi 2>/dev/null || echo "(no nvidia-smi)"
nproc

if [ -n "${SMOKE:-}" ]; then
    COMMON=(--device cpu --size 1024x768 --batch-size 16 --decode-backend processes)
    SMALL=0
    B32=(--model preset:coca_tiny --count 64 --photos /tmp/coca_bench_smoke_64)
    L14=(--model preset:coca_tiny --count 32 --photos /tmp/coca_bench_smoke_32)
    DECODE_ONLY=64
    GPU_DECODE=auto  # the CPU has no nvJPEG: "auto" takes Pillow, the steps stay the same
else
    # 14 decoders on 16 cores: two stay for the indexing, model and commit threads.
    COMMON=(--device cuda --size 1024x768 --batch-size 512)
    SMALL=0-7
    B32=(--model preset:coca_ViT-B-32 --count 20480 --photos /tmp/coca_bench_lib_20480)
    L14=(--model preset:coca_ViT-L-14 --count 8192 --photos /tmp/coca_bench_lib_8192)
    DECODE_ONLY=8192
    GPU_DECODE=gpu
fi

# run NAME CAP_S CPUS ARGS...: one bench_index.py run under `timeout` on CPUS ("all", or a
# taskset list such as 0-7 to stand for a smaller host), GPU utilisation sampled beside.
run() {
    local name=$1 cap=$2 cpus=$3
    shift 3
    local launch=()
    [ "$cpus" != all ] && launch=(taskset -c "$cpus")
    local left=$((DEADLINE - $(date +%s)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 20 ]; then
        echo "=== $name: skipped, ${left}s left of the budget"
        return
    fi
    echo "=== $name (timeout ${limit}s): $*"
    local sampler=""
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 250 \
            >"$RUNS/$name.smi" 2>/dev/null &
        sampler=$!
    fi
    local start=$(date +%s)
    timeout -k 5 "$limit" "${launch[@]}" ${PROFILE_CMD:-} $PY benchmarks/bench_index.py "$@" \
        --json-out "$RUNS/$name.json"
    echo "=== $name: exit $?, $(($(date +%s) - start))s"
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
}

# The first run writes the B-32 library (~7 s). Each model is decoded on the GPU and on the CPU,
# on all 16 cores (14 decode workers) and on 8 of them (6 workers), which is where "auto" turns
# from Pillow to nvJPEG (indexer.gpu_decode.CPU_DECODE_WORKERS). RUN_LIST picks and orders runs;
# the "_bf16" runs use bf16 weights, "b32_gpu_decode_pyspy" samples the indexer with py-spy (from
# the carried wheels) into OUT/pyspy_b32_gpu.txt and is not a timing; "b32_gpu_decode_share" has
# the decode workers decode CPU_SHARE (default 0.5) of the JPEGs with Pillow beside nvJPEG;
# "_b1024" takes batches of 1,024 photos (the caption step is latency-bound: 8x the rows cost
# 1.3x the time in runs 1-5), "b32_gpu_decode_best" all three (bf16, the share, 1,024).
named_run() {
    case $1 in
    b32_gpu_decode) run "$1" 80 all "${COMMON[@]}" "${B32[@]}" --workers 14 \
        --decode "$GPU_DECODE" --decode-only-count "$DECODE_ONLY" ;;
    b32_gpu_decode_bf16) run "$1" 80 all "${COMMON[@]}" "${B32[@]}" --workers 14 \
        --decode "$GPU_DECODE" --weights bf16 ;;
    b32_gpu_decode_share) run "$1" 80 all "${COMMON[@]}" "${B32[@]}" --workers 14 \
        --decode "$GPU_DECODE" --cpu-share "${CPU_SHARE:-0.5}" ;;
    b32_gpu_decode_b1024) run "$1" 80 all "${COMMON[@]}" "${B32[@]}" --workers 14 \
        --decode "$GPU_DECODE" --batch-size 1024 ;;
    b32_gpu_decode_best) run "$1" 80 all "${COMMON[@]}" "${B32[@]}" --workers 14 \
        --decode "$GPU_DECODE" --weights bf16 --cpu-share "${CPU_SHARE:-0.5}" --batch-size 1024 ;;
    b32_cpu_decode) run "$1" 65 all "${COMMON[@]}" "${B32[@]}" --workers 14 --decode cpu \
        --decode-only-count "$DECODE_ONLY" ;;
    l14_gpu_decode) run "$1" 45 all "${COMMON[@]}" "${L14[@]}" --workers 14 --decode "$GPU_DECODE" ;;
    l14_cpu_decode) run "$1" 45 all "${COMMON[@]}" "${L14[@]}" --workers 14 --decode cpu ;;
    b32_gpu_decode_8cpu) run "$1" 60 "$SMALL" "${COMMON[@]}" "${B32[@]}" --workers 6 \
        --decode "$GPU_DECODE" ;;
    b32_cpu_decode_8cpu) run "$1" 60 "$SMALL" "${COMMON[@]}" "${B32[@]}" --workers 6 --decode cpu ;;
    l14_gpu_decode_8cpu) run "$1" 45 "$SMALL" "${COMMON[@]}" "${L14[@]}" --workers 6 \
        --decode "$GPU_DECODE" ;;
    l14_cpu_decode_8cpu) run "$1" 45 "$SMALL" "${COMMON[@]}" "${L14[@]}" --workers 6 --decode cpu ;;
    b32_gpu_decode_pyspy)
        PROFILE_CMD="/tmp/site/bin/py-spy record --idle --threads --nonblocking -r 50 \
            --format raw -o $OUT/pyspy_b32_gpu.txt --" \
            run "$1" 80 all "${COMMON[@]}" "${B32[@]}" --workers 14 --decode "$GPU_DECODE" ;;
    *) echo "unknown run $1" ;;
    esac
}
for name in ${RUN_LIST:-b32_gpu_decode b32_cpu_decode l14_gpu_decode l14_cpu_decode \
    b32_gpu_decode_8cpu b32_cpu_decode_8cpu l14_gpu_decode_8cpu l14_cpu_decode_8cpu}; do
    named_run "$name"
done

$PY - "$RUNS" "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
names = [f"{model}_{decoder}_decode{variant}" for variant in ("", "_share", "_bf16", "_b1024", "_best", "_8cpu", "_pyspy")
         for model in ("b32", "l14") for decoder in ("gpu", "cpu")]
results = []
for name in names:
    path = runs / f"{name}.json"
    if not path.exists():
        continue
    result = json.loads(path.read_text())
    smi = runs / f"{name}.smi"
    samples = [int(v) for v in smi.read_text().split() if v.isdigit()] if smi.exists() else []
    # nvidia-smi's "utilization": share of time a kernel was running, sampled over the whole
    # process (model build, warm-up and the run), so a lower bound for the run alone.
    result["nvidia_smi_util_mean"] = round(statistics.mean(samples), 1) if samples else None
    result["run"] = name
    results.append(result)
(out / "gpu_index.json").write_text(json.dumps(results, indent=1) + "\n")
lines = [
    f"# Indexing throughput: {results[0]['device'] if results else '?'}",
    "",
    f"CPU: {results[0]['cpu'] if results else '?'}; torch {results[0]['torch'] if results else '?'}",
    "",
    "| run | decoder | photos | images/s | wall s | GPU busy (events) | model thread "
    "| commit thread | decode wait | model wait | setup | smi util % | decode alone /s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in results:
    s = r["split"]
    lines.append(
        f"| {r['run']} ({r['model']}, {r['weights']}) | {r['decoder']} | {r['indexed']} | "
        f"**{r['images_per_second']:,.1f}** | {r['seconds']} | {s['gpu_busy']:.0%} | "
        f"{s['model_thread_busy']:.0%} | {s['commit_thread_busy']:.0%} | "
        f"{s['decode_wait']:.0%} | {s['model_wait']:.0%} | {s['setup']:.0%} | "
        f"{r['nvidia_smi_util_mean']} | {r['decode_only_images_per_second'] or '-'} |"
    )
lines += ["", "Stage seconds per run:", ""]
lines += [f"- {r['run']}: {json.dumps(r['times'])}" for r in results]
lines += ["", "GPU decoder's model inputs against the Pillow path's (first 64 files):", ""]
lines += [f"- {r['run']}: {json.dumps(r['gpu_vs_pillow_pixels'])}" for r in results
          if r.get("gpu_vs_pillow_pixels")]
(out / "gpu_index.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "total $((${BUDGET_S:-400} - DEADLINE + $(date +%s)))s"
