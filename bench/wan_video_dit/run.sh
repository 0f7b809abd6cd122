#!/usr/bin/env bash
# bench/wan_video_dit CPU: one forward of the Wan2.1-T2V-1.3B DiT reduced to 2 blocks at its
# width, latents 5 x 32 x 32 (1280 tokens) and 512 text tokens, f32 and bf16: our
# ds_wan_video_dit_forward on the CPU backend against upstream DiffSynth-Studio's own WanModel +
# model_fn_wan_video, same dtype, same thread count, in the same run (DESIGN §7: the ratio is
# the result). Target: ours/upstream <= 1.0.
#
# usage: bench/wan_video_dit/run.sh [PYTHON_WITH_DIFFSYNTH] [THREADS] [REPEATS]
#   PYTHON_WITH_DIFFSYNTH  default /work/venv/bin/python (a private venv; never installed here)
#   THREADS                default: online CPUs; ds_cpu_backend_create(N), torch.set_num_threads(N)
#   REPEATS                timed forwards per side after one warm-up; the median counts (default 3)
# DS_BUILD_DIR: the build holding bench/wan_dit_bench (default build-release, built by
# bench/build_release.sh). DS_BENCH_LAYERS: blocks (default 2). DS_BENCH_LOG: a file to append
# every JSON result to. Each side holds its weights in memory (2 blocks: 0.7 GB f32).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-/work/venv/bin/python}
threads=${2:-$(nproc)}
repeats=${3:-3}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/wan_dit_bench

"$python" -c "import diffsynth, torch" 2>/dev/null ||
    { echo "run.sh: $python cannot import diffsynth and torch" >&2; exit 1; }

exec python3 bench/wan_video_dit/compare.py --suite cpu --bench "$build/bench/wan_dit_bench" \
    --python "$python" --threads "$threads" --repeats "$repeats" \
    --layers "${DS_BENCH_LAYERS:-2}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
