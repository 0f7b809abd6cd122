"""bench/wan_video_vae anchor: upstream DiffSynth-Studio's own WanVideoVAE decode, the same
seeded weights (make_wan_video_vae_golden.py's) and latents as vae_bench, timed as vae_bench
times ours; one JSON line. Arguments as vae_bench's: --backend --threads --dtype --frames
--size / --height --width --tiled --warmup --repeats.

Untiled: WanVideoVAE.single_decode (the latents moved to the device inside the call). Tiled:
WanVideoVAE.decode(tiled=True) with the Wan pipeline's tile_size (30, 52) and tile_stride
(15, 26), as WanVideoPipeline's decode step calls it (each tile moved to the device, decoded,
blended into a video on the CPU). The model is built in float32 on the CPU, then moved to the
device in --dtype (torch's .to(bfloat16) rounding, as vae_bench's ds_golden_model_to_bf16). On
CUDA, max_memory_allocated is torch's peak over the timed decodes (reset after the warm-up):
the weights, activations and tiles; max_memory_reserved is its caching allocator's pool.
Never installs anything: run it with the private venv that has the upstream package.
"""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
sys.path.insert(0, os.path.join(ROOT, "bench", "common"))
import seeded_weights  # noqa: E402
from anchor_util import unavailable  # noqa: E402

DTYPES = {"f32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16}
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}
TILE, STRIDE = (30, 52), (15, 26)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--frames", type=int, default=3, help="latent frames")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--tiled", action="store_true")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--vram-gib", default=None, help="accepted for vae_bench's argument list; "
                   "upstream keeps the VAE on the device")
    a = p.parse_args(argv)
    if a.size is not None:
        a.height = a.width = a.size
    if a.height % 8 or a.width % 8 or a.frames < 1 or a.repeats < 1 or a.warmup < 0:
        p.error("--height/--width multiples of 8, --frames >= 1, --repeats >= 1, --warmup >= 0")
    a.dtype = DTYPES[a.dtype]
    return a


def main(argv):
    a = parse_args(argv)
    line = {"side": "upstream", "backend": a.backend, "model": "WanVideoVAE",
            "dtype": NAMES[a.dtype], "threads": a.threads, "frames": 4 * (a.frames - 1) + 1,
            "latent_frames": a.frames, "size": a.height, "height": a.height, "width": a.width,
            "tiled": a.tiled, "torch": torch.__version__}
    try:
        from make_wan_video_vae_golden import build_model
        from diffsynth.models.wan_video_vae import WanVideoVAE
    except ImportError as e:
        return unavailable(line, f"no upstream package: {e}")
    if a.backend == "cuda" and not torch.cuda.is_available():
        return unavailable(line, "torch sees no CUDA device")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    line["threads"] = torch.get_num_threads() if a.backend == "cpu" else a.threads
    device = a.backend
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    start = time.perf_counter()
    model = build_model(WanVideoVAE).to(device=device, dtype=a.dtype)
    latents = torch.from_numpy(seeded_weights.tensor(
        "wan_vae.bench_latents", [1, 16, a.frames, a.height // 8, a.width // 8], 2027, 2.0,
        0.0)).to(a.dtype)
    print(f"upstream_anchor: model and latents built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)

    def decode():
        if a.tiled:
            return model.decode(latents, device, tiled=True, tile_size=TILE, tile_stride=STRIDE)
        return model.single_decode(latents, device)

    times = []
    with torch.no_grad():
        for r in range(-a.warmup, a.repeats):
            if r == 0 and device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            video = decode()
            sync()
            if r >= 0:
                times.append(time.perf_counter() - start)
        finite = bool(torch.isfinite(video.float()).all())
    times.sort()  # the median as vae_bench's: times[n // 2] for odd or even counts
    line.update(status="ok" if finite else "bad_output", warmup=a.warmup, repeats=a.repeats,
                median_s=round(times[len(times) // 2], 3), min_s=round(times[0], 3),
                timing="perf_counter around one decode + synchronize")
    if device == "cuda":
        line["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        line["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
