"""bench/common/anchor_util: what the upstream anchors share (run in the venv with torch and the
upstream package): the checks that end a run as "unavailable", the thread and device set-up, the
timing loop, the seeded weights, the result line, and the DiT's inputs, so that every anchor
measures as its C bench does."""
import argparse
import json
import time

import torch

DTYPES = {"f32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16}
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}


def parse_forward_args(description, argv, add_shape, check_shape):
    """The arguments of a forward bench, as its C bench takes them: --backend, --threads,
    --dtype, --layers, --warmup and --repeats around the shape arguments `add_shape(parser)`
    adds; `check_shape(args)` returns what is wrong with them, or None. The dtype comes back as
    a torch dtype."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--layers", type=int, default=2)
    add_shape(p)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    wrong = check_shape(a)
    if wrong or a.repeats < 1 or a.warmup < 0 or a.layers < 1:
        p.error(f"{wrong or 'the shape is fine'}; --repeats >= 1, --warmup >= 0, --layers >= 1")
    a.dtype = DTYPES[a.dtype]
    return a


def unavailable(line, message):
    """Prints line as an "unavailable" result and returns the bench's exit status for it."""
    line.update(status="unavailable", message=message)
    print(json.dumps(line), flush=True)
    return 77


def set_up(a, line, modules=("diffsynth",)):
    """Imports `modules` (the upstream package), checks the device and sets torch's threads as
    the C bench sets ours. Returns (device, sync), or an int exit status after printing an
    "unavailable" line."""
    try:
        for name in modules:
            __import__(name)
    except ImportError as e:
        return unavailable(line, f"no upstream package: {e}")
    if a.backend == "cuda" and not torch.cuda.is_available():
        return unavailable(line, "torch sees no CUDA device")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    line["threads"] = torch.get_num_threads() if a.backend == "cpu" else a.threads
    sync = torch.cuda.synchronize if a.backend == "cuda" else (lambda: None)
    return torch.device(a.backend), sync


def time_calls(call, sync, warmup, repeats):
    """Warm-up calls, then `repeats` timed ones (perf_counter around the call and a synchronize)
    under torch.no_grad. Returns (sorted seconds, median, the last call's result); the median is
    the C benches' samples[n // 2] for odd or even counts."""
    samples = []
    out = None
    with torch.no_grad():
        for r in range(-warmup, repeats):
            start = time.perf_counter()
            out = call()
            sync()
            if r >= 0:
                samples.append(time.perf_counter() - start)
    samples.sort()
    return samples, samples[len(samples) // 2], out


def fill_uniform(model, device):
    """Fills a model materialised with to_empty as the C benches seed theirs: every parameter
    uniform in [-0.02, 0.02] (1-D norm weights: 1 + that), from one seeded generator on
    `device`. Returns the model in eval mode."""
    gen = torch.Generator(device=device).manual_seed(0x5EED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(-0.02, 0.02, generator=gen)
            if p.ndim == 1 and "norm" in name:
                p.add_(1.0)
    return model.eval()


def report_forward(line, a, samples, median, out, flops):
    """Prints a forward bench's result line (status ok unless the output has a non-finite value,
    the timing, the FLOP rate) and returns the exit status for it."""
    finite = bool(torch.isfinite(out.float()).all())
    line.update(status="ok" if finite else "bad_output", warmup=a.warmup, repeats=a.repeats,
                median_ms=median * 1e3, min_ms=samples[0] * 1e3, flops=flops,
                tflops=flops / median * 1e-12, weights=f"{a.backend}, resident",
                timing="perf_counter around one forward + synchronize")
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


def dit_inputs(a, device):
    """The DiT forward's inputs as dit_bench makes them: latents [1, 16, H/8, W/8] and a prompt
    embedding [1, L, 3584] uniform with unit variance, an all-ones mask, timestep 500."""
    gen = torch.Generator().manual_seed(1)
    bound = 3.0 ** 0.5
    latents = ((torch.rand((1, 16, a.height // 8, a.width // 8), generator=gen) * 2 - 1) * bound
               ).to(device=device, dtype=a.dtype)
    prompt_emb = ((torch.rand((1, a.text_tokens, 3584), generator=gen) * 2 - 1) * bound
                  ).to(device=device, dtype=a.dtype)
    mask = torch.ones((1, a.text_tokens), dtype=torch.int64, device=device)
    timestep = torch.tensor([500.0], device=device).to(a.dtype)
    return dict(latents=latents, timestep=timestep, prompt_emb=prompt_emb, prompt_emb_mask=mask,
                height=a.height, width=a.width)
