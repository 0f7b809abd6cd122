#!/usr/bin/env bash
# bench/text_encoder GPU (run on a GPU machine): Qwen-Image prompt encoding of a 60-token prompt
# on the full 7B text encoder (28 layers), random bf16 weights: our encode_prompt step on the
# CUDA backend against upstream's QwenImageUnit_PromptEmbedder + QwenImageTextEncoder on the same
# GPU, in the same run. Target: ours/upstream latency <= 0.8.
# Our forward uploads every layer's weights from host memory inside the step (models/
# weight_set.h), so that copy is in our time; upstream's weights stay resident on the GPU.
# Memory: 15 GB of host memory for our weights, 15 GB of GPU memory for upstream's.
#
# usage: bench/text_encoder/run_gpu.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
# DS_BUILD_DIR (default build), DS_BENCH_LAYERS (default 28), DS_BENCH_LOG, DS_BENCH_TIMEOUT
# (seconds per measurement, default 900).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-5}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/te_bench"

[[ -x $bench ]] || { echo "run_gpu.sh: $bench is not built (ninja -C $build bench/te_bench)" >&2; exit 1; }
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import diffsynth, torch" 2>/dev/null || python=none
fi
anchor=(--python "$python")
if [[ $python == none ]] || ! "$python" -c "import diffsynth, torch" 2>/dev/null; then
    echo "run_gpu.sh: no Python with diffsynth and torch: our numbers alone" >&2
    anchor=()
fi

exec python3 bench/text_encoder/compare.py --suite gpu --bench "$bench" "${anchor[@]}" \
    --repeats "$repeats" --rounds 1 --layers "${DS_BENCH_LAYERS:-28}" \
    --timeout "${DS_BENCH_TIMEOUT:-900}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
