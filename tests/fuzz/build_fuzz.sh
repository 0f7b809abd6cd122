#!/usr/bin/env bash
# Configures (once) and builds the libFuzzer targets in a build dir of their own, with clang,
# ASan and UBSan: tests/fuzz/build_fuzz.sh [BUILD_DIR] (default build-fuzz). Only the fuzz
# targets and the libraries they link are built. Warnings are enforced by the gcc builds; this
# one exists to fuzz, so clang-only warnings do not stop it.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-build-fuzz}
if [ -f "$dir/build.ninja" ]; then
    meson setup --reconfigure "$dir" >/dev/null
else
    CC=clang CXX=clang++ meson setup "$dir" -Dlibfuzzer=true -Db_sanitize=address,undefined \
        -Db_lundef=false -Dcuda=disabled -Dwerror=false >/dev/null
fi
mapfile -t targets < <(ninja -C "$dir" -t targets all |
    sed -n 's|^\(tests/fuzz/fuzz_[a-z_]*\): .*|\1|p' | sort -u)
if ((${#targets[@]} == 0)); then
    echo "build_fuzz: no fuzz targets in $dir" >&2
    exit 1
fi
ninja -C "$dir" "${targets[@]}"
