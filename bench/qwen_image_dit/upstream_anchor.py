"""bench/qwen_image_dit anchor: upstream DiffSynth-Studio's own forward, timed as dit_bench.c
times ours.

Takes dit_bench's arguments and prints one JSON line with the same fields, impl "upstream":
diffsynth.models.qwen_image_dit.QwenImageDiT(num_layers=N) in the given dtype on the given
device, weights uniform in [-0.02, 0.02] (1-D norm weights: 1 + that), and one
diffsynth.pipelines.qwen_image.model_fn_qwen_image call per forward under torch.no_grad (the
pipeline's text-to-image path: prompt_emb_mask all ones, height / width = latents x 8),
torch.set_num_threads(THREADS) on the CPU. Warm-up, then the median of --repeats forwards, each
timed with perf_counter around the call and a synchronize.

The model is built on the meta device, cast, then materialised on the target device and filled
in place, so 60 layers in bf16 (40 GB) take seconds on a GPU; its RoPE tables (plain tensors,
not parameters) are rebuilt on the CPU, where the constructor would have left them.
Never installs anything: run it with the private venv that has the upstream package.
"""
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from anchor_util import (NAMES, dit_inputs, fill_uniform, parse_forward_args,  # noqa: E402
                         report_forward, set_up, time_calls)
DIM, TEXT_DIM = 3072.0, 3584.0


def add_shape(p):
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--text-tokens", type=int, default=32)


def check_shape(a):
    return "--height/--width multiples of 16" if a.height % 16 or a.width % 16 else None


def forward_flops(a):
    """Counted exactly as dit_bench.c counts them."""
    si, st = (a.height // 16) * (a.width // 16), a.text_tokens
    s, d = si + st, DIM
    per_block = 2.0 * s * d * (12 * d) + 4.0 * s * s * d + 2.0 * 2.0 * d * 6 * d
    outer = (2.0 * si * 64 * d + 2.0 * st * TEXT_DIM * d + 2.0 * (256 * d + d * d)
             + 2.0 * d * 2 * d + 2.0 * si * d * 64)
    return a.layers * per_block + outer


def build(a, device):
    from diffsynth.models.qwen_image_dit import QwenImageDiT
    with torch.device("meta"):
        model = QwenImageDiT(num_layers=a.layers)
    model = model.to(a.dtype).to_empty(device=device)
    pe = model.pos_embed
    with torch.device("cpu"):
        model.pos_embed = type(pe)(pe.theta, pe.axes_dim, scale_rope=pe.scale_rope)
    return fill_uniform(model, device)


def main(argv):
    a = parse_forward_args(__doc__.split("\n")[0], argv, add_shape, check_shape)
    line = {"impl": "upstream", "backend": a.backend, "model": "QwenImageDiT",
            "layers": a.layers, "dtype": NAMES[a.dtype], "height": a.height, "width": a.width,
            "image_tokens": (a.height // 16) * (a.width // 16), "text_tokens": a.text_tokens,
            "threads": a.threads, "torch": torch.__version__}
    ready = set_up(a, line)
    if isinstance(ready, int):
        return ready
    device, sync = ready
    from diffsynth.pipelines.qwen_image import model_fn_qwen_image

    start = time.perf_counter()
    model = build(a, device)
    print(f"upstream_anchor: {a.layers} layers built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    inputs = dit_inputs(a, device)
    samples, median, out = time_calls(lambda: model_fn_qwen_image(dit=model, **inputs), sync,
                                      a.warmup, a.repeats)
    return report_forward(line, a, samples, median, out, forward_flops(a))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
