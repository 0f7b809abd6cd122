#!/usr/bin/env bash
# bench/wan_video_dit GPU (run on a GPU machine): one step of the full Wan2.1-T2V-1.3B DiT (30
# blocks), random bf16 weights, 480 x 832 x 81 frames (latents 21 x 60 x 104: 32,760 tokens)
# and 512 text tokens: our ds_wan_video_dit_forward on the CUDA backend against upstream's
# WanModel + model_fn_wan_video on the same GPU, in the same run. Target: ours/upstream step
# latency <= 0.8. Our forward uploads every block's weights from host memory inside the step
# (models/weight_set.h), so that copy is in our time; upstream's weights stay resident.
#
# usage: bench/wan_video_dit/run_gpu.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
# DS_BUILD_DIR (default build), DS_BENCH_LAYERS (default 30), DS_BENCH_LOG, DS_BENCH_TIMEOUT
# (seconds per measurement, default 900).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-3}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/wan_dit_bench"

[[ -x $bench ]] || { echo "run_gpu.sh: $bench is not built (ninja -C $build bench/wan_dit_bench)" >&2; exit 1; }
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import diffsynth, torch" 2>/dev/null || python=none
fi
anchor=(--python "$python")
if [[ $python == none ]] || ! "$python" -c "import diffsynth, torch" 2>/dev/null; then
    echo "run_gpu.sh: no Python with diffsynth and torch: our numbers alone" >&2
    anchor=()
fi

exec python3 bench/wan_video_dit/compare.py --suite gpu --bench "$bench" "${anchor[@]}" \
    --repeats "$repeats" --layers "${DS_BENCH_LAYERS:-30}" \
    --timeout "${DS_BENCH_TIMEOUT:-900}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
