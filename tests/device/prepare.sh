#!/usr/bin/env bash
# Run HERE (a Debian 12 x86-64 machine with apt, pip and the CUDA toolkit), before a device call:
# the device machine reaches no package registry, and its image lacks three things the GPU check
# needs. Everything goes into build-device-deps/ (ignored by git, ~27 MB), which the device call
# carries; tests/device/run.sh unpacks and uses it there, never installing into /.
#   1. OpenBLAS, which the CPU backend (and so every kernel test and benchmark) links: the Debian
#      packages of its pthread build (with cblas.h) and the Fortran runtime it needs (*.deb).
#   2. The upstream package for the anchors: diffsynth and what it imports that the image lacks
#      (the image has torch, transformers, accelerate, peft, einops, imageio, pandas and
#      safetensors; not modelscope, modelscope-hub, ftfy, wcwidth, cryptography, cffi, pycparser),
#      as wheels for the image's Python 3.12 at the versions the CPU anchors were run with
#      (wheels/); run.sh installs them into build-device/pysite.
#   3. The benchmarks that need the whole project (wan_dit_bench, vae_bench, vram_bench): the
#      image cannot configure it (no libuv, protobuf-c, nanopb, ... -dev packages), so run.sh's
#      direct build makes only the kernels, their tests and kernels_bench. They are built here
#      with CUDA into build-device-prebuilt/ (-Dcuda=enabled; oneDNN, FFmpeg and the gateway off,
#      so that fewer shared libraries travel) and packed, stripped, with the shared libraries
#      they need beyond glibc, libstdc++, the CUDA runtime and OpenBLAS with its Fortran runtime
#      (part 1), into prebuilt.tar.xz: bench/, lib/ and REVISION (the commit and whether the tree
#      had changes). Rerun this after changing the code: run.sh uses these binaries as they are.
#      The call carries the working tree too, and all of it must stay under 64 MiB: the three
#      binaries share most of their bytes, which xz finds (9 MB stripped, 0.7 MB packed).
# DS_DEVICE_PREPARE=debs,wheels,prebuilt (default all three) picks the parts; DS_PIP_PYTHON (a
# Python with pip, default python3) downloads the wheels.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
parts=,${DS_DEVICE_PREPARE:-debs,wheels,prebuilt},
mkdir -p build-device-deps

if [[ $parts == *,debs,* ]]; then
    (cd build-device-deps && rm -f ./*.deb &&
        apt-get download libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0)
fi

if [[ $parts == *,wheels,* ]]; then
    rm -rf build-device-deps/wheels
    "${DS_PIP_PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d build-device-deps/wheels diffsynth==2.1.12 modelscope==1.40.2 modelscope-hub==0.5.1 \
        ftfy==6.3.1 wcwidth==0.9.5 cryptography==51.0.1 cffi==2.1.1 pycparser==3.12
fi

if [[ $parts == *,prebuilt,* ]]; then
    pb=build-device-prebuilt
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    [[ -x $nvcc ]] || { echo "prepare.sh: no nvcc here: cannot prebuild the CUDA benchmarks" >&2; exit 1; }
    export PATH="$(dirname "$nvcc"):$PATH"
    [[ -f $pb/build.ninja ]] ||
        meson setup "$pb" -Dcuda=enabled -Donednn=disabled -Dffmpeg=disabled -Dhttp=disabled
    targets=(wan_dit_bench vae_bench vram_bench)
    ninja -C "$pb" "${targets[@]/#/bench/}"
    out=$pb/pack
    rm -rf "$out" && mkdir -p "$out/bench" "$out/lib"
    for t in "${targets[@]}"; do
        strip -o "$out/bench/$t" "$pb/bench/$t"
        # Whatever the loader resolves here, but what the image or part 1 brings.
        ldd "$pb/bench/$t" | awk '$3 ~ /^\// {print $3}' |
            grep -v -E '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt|libopenblas|libgfortran|libquadmath)\.so' |
            while read -r lib; do cp -L -n "$lib" "$out/lib/"; done
    done
    { git -C "$root" rev-parse HEAD
      git -C "$root" diff --quiet HEAD && echo "tree: clean" || echo "tree: with uncommitted changes"
    } >"$out/REVISION"
    tar -C "$out" -cf - bench lib REVISION | xz -9 >build-device-deps/prebuilt.tar.xz
    rm -rf build-device-deps/prebuilt
fi
du -sh build-device-deps
ls -la build-device-deps build-device-deps/wheels 2>/dev/null
