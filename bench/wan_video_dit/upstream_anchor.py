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
import argparse
import json
import sys
import time

import torch

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}
ROW_1_3B = "9269f8db9040a9d860eaca435be61814"
DIM, FFN, TEXT_DIM = 1536.0, 8960.0, 4096.0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.height % 2 or a.width % 2 or a.repeats < 1 or a.warmup < 0 or a.layers < 1:
        p.error("--height/--width even, --repeats >= 1, --warmup >= 0, --layers >= 1")
    a.dtype = DTYPES[a.dtype]
    return a


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
    gen = torch.Generator(device=device).manual_seed(0x5EED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(-0.02, 0.02, generator=gen)
            if p.ndim == 1 and "norm" in name:
                p.add_(1.0)
    return model.eval()


def main(argv):
    a = parse_args(argv)
    line = {"impl": "upstream", "backend": a.backend, "model": "WanModel-1.3B",
            "layers": a.layers, "dtype": NAMES[a.dtype], "frames": a.frames, "height": a.height,
            "width": a.width, "tokens": tokens(a), "text_tokens": a.text_tokens,
            "threads": a.threads, "torch": torch.__version__}
    try:
        from diffsynth.pipelines.wan_video import model_fn_wan_video
    except ImportError as e:
        line.update(status="unavailable", message=f"no upstream package: {e}")
        print(json.dumps(line), flush=True)
        return 77
    if a.backend == "cuda" and not torch.cuda.is_available():
        line.update(status="unavailable", message="torch sees no CUDA device")
        print(json.dumps(line), flush=True)
        return 77
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    line["threads"] = torch.get_num_threads() if a.backend == "cpu" else a.threads
    device = torch.device(a.backend)
    sync = torch.cuda.synchronize if a.backend == "cuda" else (lambda: None)

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

    samples = []
    with torch.no_grad():
        for r in range(-a.warmup, a.repeats):
            start = time.perf_counter()
            out = model_fn_wan_video(dit=model, latents=latents, timestep=timestep,
                                     context=context)
            sync()
            if r >= 0:
                samples.append(time.perf_counter() - start)
        finite = bool(torch.isfinite(out.float()).all())
    samples.sort()
    median = samples[len(samples) // 2]  # wan_dit_bench's median, for odd or even counts
    flops = forward_flops(a)
    line.update(status="ok" if finite else "bad_output", warmup=a.warmup, repeats=a.repeats,
                median_ms=median * 1e3, min_ms=samples[0] * 1e3, flops=flops,
                tflops=flops / median * 1e-12, weights=f"{a.backend}, resident",
                timing="perf_counter around one forward + synchronize")
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
