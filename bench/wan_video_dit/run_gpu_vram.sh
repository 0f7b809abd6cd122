#!/usr/bin/env bash
# bench/wan_video_dit GPU, VRAM limit (run on a GPU machine): one step of the Wan2.1-T2V-14B DiT
# (40 blocks, dim 5120, ffn 13824, 40 heads; random bf16 weights), 480 x 832 x 81 frames (latents
# 21 x 60 x 104: 32,760 tokens) and 512 text tokens, under vram_limit 24 GiB with fp8 storage
# (vram_config offload / onload / preparing float8_e4m3fn, computation bf16: upstream's low-VRAM
# config): ours (wan_dit_bench --vram-gib 24 --vram-config ...) against upstream
# DiffSynth-Studio's dynamic VRAM mode at the same limit (upstream_anchor.py --vram-limit 24
# --storage fp8) on the same GPU, one after the other (compare_vram.py). Target: upstream's
# step / ours >= 2. The 14B's fp8 weights (about 14 GB) fit under 24 GiB: after the warm-up
# both sides hold them on the GPU and the step measures fp8-weight compute, not streaming
# (DS_BENCH_VRAM_GIB below that, or DS_BENCH_BF16=1, makes units stream).
# Host memory: 28 GB of bf16 weights plus the manager's pinned fp8 copies (14 GB) on our side,
# 14 GB of fp8 weights on upstream's, one run at a time.
# Builds nothing (ninja -C BUILD bench/wan_dit_bench with -Dcuda=enabled first).
#
# usage: bench/wan_video_dit/run_gpu_vram.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
# DS_BUILD_DIR (default build), DS_BENCH_LAYERS (default 40), DS_BENCH_FRAMES (latent frames,
# default 21), DS_BENCH_VRAM_GIB (default 24; scale it with the layers), DS_BENCH_RESIDENT=1
# (also ours with no limit), DS_BENCH_BF16=1 (also ours with bf16 storage), DS_BENCH_LOG,
# DS_BENCH_TIMEOUT (seconds per run, default 1200).
# Exit status: 0 measured, 77 no GPU (or a build without CUDA), 1 not built.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-2}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/wan_dit_bench"

[[ -x $bench ]] || { echo "run_gpu_vram.sh: $bench is not built (ninja -C $build bench/wan_dit_bench)" >&2; exit 1; }
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "run_gpu_vram.sh: no GPU here (nvidia-smi finds none): the Wan 14B VRAM row not run" >&2
    exit 77
fi
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import diffsynth, torch" 2>/dev/null || python=none
fi
anchor=(--python "$python")
if [[ $python == none ]] || ! "$python" -c "import diffsynth, torch" 2>/dev/null; then
    echo "run_gpu_vram.sh: no Python with diffsynth and torch: our numbers alone" >&2
    anchor=()
fi
extra=()
[[ ${DS_BENCH_RESIDENT:-0} == 1 ]] && extra+=(--resident)
[[ ${DS_BENCH_BF16:-0} == 1 ]] && extra+=(--bf16)

exec python3 bench/wan_video_dit/compare_vram.py --bench "$bench" "${anchor[@]}" "${extra[@]}" \
    --repeats "$repeats" --layers "${DS_BENCH_LAYERS:-40}" --frames "${DS_BENCH_FRAMES:-21}" \
    --budget-gib "${DS_BENCH_VRAM_GIB:-24}" --timeout "${DS_BENCH_TIMEOUT:-1200}" \
    ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
