#!/usr/bin/env bash
# Builds benchmark targets in an optimised release build (what users run; the default build is
# debugoptimized), setting the build directory up on first use. Every CPU bench/*/run.sh calls
# it, so a row is always timed on release code that matches the working tree.
#
# usage: bench/build_release.sh BUILD_DIR TARGET...   (progress goes to stderr)
#   BUILD_DIR  DS_BUILD_DIR in the run.sh scripts, default build-release; an existing build dir
#              of another buildtype is used as it is, with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$1
shift
# -O3 inlines deeper than debugoptimized's -O2, and GCC 12 then reports maybe-uninitialized
# false positives in core/ (safetensors.c, unpickle.c); they are not errors of the code timed,
# so the release build does not stop on warnings (the default build still does).
if [[ ! -f $build/build.ninja ]]; then
    meson setup "$build" --buildtype=release -Dwerror=false >&2
fi
buildtype=$(meson introspect --buildoptions "$build" |
    python3 -c 'import json, sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "buildtype"))')
[[ $buildtype == release ]] ||
    echo "build_release.sh: $build is a $buildtype build, not release: timings are not the shipped code's" >&2
ninja -C "$build" "$@" >&2
