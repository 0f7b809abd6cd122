#!/usr/bin/env bash
# bench/qwen_image_dit GPU (run on a GPU machine): one step of the full Qwen-Image DiT (60
# blocks), random bf16 weights, 1024x1024 (4096 image tokens) and 32 text tokens: our
# ds_qwen_image_dit_forward on the CUDA backend against upstream's QwenImageDiT +
# model_fn_qwen_image on the same GPU, in the same run. Target: ours/upstream step latency <= 0.8;
# also each side's TFLOP/s against the GEMM ceiling, our bf16 8192^3 linear (cuBLASLt,
# bench/kernels_bench) measured in the same run.
# Our forward uploads every block's weights from host memory inside the step (models/
# weight_set.h), so that copy is in our time; upstream's weights stay resident on the GPU.
# Memory: 40 GB of host memory for our weights, 40 GB of GPU memory for upstream's.
#
# usage: bench/qwen_image_dit/run_gpu.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
# DS_BUILD_DIR (default build), DS_BENCH_LAYERS (default 60), DS_BENCH_LOG, DS_BENCH_TIMEOUT
# (seconds per measurement, default 900).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-3}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/dit_bench"

[[ -x $bench ]] || { echo "run_gpu.sh: $bench is not built (ninja -C $build bench/dit_bench)" >&2; exit 1; }
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import diffsynth, torch" 2>/dev/null || python=none
fi
anchor=(--python "$python")
if [[ $python == none ]] || ! "$python" -c "import diffsynth, torch" 2>/dev/null; then
    echo "run_gpu.sh: no Python with diffsynth and torch: our numbers alone" >&2
    anchor=()
fi
kb=()
[[ -x $build/bench/kernels_bench ]] && kb=(--kernels-bench "$build/bench/kernels_bench")

exec python3 bench/qwen_image_dit/compare.py --suite gpu --bench "$bench" "${anchor[@]}" \
    "${kb[@]}" --repeats "$repeats" --layers "${DS_BENCH_LAYERS:-60}" \
    --timeout "${DS_BENCH_TIMEOUT:-900}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
