#!/usr/bin/env bash
# bench/wan_video_vae CPU: the Wan2.1 VAE's untiled decode of 3 latent frames to 9 frames of
# 128 x 128, f32, real config with seeded weights: ours (ds_wan_video_vae_decode on the CPU
# backend) against upstream's own WanVideoVAE.single_decode, same threads, in the same run
# (DESIGN §7: the ratio is the result). Target: ours/upstream <= 1.0.
#
# usage: bench/wan_video_vae/run.sh [PYTHON_WITH_DIFFSYNTH] [THREADS] [REPEATS]
#   PYTHON_WITH_DIFFSYNTH  default /work/venv/bin/python (a private venv; never installed here)
#   THREADS                default: online CPUs
#   REPEATS                timed decodes per side; the median counts (default 1)
# DS_BUILD_DIR: the build holding bench/vae_bench (default build-release, built by
# bench/build_release.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/vae_bench
args=(--threads "${2:-$(nproc)}" --repeats "${3:-1}")
ours=$("$build/bench/vae_bench" "${args[@]}")
upstream=$("${1:-/work/venv/bin/python}" bench/wan_video_vae/upstream_anchor.py "${args[@]}")
echo "$ours"
echo "$upstream"
python3 - "$ours" "$upstream" <<'PY'
import json, sys
o, u = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"Wan2.1 VAE decode, {o['frames']} frames {o['size']}x{o['size']}, f32, "
      f"{o['threads']} threads: ours {o['median_s']:.2f} s, upstream {u['median_s']:.2f} s, "
      f"ratio {o['median_s'] / u['median_s']:.2f} ({o.get('gemm', 'gemm path not printed')})")
PY
