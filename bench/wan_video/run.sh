#!/usr/bin/env bash
# bench/wan_video CPU: the whole Wan2.1 text-to-video pipeline, end to end (prompt and negative
# prompt encoding, 4 denoising steps with CFG 5, the VAE decode with upstream's default tiling,
# RGB8 frames), 9 frames of 128x128, f32, on reduced models (UMT5 text encoder cut to 1 block
# with the test SentencePiece model's 700-row vocabulary, the Wan2.1-T2V-1.3B DiT cut to 1 block,
# both at full width; the real VAE): our wan_video pipeline against upstream DiffSynth-Studio's
# own WanVideoPipeline.__call__, same thread count, in the same run (DESIGN §7: the ratio is the
# result). Target: ours/upstream <= 1.0. Model building and tokenizer loading are outside the
# timing (one warm-up call per side). Each side also reports its encode / denoise / decode split.
#
# usage: bench/wan_video/run.sh [PYTHON_WITH_DIFFSYNTH] [THREADS] [REPEATS]
#   PYTHON_WITH_DIFFSYNTH  default /work/venv/bin/python (a private venv; never installed here)
#   THREADS                default: online CPUs
#   REPEATS                timed calls per side after one warm-up; the median counts (default 1)
# DS_BUILD_DIR: the build holding bench/wan_pipeline_bench (default build-release, built by
# bench/build_release.sh). DS_BENCH_TE_LAYERS (default 1), DS_BENCH_DIT_LAYERS (default 1),
# DS_BENCH_ROUNDS (alternating rounds, default 1), DS_BENCH_LOG: a file to append every JSON
# result to. Each side holds 1.6 GB of f32 weights, one side at a time; on 2 cores one call
# takes a few minutes per side.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-/work/venv/bin/python}
threads=${2:-$(nproc)}
repeats=${3:-1}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/wan_pipeline_bench
bench="$build/bench/wan_pipeline_bench"

"$python" -c "import diffsynth, torch" 2>/dev/null ||
    { echo "run.sh: $python cannot import diffsynth and torch" >&2; exit 1; }

exec python3 bench/wan_video/compare.py --suite cpu --bench "$bench" --python "$python" \
    --threads "$threads" --repeats "$repeats" --rounds "${DS_BENCH_ROUNDS:-1}" \
    --te-layers "${DS_BENCH_TE_LAYERS:-1}" --dit-layers "${DS_BENCH_DIT_LAYERS:-1}" \
    ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
