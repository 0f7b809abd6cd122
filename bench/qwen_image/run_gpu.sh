#!/usr/bin/env bash
# bench/qwen_image GPU (run on a GPU machine): the whole Qwen-Image text-to-image pipeline on the
# full models (text encoder 28 layers, DiT 60 blocks, the real VAE), random bf16 weights,
# 1024x1024, 40 steps, cfg 4: our ds_qwen_image_pipeline on the CUDA backend against upstream's
# QwenImagePipeline.__call__ in its "basic" configuration (every model bf16 on the GPU, no VRAM
# management), same GPU, in the same run. Target: ours/upstream time <= 0.8.
# Our weights go through a VRAM manager without a limit: copied to the GPU in the warm-up call,
# resident after, as upstream's are. Peak memory: ours = the most bytes live at once through the
# CUDA backend's alloc slot (weights, activations; not op scratch or the cuBLASLt workspace) and
# the manager's own peak; upstream = torch.cuda.max_memory_allocated (and _reserved); for both,
# the device's used memory sampled with nvidia-smi while each side runs.
# Memory: about 56 GB of host memory for our weights, about 56 GB of GPU memory on each side.
# Where no GPU exists every row says so and the script exits 77.
#
# usage: bench/qwen_image/run_gpu.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
#   REPEATS: timed calls per side after one warm-up (default 1; one call is 80 DiT forwards).
# DS_BUILD_DIR (default build), DS_BENCH_TE_LAYERS (default 28), DS_BENCH_DIT_LAYERS (default
# 60), DS_BENCH_LOG, DS_BENCH_TIMEOUT (seconds per measurement, default 1800).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-1}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/pipeline_bench"

[[ -x $bench ]] || { echo "run_gpu.sh: $bench is not built (ninja -C $build bench/pipeline_bench)" >&2; exit 1; }
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import diffsynth, torch" 2>/dev/null || python=none
fi
anchor=(--python "$python")
if [[ $python == none ]] || ! "$python" -c "import diffsynth, torch" 2>/dev/null; then
    echo "run_gpu.sh: no Python with diffsynth and torch: our numbers alone" >&2
    anchor=()
fi

exec python3 bench/qwen_image/compare.py --suite gpu --bench "$bench" "${anchor[@]}" \
    --repeats "$repeats" --rounds 1 --te-layers "${DS_BENCH_TE_LAYERS:-28}" \
    --dit-layers "${DS_BENCH_DIT_LAYERS:-60}" --timeout "${DS_BENCH_TIMEOUT:-1800}" \
    ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
