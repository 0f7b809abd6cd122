#!/usr/bin/env bash
# Longer coverage-guided fuzzing for developers: builds the targets (tests/fuzz/build_fuzz.sh)
# and runs each for SECONDS (default 600), one after another, keeping the corpus each run grows
# in build-fuzz/tests/fuzz/<target>-work/corpus for the next run.
# Usage: tests/fuzz/run_long.sh [SECONDS [TARGET...]]    e.g. run_long.sh 3600 fuzz_png
# Extra libFuzzer flags through FUZZ_FLAGS, e.g. FUZZ_FLAGS="-jobs=4 -workers=4".
# A crash stops that target and prints where its input is; after the fix, copy the input into
# tests/fuzz/corpus/<target>/ so the fuzz-smoke suite keeps replaying it.
set -uo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-600}
shift || true
dir=${DS_FUZZ_BUILD_DIR:-build-fuzz}
tests/fuzz/build_fuzz.sh "$dir" || exit 1
if (($# == 0)); then
    set -- $(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//' | grep -v '^fuzz_driver$')
fi
export DS_TEST_DATA="$PWD/tests/data"
# Seed 0 is libFuzzer's "pick one": long runs should explore afresh (the test suite fixes it).
export DS_FUZZ_SEED=${DS_FUZZ_SEED:-0}
failed=()
for t in "$@"; do
    echo "== $t: $seconds s"
    # shellcheck disable=SC2086
    tests/fuzz/run_fuzz.sh "$dir/tests/fuzz/$t" "tests/fuzz/corpus/$t" \
        "$dir/tests/fuzz/$t-work" "$seconds" ${FUZZ_FLAGS:-} || failed+=("$t")
done
if ((${#failed[@]})); then
    echo "run_long: crashes in ${failed[*]} (inputs under $dir/tests/fuzz/<target>-work/artifacts/)"
    exit 1
fi
echo "run_long: ${*} ran $seconds s each without a crash"
