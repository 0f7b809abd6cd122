#!/usr/bin/env bash
# bench/vram CPU: the Qwen-Image DiT forward at the golden test's size (2 blocks at full width,
# 256x256 + 32 text tokens) streamed through the VRAM manager under budgets of 100 %, 50 %, 25 %
# and 0 of its weight bytes, against the same forward through a manager with no limit, in the
# same process (DESIGN §7: the ratio is the result). Also times the forward without a manager
# (weights used in place). Every output is checked bit-identical to that one.
#
# usage: bench/vram/run.sh [THREADS] [REPEATS] [DTYPE]
#   THREADS  default: online CPUs
#   REPEATS  timed forwards per budget after one warm-up; the fastest counts (default 3)
#   DTYPE    bf16 (default; 1.4 GB of weights, up to as much again resident) or f32 (2.9 GB)
# DS_BUILD_DIR: the build holding bench/vram_bench (default build-release, built by bench/build_release.sh). DS_BENCH_LOG: a file to
# append every JSON line to.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
repeats=${2:-3}
dtype=${3:-bf16}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/vram_bench
bench="$build/bench/vram_bench"


out=$("$bench" --threads "$threads" --repeats "$repeats" --dtype "$dtype")
[[ -n ${DS_BENCH_LOG:-} ]] && printf '%s\n' "$out" >> "$DS_BENCH_LOG"
printf '%s\n' "$out" | python3 -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
summary = next(r for r in rows if r.get("summary"))
print("%-10s %8s %10s %10s %14s %12s %11s %10s %9s" % ("budget", "min ms", "median ms",
      "peak MB", "moved MB/fwd", "copy ms/fwd", "allocs/fwd", "vs unlim.", "identical"))
for r in rows:
    if r.get("summary"):
        continue
    ratio = summary["slowdown"].get(r["budget"], 1.0)
    print("%-10s %8.1f %10.1f %10.1f %14.1f %12.1f %11.1f %9.2fx %9s" % (r["budget"],
          r["min_ms"], r["median_ms"], r["peak_bytes"] / 1e6, r["moved_bytes_per_forward"] / 1e6,
          r["copy_ms_per_forward"], r["allocations_per_forward"], ratio, r["bit_identical"]))
print("slowdown vs unlimited: 50%% budget %.2fx, 25%% budget %.2fx" %
      (summary["slowdown"]["50%"], summary["slowdown"]["25%"]))
'
