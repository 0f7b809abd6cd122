#!/usr/bin/env bash
# bench/text_encoder CPU: Qwen-Image prompt encoding of a 60-token prompt (template, tokenizer,
# text encoder forward, 34-token drop) on the text encoder reduced to 2 decoder layers at full
# width, f32 and bf16: our prompt encoding on the CPU backend against upstream DiffSynth-Studio's own
# QwenImageUnit_PromptEmbedder + QwenImageTextEncoder, same thread count, in the same run
# (DESIGN §7: the ratio is the result). Target: ours/upstream <= 1.0.
#
# usage: bench/text_encoder/run.sh [PYTHON_WITH_DIFFSYNTH] [THREADS] [REPEATS]
#   PYTHON_WITH_DIFFSYNTH  default /work/venv/bin/python (a private venv; never installed here)
#   THREADS                default: online CPUs
#   REPEATS                timed calls per side after one warm-up; the median counts (default 5)
# DS_BUILD_DIR: the build holding bench/te_bench (default build-release, built by bench/build_release.sh). DS_BENCH_LAYERS (default 2).
# DS_BENCH_LOG: a file to append every JSON result to. Each side holds its weights in memory
# (2 layers: 4 GB f32, mostly the 152064-row embedding), one side at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-/work/venv/bin/python}
threads=${2:-$(nproc)}
repeats=${3:-5}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/te_bench
bench="$build/bench/te_bench"

"$python" -c "import diffsynth, torch" 2>/dev/null ||
    { echo "run.sh: $python cannot import diffsynth and torch" >&2; exit 1; }

exec python3 bench/text_encoder/compare.py --suite cpu --bench "$bench" --python "$python" \
    --threads "$threads" --repeats "$repeats" --layers "${DS_BENCH_LAYERS:-2}" \
    ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
