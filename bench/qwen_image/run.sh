#!/usr/bin/env bash
# bench/qwen_image CPU: the whole Qwen-Image text-to-image pipeline, end to end (prompt and
# negative prompt encoding, 4 denoising steps with CFG 4, VAE decode, RGB8 conversion), 256x256,
# on reduced models (text encoder cut to 1 decoder layer, DiT to 1 block, both at full width;
# the real VAE), in f32, in bf16 and from bf16 weights at f32: our ds_qwen_image_pipeline against upstream DiffSynth-Studio's
# own QwenImagePipeline.__call__, same thread count, in the same run (DESIGN §7: the ratio is the
# result). Target: ours/upstream <= 1.0. Model building and tokenizer loading are outside the
# timing (one warm-up call per side). Each side also reports its encode / denoise / decode split.
#
# usage: bench/qwen_image/run.sh [PYTHON_WITH_DIFFSYNTH] [THREADS] [REPEATS]
#   PYTHON_WITH_DIFFSYNTH  default /work/venv/bin/python (a private venv; never installed here)
#   THREADS                default: online CPUs
#   REPEATS                timed calls per side after one warm-up; the median counts (default 1)
# DS_BUILD_DIR: the build holding bench/pipeline_bench (default build-release, built by bench/build_release.sh). DS_BENCH_TE_LAYERS
# (default 1), DS_BENCH_DIT_LAYERS (default 1), DS_BENCH_ROUNDS (alternating rounds, default 1),
# DS_BENCH_LOG: a file to append every JSON result to. DS_BENCH_DTYPES: the rows, default
# "f32,bf16,f32-from-bf16" ("f32" skips upstream's slow bf16 call; "f32-from-bf16" is bf16
# weights computed in f32, cast once at load upstream, kept converted once by ours as diffsynthd's
# CPU default keeps them; "f32-from-bf16-widened" the same with ours widening at every call). Each side holds its weights in memory
# (5.1 GB f32 with the defaults, mostly the 152064-row embedding and the DiT blocks), one side
# at a time. On 2 quiet cores one call takes 4-10 s per side (upstream's bf16 call is the
# slowest); under load calls took 10x that, and upstream's bf16 call over 15 minutes, which is
# why the defaults are one round of one call.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-/work/venv/bin/python}
threads=${2:-$(nproc)}
repeats=${3:-1}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/pipeline_bench
bench="$build/bench/pipeline_bench"

"$python" -c "import diffsynth, torch" 2>/dev/null ||
    { echo "run.sh: $python cannot import diffsynth and torch" >&2; exit 1; }

exec python3 bench/qwen_image/compare.py --suite cpu --bench "$bench" --python "$python" \
    --threads "$threads" --repeats "$repeats" --rounds "${DS_BENCH_ROUNDS:-1}" \
    --te-layers "${DS_BENCH_TE_LAYERS:-1}" --dit-layers "${DS_BENCH_DIT_LAYERS:-1}" \
    --dtypes "${DS_BENCH_DTYPES:-f32,bf16,f32-from-bf16}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
