#!/usr/bin/env bash
# Builds what the GPU check needs (core's kernel-facing files, kernels with CUDA, the kernel tests
# and bench/kernels_bench) with gcc and nvcc alone, for a device machine where the full meson
# configure cannot run (its image lacks libuv, protobuf-c, nanopb, ... -dev packages; kernels need
# none of them). tests/device/run.sh calls it only when `meson setup` failed.
#
# usage: [NVCC=path] tests/device/build_direct.sh OUTDIR BLAS_INCLUDE_DIR BLAS_LIB_DIR
# Produces OUTDIR/tests/kernels/test_* and OUTDIR/bench/kernels_bench, the layout of a meson
# build dir, so run_gpu.sh takes OUTDIR as DS_BUILD_DIR. Flags follow kernels/meson.build
# (sm_90 code plus PTX, C11, -D_GNU_SOURCE); warnings are not errors here, since the device's
# compiler may be newer than the one the project is linted with. Exit 0 when the kernel library
# and at least the benchmark linked; per-test link failures are listed in OUTDIR/failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=$1 blas_inc=$2 blas_lib=$3
mkdir -p "$out/obj" "$out/tests/kernels" "$out/bench"
: >"$out/failed"
max_jobs=$(nproc)
cc=$(command -v gcc || command -v cc || echo gcc)

# NVCC set but empty: build without CUDA (to try this script where the CUDA code does not link).
nvcc=${NVCC-$(command -v nvcc || { [[ -x /usr/local/cuda/bin/nvcc ]] && echo /usr/local/cuda/bin/nvcc; } || true)}
cflags=(-std=c11 -O2 -g0 -D_GNU_SOURCE '-DDS_VERSION="device"' -I. -Itests -I"$blas_inc" -pthread
        -Wall -Wextra)
nvflags=(-O2 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90,code=sm_90
         -gencode=arch=compute_90,code=compute_90 -I. -D_GNU_SOURCE -Xcompiler=-pthread)
# kernels/cuda/*.c: the CUDA backend's host logic, part of every build (kernels/meson.build).
kernel_srcs=(kernels/ops.c kernels/cpu/*.c kernels/cuda/*.c)
cuda_srcs=()
if [[ -n $nvcc ]] && compgen -G 'kernels/cuda/*.cu' >/dev/null; then
    cflags+=(-DDS_HAVE_CUDA=1)
    cuda_srcs=(kernels/cuda/*.cu)
    cuda_lib=$(dirname "$(dirname "$nvcc")")/lib64
    link=("$nvcc" -Xlinker "-rpath=$blas_lib" -Xlinker "-rpath=$cuda_lib" -lcublasLt -Xcompiler=-pthread)
    echo "build_direct: CUDA with $nvcc ($("$nvcc" --version | tail -1))"
else
    kernel_srcs+=(kernels/cuda_unavailable.c)
    link=("$cc" -pthread "-Wl,-rpath,$blas_lib")
    echo "build_direct: no nvcc or no kernels/cuda/*.cu: the CUDA backend reports UNAVAILABLE"
fi

obj_of() { local s=${1//\//_}; echo "$out/obj/${s%.*}.o"; }

compile() {   # source
    local obj
    obj=$(obj_of "$1")
    if [[ $1 == *.cu ]]; then
        "$nvcc" "${nvflags[@]}" -c "$1" -o "$obj"
    else
        "$cc" "${cflags[@]}" -c "$1" -o "$obj"
    fi >"$obj.log" 2>&1 || { echo "$1" >>"$out/failed"; return 1; }
}

# Every core file whose headers exist here: the ones needing xxhash/libmd/jansson fail to
# compile on a bare image and are not needed by the kernels (the link says so if they are).
core_srcs=(core/*.c)
# kernels_bench's helpers: bench/common's kernels-only modules (not bench_model, which needs
# the models).
bench_srcs=(bench/common/bench_util.c bench/common/bench_backend.c bench/kernels/kernels_bench.c)
all=("${core_srcs[@]}" "${kernel_srcs[@]}" "${cuda_srcs[@]}" tests/kernels/kernel_test.c
     tests/kernels/test_*.c "${bench_srcs[@]}")
for src in "${all[@]}"; do
    [[ -f $src ]] || continue
    compile "$src" &
    while (($(jobs -rp | wc -l) >= max_jobs)); do wait -n; done
done
wait
for src in "${all[@]}"; do
    log=$(obj_of "$src").log
    [[ -s $log ]] && { echo "--- $src"; cat "$log"; }
done

objs() { for s in "$@"; do o=$(obj_of "$s"); [[ -f $o ]] && echo "$o"; done; }
core_failed=$(grep -c '^core/' "$out/failed" || true)
((core_failed > 0)) && echo "build_direct: $core_failed core files did not compile here (missing -dev headers); fine unless the link needs them"
if grep -qv '^core/\|^tests/kernels/test_' "$out/failed"; then
    echo "build_direct: the kernel library, the test harness or the benchmark did not compile:"
    grep -v '^core/\|^tests/kernels/test_' "$out/failed"
    exit 1
fi
rm -f "$out/libcore.a" "$out/libkernels.a" "$out/libkt.a"
mapfile -t core_objs < <(objs "${core_srcs[@]}")
mapfile -t kernel_objs < <(objs "${kernel_srcs[@]}" "${cuda_srcs[@]}")
ar rcs "$out/libcore.a" "${core_objs[@]}" && ar rcs "$out/libkernels.a" "${kernel_objs[@]}" &&
    ar rcs "$out/libkt.a" "$(obj_of tests/kernels/kernel_test.c)" || exit 1

libs=("$out/libkernels.a" "$out/libcore.a" -L"$blas_lib" -lopenblas -lm)
mapfile -t bench_objs < <(objs "${bench_srcs[@]}")
"${link[@]}" -o "$out/bench/kernels_bench" "${bench_objs[@]}" "${libs[@]}" ||
    { echo "build_direct: kernels_bench did not link"; exit 1; }
for src in tests/kernels/test_*.c; do
    name=$(basename "$src" .c)
    obj=$(obj_of "$src")
    [[ -f $obj ]] || continue
    "${link[@]}" -o "$out/tests/kernels/$name" "$obj" "$out/libkt.a" "${libs[@]}" ||
        echo "$src (link)" >>"$out/failed"
done
echo "build_direct: done; $(grep -c . "$out/failed" || true) sources failed (listed in $out/failed)"
