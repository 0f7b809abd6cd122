#!/usr/bin/env bash
# bench/kernels GPU (run on a GPU machine, normally by tests/device/run.sh): our CUDA backend
# against anchors measured in the same run (DESIGN §7):
#   bf16 GEMM 8192^3 through ds_linear (cuBLASLt) vs torch.matmul, TFLOP/s, target >= 0.95;
#   attention bf16 at 4096 and 8192 tokens, 24 heads x 128, vs F.scaled_dot_product_attention,
#     TFLOP/s counting 4 B H S^2 D, target >= 0.70;
#   rms_norm / modulate / gated_residual on [1, 8192, 3072] bf16, effective GB/s (bytes read +
#     written once) vs our device-to-device copy of 1 GiB (cudaMemcpyAsync through the backend's
#     copy_device), target >= 0.70.
# The op API has no timed events, so both sides time N back-to-back calls with a monotonic clock
# and one synchronize (kernels_bench.c); N is large enough that the synchronize is noise.
#
# usage: bench/kernels/run_gpu.sh [PYTHON_WITH_TORCH|none] [REPEATS]
#   default python3 when it imports torch, else none: our numbers alone, anchors marked missing
#   (the copy anchor of the fused rows is ours, so those ratios remain).
# DS_BUILD_DIR: the build holding bench/kernels_bench (default build). DS_BENCH_LOG: a file to
# append every JSON result to. DS_BENCH_TIMEOUT: seconds per measurement (default 120).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-5}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/kernels_bench"

[[ -x $bench ]] || { echo "run_gpu.sh: $bench is not built (ninja -C $build bench/kernels_bench)" >&2; exit 1; }
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import torch" 2>/dev/null || python=none
fi
anchor=(--python "$python")
if [[ $python == none ]]; then
    echo "run_gpu.sh: no Python with torch: our numbers alone, torch anchors missing" >&2
    anchor=()
elif ! "$python" -c "import torch" 2>/dev/null; then
    echo "run_gpu.sh: $python cannot import torch: our numbers alone" >&2
    anchor=()
fi

exec python3 bench/kernels/compare.py --suite gpu --bench "$bench" "${anchor[@]}" \
    --repeats "$repeats" --timeout "${DS_BENCH_TIMEOUT:-120}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
