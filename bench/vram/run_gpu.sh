#!/usr/bin/env bash
# bench/vram GPU (run on a GPU machine): the full Qwen-Image DiT (60 blocks, 20B parameters,
# random bf16 weights), 1024x1024 (4096 image tokens) + 32 text tokens, one step through the
# VRAM manager under vram_limit 8 GiB, with fp8 slow-tier storage (vram_config offload / onload /
# preparing float8_e4m3fn, computation bf16) and with the weights' bf16, against the same step
# all-resident (a manager with no limit) in the same process; and upstream DiffSynth-Studio's
# dynamic VRAM mode at the same vram_limit and fp8 storage on the same GPU (upstream_anchor.py).
# Targets: the manager's streaming rate >= 0.8 of the pinned-copy bandwidth measured in the same
# run; >= 0.9 of the copy time hidden behind compute (where a unit's compute outlasts its copy);
# upstream's step / ours >= 2 at 8 GiB.
# Builds nothing (ninja -C BUILD bench/vram_bench with -Dcuda=enabled first).
# Host memory: 40 GB of bf16 weights, plus the 8 GiB manager's copies at rest, pinned images of
# the units' device bytes (about 20 GB with fp8 storage, 40 GB with bf16: 80 GB at the peak; the
# all-resident manager keeps none), and upstream's 20 GB of fp8 weights in its own run; the
# runs go one after the other (the H200 machine has 128 GiB). GPU memory: up to 40 GB for the
# all-resident manager beside the 8 GiB one.
#
# usage: bench/vram/run_gpu.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
# DS_BUILD_DIR (default build), DS_BENCH_LAYERS (default 60), DS_BENCH_VRAM_GIB (default 8;
# scale it with the layers), DS_BENCH_LOG, DS_BENCH_TIMEOUT (seconds per run, default 1800).
# Exit status: 0 measured, 77 no GPU (or a build without CUDA), 1 not built.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-3}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/vram_bench"

[[ -x $bench ]] || { echo "run_gpu.sh: $bench is not built (ninja -C $build bench/vram_bench)" >&2; exit 1; }
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "run_gpu.sh: no GPU here (nvidia-smi finds none): bench/vram GPU not run" >&2
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

exec python3 bench/vram/compare.py --bench "$bench" "${anchor[@]}" --repeats "$repeats" \
    --layers "${DS_BENCH_LAYERS:-60}" --budget-gib "${DS_BENCH_VRAM_GIB:-8}" \
    --timeout "${DS_BENCH_TIMEOUT:-1800}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
