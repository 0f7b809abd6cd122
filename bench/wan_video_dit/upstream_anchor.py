"""bench/wan_video_dit anchor: upstream DiffSynth-Studio's own forward, timed as
wan_dit_bench.c times ours.

Takes wan_dit_bench's arguments and prints one JSON line with the same fields, impl
"upstream": diffsynth.models.wan_video_dit.WanModel with Wan2.1-T2V-1.3B's kwargs from
upstream's own config table (row 9269f8db...) and num_layers N, in the given dtype on the
given device, weights uniform in [-0.02, 0.02] (1-D norm weights: 1 + that), and one
diffsynth.pipelines.wan_video.model_fn_wan_video call per forward under torch.no_grad,
torch.set_num_threads(THREADS) on the CPU. Warm-up, then the median of --repeats forwards,
each timed with perf_counter around the call and a synchronize.

The model is built on the meta device, cast, then materialised on the target device and filled
in place; its RoPE tables (plain tensors, not parameters) are rebuilt on the CPU, where the
constructor would have left them. Never installs anything: run it with the private venv that
has the upstream package.
"""
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from anchor_util import (NAMES, fill_uniform, parse_forward_args, report_forward,  # noqa: E402
                         set_up, time_calls)

ROW_1_3B = "9269f8db9040a9d860eaca435be61814"
DIM, FFN, TEXT_DIM = 1536.0, 8960.0, 4096.0


def add_shape(p):
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--text-tokens", type=int, default=512)


def check_shape(a):
    return "--height/--width even" if a.height % 2 or a.width % 2 else None


def tokens(a):
    return a.frames * (a.height // 2) * (a.width // 2)


def forward_flops(a):
    """Counted exactly as wan_dit_bench.c counts them."""
    n, l, d = tokens(a), a.text_tokens, DIM
    per_block = (2.0 * n * d * (6 * d + 2 * FFN) + 2.0 * l * d * 2 * d + 4.0 * n * n * d
                 + 4.0 * n * l * d)
    outer = 2.0 * n * 64 * d + 2.0 * l * (TEXT_DIM * d + d * d) + 2.0 * n * d * 64
    return a.layers * per_block + outer


def build(a, device):
    from diffsynth.configs.model_configs import MODEL_CONFIGS
    from diffsynth.models.wan_video_dit import WanModel
    row = next(c for c in MODEL_CONFIGS if c["model_hash"] == ROW_1_3B
               and c["model_class"].endswith("WanModel"))
    kwargs = dict(row["extra_kwargs"], num_layers=a.layers)
    with torch.device("meta"):
        model = WanModel(**kwargs)
    model = model.to(a.dtype).to_empty(device=device)
    with torch.device("cpu"):
        model.freqs = WanModel(**dict(kwargs, num_layers=0)).freqs
    return fill_uniform(model, device)


def main(argv):
    a = parse_forward_args(__doc__.split("\n")[0], argv, add_shape, check_shape)
    line = {"impl": "upstream", "backend": a.backend, "model": "WanModel-1.3B",
            "layers": a.layers, "dtype": NAMES[a.dtype], "frames": a.frames, "height": a.height,
            "width": a.width, "tokens": tokens(a), "text_tokens": a.text_tokens,
            "threads": a.threads, "torch": torch.__version__}
    ready = set_up(a, line, modules=("diffsynth.pipelines.wan_video",))
    if isinstance(ready, int):
        return ready
    device, sync = ready
    from diffsynth.pipelines.wan_video import model_fn_wan_video

    start = time.perf_counter()
    model = build(a, device)
    print(f"upstream_anchor: {a.layers} layers built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    gen = torch.Generator().manual_seed(1)
    bound = 3.0 ** 0.5
    latents = ((torch.rand((1, 16, a.frames, a.height, a.width), generator=gen) * 2 - 1)
               * bound).to(device=device, dtype=a.dtype)
    context = ((torch.rand((1, a.text_tokens, 4096), generator=gen) * 2 - 1) * bound
               ).to(device=device, dtype=a.dtype)
    timestep = torch.tensor([500.0], device=device).to(a.dtype)

    samples, median, out = time_calls(
        lambda: model_fn_wan_video(dit=model, latents=latents, timestep=timestep,
                                   context=context),
        sync, a.warmup, a.repeats)
    return report_forward(line, a, samples, median, out, forward_flops(a))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
