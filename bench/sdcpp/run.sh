#!/usr/bin/env bash
# bench/sdcpp CPU: the Qwen-Image pipeline rows of bench/qwen_image (256x256, 4 steps, cfg 4,
# text encoder and DiT cut to DS_BENCH_TE_LAYERS / DS_BENCH_DIT_LAYERS, default 2 / 2, the real
# VAE) on three systems in the same run: ours (release build), stable-diffusion.cpp (sd-cli built
# by bench/sdcpp/build.sh) and, given a Python with diffsynth, upstream DiffSynth-Studio.
# Each phase (encode / denoise / decode) is printed for each side; see run.py.
#
# usage: bench/sdcpp/run.sh SD_CLI [PYTHON_WITH_DIFFSYNTH|none] [THREADS] [REPEATS]
#   SD_CLI   BUILD_DIR/bin/sd-cli from bench/sdcpp/build.sh
#   PYTHON   default none (ours and sd.cpp only); given, upstream runs the rows in
#            DS_BENCH_UPSTREAM_DTYPES (default f32: under load its bf16 call took over 15 minutes)
#   THREADS  default: online CPUs; REPEATS: calls per side per round, the median counts (default 1)
# DS_BUILD_DIR (default build-release), DS_BENCH_DTYPES (default bf16; "bf16,f32" adds the f32
# rows), DS_BENCH_ROUNDS (default 2), DS_BENCH_MODELS (where sd.cpp's model files are written,
# default /tmp/sdcpp-models: 3.7 GB in bf16 at 2 / 2 layers, 7.3 GB in f32), DS_BENCH_SD_ARGS
# (more sd-cli flags, e.g. --diffusion-fa), DS_BENCH_LOG (a file for every JSON result and
# sd-cli's log tail on failure).
set -euo pipefail
cd "$(dirname "$0")/../.."
sd_cli=${1:?usage: bench/sdcpp/run.sh SD_CLI [PYTHON|none] [THREADS] [REPEATS]}
python=${2:-none}
threads=${3:-$(nproc)}
repeats=${4:-1}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/pipeline_bench
[[ -x $sd_cli ]] || { echo "run.sh: $sd_cli is not an executable (bench/sdcpp/build.sh builds it)" >&2; exit 1; }
upstream=()
[[ $python == none ]] || upstream=(--python "$python")
exec python3 bench/sdcpp/run.py --sd-cli "$sd_cli" --bench "$build/bench/pipeline_bench" \
    "${upstream[@]}" --upstream-dtypes "${DS_BENCH_UPSTREAM_DTYPES:-f32}" --threads "$threads" \
    --repeats "$repeats" --rounds "${DS_BENCH_ROUNDS:-2}" \
    --te-layers "${DS_BENCH_TE_LAYERS:-2}" --dit-layers "${DS_BENCH_DIT_LAYERS:-2}" \
    --dtypes "${DS_BENCH_DTYPES:-bf16}" --models "${DS_BENCH_MODELS:-/tmp/sdcpp-models}" \
    --sd-args="${DS_BENCH_SD_ARGS:-}" ${DS_BENCH_LOG:+--log "$DS_BENCH_LOG"}
