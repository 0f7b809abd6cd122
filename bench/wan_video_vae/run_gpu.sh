#!/usr/bin/env bash
# bench/wan_video_vae GPU (run on a GPU machine): the Wan2.1 VAE decode of 21 latent frames to
# 81 frames of 480 x 832, bf16, tiled as the Wan pipeline tiles (30 x 52, stride 15 x 26 in
# latent units: 3 x 3 tiles), real config with the golden tests' seeded weights: ours
# (vae_bench --backend cuda --tiled, the weights resident through a VRAM manager with no limit)
# against upstream's WanVideoVAE.decode(tiled=True) on the same GPU, one after the other
# (compare_gpu.py). Targets: ours / upstream time <= 0.8; our peak device memory (through the
# backend's alloc slot) <= upstream's torch.cuda.max_memory_allocated.
# Builds nothing (ninja -C BUILD bench/vae_bench with -Dcuda=enabled first).
#
# usage: bench/wan_video_vae/run_gpu.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
# DS_BUILD_DIR (default build), DS_BENCH_FRAMES (latent frames, default 21), DS_BENCH_LOG,
# DS_BENCH_TIMEOUT (seconds per run, default 1200).
# Exit status: 0 measured, 77 no GPU (or a build without CUDA), 1 not built.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-2}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/vae_bench"

[[ -x $bench ]] || { echo "run_gpu.sh: $bench is not built (ninja -C $build bench/vae_bench)" >&2; exit 1; }
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "run_gpu.sh: no GPU here (nvidia-smi finds none): the Wan VAE GPU row not run" >&2
    exit 77
fi
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import diffsynth, torch" 2>/dev/null || python=none
fi
anchor=(--python "$python")
if [[ $python == none ]] || ! "$python" -c "import diffsynth, torch" 2>/dev/null; then
    echo "run_gpu.sh: no Python with diffsynth and torch: our numbers alone" >&2
    anchor=()
fi

exec python3 bench/wan_video_vae/compare_gpu.py --bench "$bench" "${anchor[@]}" \
    --repeats "$repeats" --frames "${DS_BENCH_FRAMES:-21}" \
    --timeout "${DS_BENCH_TIMEOUT:-1200}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
