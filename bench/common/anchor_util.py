"""bench/common/anchor_util: what the upstream anchors share (run in the venv with torch and the
upstream package): the checks that end a run as "unavailable", the thread and device set-up, the
timing loop, and the DiT's inputs, so that every anchor measures as its C bench does."""
import json
import time

import torch


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
