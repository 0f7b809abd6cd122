#!/usr/bin/env bash
# bench/wan_text_encoder GPU (run on a GPU machine): Wan prompt encoding on the full UMT5-XXL
# encoder (24 blocks, vocab 256384), random bf16 weights: our ds_wan_encode_prompt on the CUDA
# backend against upstream's WanVideoUnit_PromptEmbedder + WanTextEncoder on the same GPU, in the
# same run. Target: ours/upstream latency <= 0.8.
# Our forward uploads every block's weights from host memory inside the call (models/
# weight_set.h), so that copy is in our time; upstream's weights stay resident on the GPU.
# Memory: 11.4 GB of host memory for our weights, 11.4 GB of GPU memory for upstream's.
#
# usage: bench/wan_text_encoder/run_gpu.sh [PYTHON_WITH_DIFFSYNTH|none] [REPEATS]
#   default python3 when it imports diffsynth and torch, else none: our numbers alone.
# DS_BUILD_DIR (default build), DS_BENCH_LAYERS (default 24), DS_BENCH_LOG, DS_BENCH_TIMEOUT
# (seconds per measurement, default 900). DS_TOKENIZER_PYTHON: a Python with transformers,
# sentencepiece and protobuf to convert tests/data/wan_tokenizer/spiece.model for upstream's
# AutoTokenizer (default: the anchor's Python); without one, our numbers alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-}
repeats=${2:-5}
build=${DS_BUILD_DIR:-build}
bench="$build/bench/wte_bench"

[[ -x $bench ]] || { echo "run_gpu.sh: $bench is not built (ninja -C $build bench/wte_bench)" >&2; exit 1; }
if [[ -z $python ]]; then
    python=python3
    "$python" -c "import diffsynth, torch" 2>/dev/null || python=none
fi
hf=$(mktemp -d)
trap 'rm -rf "$hf"' EXIT
anchor=(--python "$python")
if [[ $python == none ]] || ! "$python" -c "import diffsynth, torch" 2>/dev/null; then
    echo "run_gpu.sh: no Python with diffsynth and torch: our numbers alone" >&2
    anchor=()
elif ! "${DS_TOKENIZER_PYTHON:-$python}" bench/wan_text_encoder/make_hf_tokenizer.py \
        tests/data/wan_tokenizer/spiece.model "$hf"; then
    echo "run_gpu.sh: could not convert spiece.model for upstream (set DS_TOKENIZER_PYTHON to" \
         "a Python with transformers, sentencepiece and protobuf): our numbers alone" >&2
    anchor=()
fi

python3 bench/wan_text_encoder/compare.py --suite gpu --bench "$bench" "${anchor[@]}" \
    --repeats "$repeats" --rounds 1 --layers "${DS_BENCH_LAYERS:-24}" --hf-tokenizer "$hf" \
    --timeout "${DS_BENCH_TIMEOUT:-900}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
