#!/usr/bin/env bash
# bench/kernels CPU: our CPU backend against PyTorch on the same machine, same dtypes, same thread
# count, in the same run (DESIGN §7: the ratio is the result; absolute times on shared CPUs are
# noise). Rows: linear 3072x3072 on 4096 tokens (f32; bf16 weights with f32 activations; bf16),
# attention B=1, 24 heads x 128, 4096 tokens (f32, bf16), non-causal, and rms_norm, modulate and
# gated_residual in bf16 on [1, 4096, 3072]. Target: ours/torch <= 1.0.
#
# usage: bench/kernels/run_cpu.sh [PYTHON_WITH_TORCH] [THREADS] [REPEATS]
#   PYTHON_WITH_TORCH  default /work/venv/bin/python (a private venv; never installed here)
#   THREADS            default: online CPUs; ds_cpu_backend_create(N) and torch.set_num_threads(N)
#   REPEATS            timed runs per side after one warm-up; the median counts (default 5)
# DS_BUILD_DIR: the build holding bench/kernels_bench (default build-release, built by bench/build_release.sh). DS_BENCH_LOG: a file to
# append every JSON result to.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-/work/venv/bin/python}
threads=${2:-$(nproc)}
repeats=${3:-5}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/kernels_bench
bench="$build/bench/kernels_bench"

"$python" -c "import torch" 2>/dev/null || { echo "run_cpu.sh: $python cannot import torch" >&2; exit 1; }

exec python3 bench/kernels/compare.py --suite cpu --bench "$bench" --python "$python" \
    --threads "$threads" --repeats "$repeats" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
