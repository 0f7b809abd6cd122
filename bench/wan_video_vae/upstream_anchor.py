"""bench/wan_video_vae anchor: upstream DiffSynth-Studio's own WanVideoVAE.single_decode on the
CPU, f32, the same seeded weights (make_wan_video_vae_golden.py's) and latents as vae_bench,
timed; one JSON line. Arguments as vae_bench's: --threads --repeats --frames --size."""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
import seeded_weights  # noqa: E402
from make_wan_video_vae_golden import build_model  # noqa: E402

from diffsynth.models.wan_video_vae import WanVideoVAE  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--size", type=int, default=128)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    model = build_model(WanVideoVAE)
    latents = torch.from_numpy(seeded_weights.tensor(
        "wan_vae.bench_latents", [1, 16, a.frames, a.size // 8, a.size // 8], 2027, 2.0, 0.0))
    times = []
    with torch.no_grad():
        for _ in range(a.repeats):
            start = time.perf_counter()
            model.single_decode(latents, "cpu")
            times.append(time.perf_counter() - start)
    print(json.dumps({"side": "upstream", "threads": torch.get_num_threads(),
                      "frames": 4 * (a.frames - 1) + 1, "size": a.size, "repeats": a.repeats,
                      "median_s": round(statistics.median(times), 3)}))


if __name__ == "__main__":
    main()
