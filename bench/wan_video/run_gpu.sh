#!/usr/bin/env bash
# bench/wan_video GPU (run on a GPU machine): the whole Wan2.1 text-to-video pipeline at
# Wan2.1-T2V-1.3B's shapes (UMT5 text encoder 24 blocks with the full vocabulary, DiT 30 blocks,
# the real VAE), random bf16 weights, 81 frames of 480x832, 50 steps, cfg 5, upstream's default
# VAE tiling: our wan_video pipeline on the CUDA backend against upstream's
# WanVideoPipeline.__call__ on the same GPU, in the same run. Two rows: every model on the GPU
# (upstream's "basic" configuration; ours through a VRAM manager without a limit, the weights
# copied in by the warm-up call and resident after), then both under a vram_limit of 8 GiB (ours
# one budget for the pool, as `diffsynthd --vram-limit 8`; upstream's model pool wrapping with
# vram_limit=8 and the pipeline's load_models_to_device). Target: ours/upstream time <= 0.8 at
# no more peak memory. Peak memory: ours = the most bytes live at once through the CUDA
# backend's alloc slot and the manager's own peak; upstream = torch.cuda.max_memory_allocated
# (and _reserved); for both, the device's used memory sampled with nvidia-smi while each runs.
# Memory: about 15 GB of host memory for the weights on each side; on the GPU about 15 GB of
# weights plus activations per side without a limit.
# Where no GPU exists every row says so and the script exits 77.
#
# usage: bench/wan_video/run_gpu.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
#   REPEATS: timed calls per side after one warm-up (default 1; one call is 100 DiT forwards).
# DS_BUILD_DIR (default build: a build with the CUDA backend, `meson setup build -Dcuda=enabled`;
# the script builds bench/wan_pipeline_bench there), DS_BENCH_TE_LAYERS (default 24),
# DS_BENCH_DIT_LAYERS (default 30), DS_BENCH_VRAM_LIMIT (GiB, default 8), DS_BENCH_LOG,
# DS_BENCH_TIMEOUT (seconds per measurement, default 1800).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-1}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/wan_pipeline_bench"

[[ -f $build/build.ninja ]] ||
    { echo "run_gpu.sh: no build in $build (meson setup $build -Dcuda=enabled)" >&2; exit 1; }
ninja -C "$build" bench/wan_pipeline_bench >&2
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import diffsynth, torch" 2>/dev/null || python=none
fi
anchor=(--python "$python")
if [[ $python == none ]] || ! "$python" -c "import diffsynth, torch" 2>/dev/null; then
    echo "run_gpu.sh: no Python with diffsynth and torch: our numbers alone" >&2
    anchor=()
fi

exec python3 bench/wan_video/compare.py --suite gpu --bench "$bench" "${anchor[@]}" \
    --repeats "$repeats" --rounds 1 --te-layers "${DS_BENCH_TE_LAYERS:-24}" \
    --dit-layers "${DS_BENCH_DIT_LAYERS:-30}" --vram-limit "${DS_BENCH_VRAM_LIMIT:-8}" \
    --timeout "${DS_BENCH_TIMEOUT:-1800}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
