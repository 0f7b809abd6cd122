#!/usr/bin/env bash
# bench/identify: identifying the 9-shard Qwen-Image DiT header set (1,933 tensors) through
# diffsynthd, against upstream's hash_model_file run by the upstream Python package on the same
# files in the same run. Prints both timings and the ratio (target: >= 20x).
#
# usage: bench/identify/run.sh [PYTHON_WITH_DIFFSYNTH] [REPEATS]
# The Python must have upstream's package installed (a private venv: pip install diffsynth);
# it is never installed by the project or CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
repeats=${2:-200}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" daemon/diffsynthd tests/tools/ds-make-model bench/identify_bench

work=$(mktemp -d)
trap 'kill "${daemon:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
"$build/tests/tools/ds-make-model" --keys tests/data/keylists/qwen_image_dit.json \
    --out "$work/diffusion_pytorch_model" --shards 9 --dtype bf16 --fill sparse >/dev/null
shards=("$work"/diffusion_pytorch_model-0000?-of-00009.safetensors)

"$build/daemon/diffsynthd" --socket "$work/d.sock" --model-root "$work" --log-level warn 2>"$work/log" &
daemon=$!
for _ in $(seq 100); do grep -q "listening on" "$work/log" && break; sleep 0.1; done

ours=$("$build/bench/identify_bench" "$work/d.sock" "$repeats" "${shards[@]}")
cold=$("$build/bench/identify_cold" "$((repeats / 4 + 1))" "${shards[@]}")
upstream=$("$python" bench/identify/upstream_hash.py "$((repeats / 4 + 1))" "${shards[@]}")

"$python" - "$ours" "$cold" "$upstream" <<'PY'
import json, sys
ours, cold, up = (json.loads(a) for a in sys.argv[1:4])
expected = "0319a1cb19835fb510907dd3367c95ff"
assert ours["model_hash"] == cold["model_hash"] == up["model_hash"] == expected, (ours, cold, up)
print(f"identify Qwen-Image DiT, 9 shards, 1933 tensors (hash {up['model_hash']})")
print(f"  upstream hash_model_file, in-process      median {up['median_s']*1e3:8.3f} ms  (anchor)")
print(f"  diffsynthd Identify, socket round trip    median {ours['median_s']*1e3:8.3f} ms"
      f"  {up['median_s']/ours['median_s']:6.1f}x  (files seen before: header fingerprint hit)")
print(f"  cold identify (cache miss), in-process    median {cold['median_s']*1e3:8.3f} ms"
      f"  {up['median_s']/cold['median_s']:6.1f}x  (map + parse + merge + MD5 + match)")
print("  target: >= 20x for the daemon's Identify")
PY
