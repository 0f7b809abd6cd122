"""bench/kernels anchor: PyTorch's equivalent of one kernels_bench measurement.

Takes kernels_bench's arguments (see kernels_bench.c) and prints one JSON line with the same
fields, impl "torch", so the run scripts can divide the two. Timed the same way as ours: a
monotonic clock around `iters` calls followed by one synchronize, median of `repeats` samples
after `warmup` calls, operands cycled over `sets` copies.

What runs for each op (what upstream DiffSynth-Studio calls, in its layouts):
  linear      torch.addmm / torch.mm into a preallocated output (F.linear without the
              allocation); a weight stored in another dtype is converted with .to() inside the
              timed region, as our backend converts it inside the op
  attention   F.scaled_dot_product_attention on [B, S, H, D] tensors viewed as [B, H, S, D]
  rms_norm    F.rms_norm over the last dim with a weight
  modulate    x * (1 + scale) + shift
  gated_residual  x + gate * y
  copy        dst.copy_(src) on uint8 buffers
Never installs anything: run it with a Python that has torch (run_cpu.sh / run_gpu.sh take its
path).
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = {"f32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "f16": torch.float16, "float16": torch.float16}
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--op", required=True,
                   choices=["linear", "attention", "rms_norm", "modulate", "gated_residual", "copy"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--weight-dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--sets", type=int, default=1)
    p.add_argument("--m", type=int, default=4096)
    p.add_argument("--k", type=int, default=3072)
    p.add_argument("--n", type=int, default=3072)
    p.add_argument("--bias", action="store_true")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--bytes", type=int, default=1 << 30)
    a = p.parse_args(argv)
    if a.repeats < 1 or a.iters < 1 or a.sets < 1 or a.warmup < 0:
        p.error("--repeats, --iters and --sets must be >= 1, --warmup >= 0")
    a.dtype = DTYPES[a.dtype]
    a.weight_dtype = DTYPES[a.weight_dtype] if a.weight_dtype else a.dtype
    return a


def uniform(shape, stddev, dtype, device, gen):
    """Uniform values of the given standard deviation (never zeros), as kernels_bench fills."""
    half = stddev * math.sqrt(3.0)
    t = torch.rand(shape, generator=gen, dtype=torch.float32, device="cpu") * (2 * half) - half
    return t.to(dtype=dtype, device=device)


def describe(a):
    """(flops, bytes, shape) per call, counted exactly as kernels_bench counts them."""
    es = torch.finfo(a.dtype).bits // 8
    ws = torch.finfo(a.weight_dtype).bits // 8
    if a.op == "linear":
        flops = 2.0 * a.m * a.n * a.k
        nbytes = es * (a.m * a.k + a.m * a.n + (a.n if a.bias else 0)) + ws * a.n * a.k
        shape = f"x[{a.m},{a.k}] w[{a.n},{a.k}]" + (" +bias" if a.bias else "")
    elif a.op == "attention":
        flops = 4.0 * a.batch * a.heads * a.seq * a.seq * a.head_dim * (0.5 if a.causal else 1.0)
        nbytes = 4.0 * es * a.batch * a.seq * a.heads * a.head_dim
        shape = f"B{a.batch} S{a.seq} H{a.heads} D{a.head_dim}" + (" causal" if a.causal else "")
    elif a.op == "copy":
        flops, nbytes, shape = 0.0, 2.0 * a.bytes, f"{a.bytes} bytes"
    else:
        big, small = a.tokens * a.dim, a.dim
        flops = 0.0
        nbytes = es * {"rms_norm": 2 * big + small, "modulate": 2 * big + 2 * small,
                       "gated_residual": 3 * big + small}[a.op]
        shape = f"x[1,{a.tokens},{a.dim}]"
    return flops, nbytes, shape


def make_call(a, device, gen):
    """One operand set and a function running the op on it and returning the output."""
    if a.op == "linear":
        x = uniform((a.m, a.k), 1.0, a.dtype, device, gen)
        w = uniform((a.n, a.k), 1.0 / math.sqrt(a.k), a.weight_dtype, device, gen)
        b = uniform((a.n,), 0.5, a.dtype, device, gen) if a.bias else None
        y = torch.full((a.m, a.n), float("nan"), dtype=a.dtype, device=device)

        def call():
            wt = (w if w.dtype == x.dtype else w.to(x.dtype)).t()
            if b is None:
                torch.mm(x, wt, out=y)
            else:
                torch.addmm(b, x, wt, out=y)
            return y
        return call
    if a.op == "attention":
        shape = (a.batch, a.seq, a.heads, a.head_dim)
        q, k, v = (uniform(shape, 1.0, a.dtype, device, gen) for _ in range(3))
        scale = 1.0 / math.sqrt(a.head_dim)

        def call():
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                  v.transpose(1, 2), is_causal=a.causal,
                                                  scale=scale)
        return call
    if a.op == "copy":
        # Drawn where it lives: a GiB of host random bytes would take seconds.
        src = torch.randint(0, 256, (a.bytes,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)

        def call():
            dst.copy_(src)
            return dst
        call.check = lambda: torch.equal(dst, src)
        return call
    x = uniform((1, a.tokens, a.dim), 1.0, a.dtype, device, gen)
    if a.op == "rms_norm":
        w = uniform((a.dim,), 1.0, a.dtype, device, gen)
        return lambda: F.rms_norm(x, (a.dim,), w, 1e-6)
    c1 = uniform((1, 1, a.dim), 0.5, a.dtype, device, gen)
    if a.op == "modulate":
        c2 = uniform((1, 1, a.dim), 0.5, a.dtype, device, gen)
        return lambda: x * (1 + c1) + c2
    y = uniform((1, a.tokens, a.dim), 0.5, a.dtype, device, gen)
    return lambda: x + c1 * y


def main(argv):
    a = parse_args(argv)
    flops, nbytes, shape = describe(a)
    line = {"impl": "torch", "backend": a.backend, "op": a.op, "dtype": NAMES[a.dtype],
            "weight_dtype": NAMES[a.weight_dtype], "shape": shape, "threads": a.threads,
            "torch": torch.__version__}
    if a.backend == "cpu":
        # Which kernels torch dispatches to here, beside our "gemm" line.
        line["cpu"] = (f"capability {torch.backends.cpu.get_cpu_capability()}, "
                       f"mkldnn {torch.backends.mkldnn.is_available()}, "
                       f"mkl {torch.backends.mkl.is_available()}")
    if a.backend == "cuda" and not torch.cuda.is_available():
        line.update(status="unavailable", message="torch sees no CUDA device")
        print(json.dumps(line), flush=True)
        return 77
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    line["threads"] = torch.get_num_threads() if a.backend == "cpu" else a.threads
    device = torch.device(a.backend)
    sync = torch.cuda.synchronize if a.backend == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0x5EED)
    torch.manual_seed(0x5EED)

    with torch.inference_mode():
        calls = [make_call(a, device, gen) for _ in range(a.sets)]
        nxt = 0
        for _ in range(max(a.warmup, a.sets)):  # every set at least once, as kernels_bench
            calls[nxt]()
            nxt = (nxt + 1) % a.sets
        sync()
        samples = []
        for _ in range(a.repeats):
            start = time.perf_counter()
            for _ in range(a.iters):
                calls[nxt]()
                nxt = (nxt + 1) % a.sets
            sync()
            samples.append((time.perf_counter() - start) / a.iters)
        # An op that left its output unwritten is no measurement (outputs start as NaN); a
        # copy must equal its source.
        finite = all(c.check() if hasattr(c, "check") else bool(torch.isfinite(c().float()).all())
                     for c in calls)
    median = sorted(samples)[len(samples) // 2]  # kernels_bench's median, for odd or even counts
    line.update(status="ok" if finite else "bad_output", warmup=a.warmup, repeats=a.repeats,
                iters=a.iters, sets=a.sets, median_ms=median * 1e3, min_ms=min(samples) * 1e3,
                flops=flops, bytes=nbytes, tflops=flops / median * 1e-12,
                gbps=nbytes / median * 1e-9,
                timing="perf_counter around iters calls + synchronize")
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
