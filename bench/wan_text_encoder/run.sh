#!/usr/bin/env bash
# bench/wan_text_encoder CPU: Wan prompt encoding (clean, SentencePiece tokenize to 512 ids with
# the mask, UMT5 encoder, zero past the prompt) on the encoder reduced to 2 blocks at full width
# (dim 4096, 64 heads, FFN 10240), f32: our ds_wan_encode_prompt on the CPU backend against
# upstream DiffSynth-Studio's own WanVideoUnit_PromptEmbedder + WanTextEncoder +
# HuggingfaceTokenizer, same thread count, in the same run (DESIGN §7: the ratio is the result).
# Both sides tokenize with tests/data/wan_tokenizer/spiece.model (no UMT5 spiece.model ships
# here; the encoder runs 512 positions whatever the prompt). Target: ours/upstream <= 1.0.
#
# usage: bench/wan_text_encoder/run.sh [PYTHON_WITH_DIFFSYNTH] [THREADS] [REPEATS]
#   PYTHON_WITH_DIFFSYNTH  default /work/venv/bin/python (a private venv; never installed here)
#   THREADS                default: online CPUs
#   REPEATS                timed calls per side after one warm-up; the median counts (default 5)
# DS_BUILD_DIR: the build holding bench/wte_bench (default build-release, built by
# bench/build_release.sh). DS_BENCH_LAYERS (default 2). DS_BENCH_VOCAB: embedding rows (default
# 256384, UMT5-XXL's: 4.2 GB of f32 per side, one side at a time; fewer time the same).
# DS_TOKENIZER_PYTHON: a Python with transformers, sentencepiece and protobuf that converts the
# SentencePiece model for upstream's AutoTokenizer (default /work/venv-tok/bin/python).
# DS_BENCH_ROUNDS: alternating rounds, the best of each side counts (default 2).
# DS_BENCH_LOG: a file to append every JSON result to.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-/work/venv/bin/python}
threads=${2:-$(nproc)}
repeats=${3:-5}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/wte_bench
bench="$build/bench/wte_bench"

"$python" -c "import diffsynth, torch" 2>/dev/null ||
    { echo "run.sh: $python cannot import diffsynth and torch" >&2; exit 1; }
hf=$(mktemp -d)
trap 'rm -rf "$hf"' EXIT
"${DS_TOKENIZER_PYTHON:-/work/venv-tok/bin/python}" bench/wan_text_encoder/make_hf_tokenizer.py \
    tests/data/wan_tokenizer/spiece.model "$hf"

python3 bench/wan_text_encoder/compare.py --suite cpu --bench "$bench" --python "$python" \
    --threads "$threads" --repeats "$repeats" --layers "${DS_BENCH_LAYERS:-2}" \
    --vocab "${DS_BENCH_VOCAB:-256384}" --rounds "${DS_BENCH_ROUNDS:-2}" --hf-tokenizer "$hf" \
    ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
