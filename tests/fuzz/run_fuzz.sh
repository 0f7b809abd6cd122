#!/usr/bin/env bash
# Runs one libFuzzer target, coverage-guided, for a bounded time.
# Usage: run_fuzz.sh TARGET SEED_CORPUS WORK_DIR SECONDS [libFuzzer flags...]
# New inputs go to WORK_DIR/corpus (the seed corpus in the source tree is only read); a crash
# leaves its input in WORK_DIR/artifacts/ and fails the run. A fixed crasher belongs in
# SEED_CORPUS, so the fuzz-smoke suite replays it in every test run.
# The random seed is fixed (DS_FUZZ_SEED, default 1) so a test run explores the same way each time
# and a red CI names a change, not luck; tests/fuzz/run_long.sh explores with fresh seeds.
set -uo pipefail
target=$1 seeds=$2 work=$3 seconds=$4
shift 4
mkdir -p "$work/corpus" "$work/artifacts"
# libFuzzer's own exit code for a crash is 77, which meson reads as "skipped": make it 1.
"$target" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -seed="${DS_FUZZ_SEED:-1}" -error_exitcode=1 -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$seeds"
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "run_fuzz: $(basename "$target") failed (exit $rc); inputs that crashed:" >&2
    ls -l "$work/artifacts" >&2
fi
exit "$rc"
