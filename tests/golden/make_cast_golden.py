#!/usr/bin/env python3
"""Writes tests/data/cast_golden.bin: PyTorch's own `.to(dtype)` results, bit patterns, for the
casts our kernels implement (tests/kernels/test_cast.c compares against them bit for bit).

Run with the private venv:  /work/venv/bin/python tests/golden/make_cast_golden.py

File layout (little-endian):
  magic b"DSCAST1\\0"
  records until EOF, each:
    name      32 bytes, NUL-padded ASCII
    src, dst  u8 each: our ds_dtype numbers (f32 1, f16 2, bf16 3, f8_e4m3 4, f8_e5m2 5, f64 6)
    pad       2 bytes
    count     u32
    src bits  count * size(src) bytes
    dst bits  count * size(dst) bytes (torch's result of src.to(dst))

What torch does, as recorded here (torch 2.x on CPU):
  - f32 -> bf16/f16/e5m2: round to nearest even, overflow to inf; e4m3fn: saturates to +-448,
    infinities included.
  - f64 -> bf16/f16/fp8: torch converts through f32 (two roundings), so a value just above a
    narrow halfway point can round down; the "double rounding" records hold such values.
    The script asserts this finding so a torch that changes it fails loudly here.
"""
import os
import struct
import sys

import numpy as np
import torch

DS = {"f32": 1, "f16": 2, "bf16": 3, "e4m3": 4, "e5m2": 5, "f64": 6}
TORCH = {
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "e4m3": torch.float8_e4m3fn,
    "e5m2": torch.float8_e5m2,
    "f64": torch.float64,
}
BITS = {"f32": torch.int32, "f16": torch.int16, "bf16": torch.int16, "e4m3": torch.uint8,
        "e5m2": torch.uint8, "f64": torch.int64}
# (mantissa bits, min normal exponent, max finite) of the narrow formats
FORMATS = {
    "bf16": (7, -126, float(torch.finfo(torch.bfloat16).max)),
    "f16": (10, -14, 65504.0),
    "e4m3": (3, -6, 448.0),
    "e5m2": (2, -14, 57344.0),
}


def bits(t, name):
    return t.contiguous().view(BITS[name]).numpy().tobytes()


def f32(values):
    return torch.tensor(np.array(values, dtype=np.float32))


def edge_values():
    """Edge cases of every narrow format, as f32 values."""
    v = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), -float("nan"),
         np.float32(1.4e-45), np.finfo(np.float32).max, -np.finfo(np.float32).max,
         np.finfo(np.float32).tiny]
    for man, emin, fmax in FORMATS.values():
        sub = 2.0 ** (emin - man)               # smallest subnormal
        ulp_max = 2.0 ** (np.floor(np.log2(fmax)) - man)
        cands = [sub, sub / 2, sub * 0.75, sub * 0.25, sub * 1.5, sub * 2.5, sub * 3.5,
                 2.0 ** emin - sub, 2.0 ** emin - sub / 2, 2.0 ** emin, 2.0 ** emin + sub / 2,
                 fmax, fmax + ulp_max / 2, fmax + ulp_max / 4, fmax + ulp_max * 0.75,
                 fmax + ulp_max, fmax * 2, fmax * 1e3, fmax - ulp_max / 2]
        # halfway points between neighbours at several exponents: ties both to even and odd
        for e in (emin - 1, emin, -3, 0, 1, 5, 10, 15):
            q = 2.0 ** (e - man)
            for m in range(0, 2 ** man, max(1, 2 ** man // 8)):
                base = 2.0 ** e + m * q
                cands += [base + q / 2, base + q / 2 * (1 + 2 ** -12), base + q / 2 * (1 - 2 ** -12)]
        for c in cands:
            f = np.float32(c)
            if np.isfinite(f):
                v += [f, -f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(0))]
            else:
                v.append(f)
    return np.array(v, dtype=np.float32)


def random_values(rng, n):
    """Random f32 over wide exponent ranges: raw bit patterns, and values around each format."""
    raw = rng.integers(0, 2 ** 32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    out = [raw[np.isfinite(raw)]]
    for man, emin, fmax in FORMATS.values():
        e = rng.uniform(emin - man - 3, np.log2(fmax) + 2, size=n // 2)
        s = rng.choice([-1.0, 1.0], size=n // 2)
        out.append((s * 2.0 ** e).astype(np.float32))
    return np.concatenate(out)


def narrow_samples(name):
    """16-bit patterns: every subnormal/inf/NaN pattern and every 31st of the rest; fp8: all."""
    if name in ("e4m3", "e5m2"):
        return np.arange(256, dtype=np.uint8)
    man = FORMATS[name][0]
    p = np.arange(65536, dtype=np.uint32)
    exp = (p >> man) & ((1 << (15 - man)) - 1)
    keep = (exp == 0) | (exp == (1 << (15 - man)) - 1) | (p % 31 == 0)
    return p[keep].astype(np.uint16)


def record(out, name, src, dst, src_t):
    dst_t = src_t.to(TORCH[dst])
    n = src_t.numel()
    out.append(name.encode().ljust(32, b"\0") + struct.pack("<BBxxI", DS[src], DS[dst], n) +
               bits(src_t, src) + bits(dst_t, dst))


def double_rounding_values(rng):
    """f64 values just above a narrow halfway point by less than half an f32 ulp: rounding
    once goes up, rounding through f32 lands exactly on the tie first."""
    v = []
    for name, (man, emin, fmax) in FORMATS.items():
        for e in (emin, -2, 0, 3, 7):
            q = 2.0 ** (e - man)
            for m in range(0, 2 ** man, max(1, 2 ** man // 16)):
                half = 2.0 ** e + m * q + q / 2
                if half < fmax:
                    tiny = 2.0 ** (np.floor(np.log2(half)) - 30)
                    v += [half + tiny, half - tiny, -(half + tiny)]
    v += list(rng.standard_normal(500) * 2.0 ** rng.uniform(-30, 30, size=500))
    return np.array(v, dtype=np.float64)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "data", "cast_golden.bin")
    rng = np.random.default_rng(20240603)
    edges = edge_values()
    x = f32(np.concatenate([edges, random_values(rng, 2000)]))
    out = []
    for dst in ("bf16", "f16", "e4m3", "e5m2"):
        record(out, "f32 -> " + dst, "f32", dst, x)

    d = torch.tensor(np.concatenate([double_rounding_values(rng), edges.astype(np.float64),
                                     rng.standard_normal(300) * 1e300]), dtype=torch.float64)
    for dst in ("f32", "bf16", "f16", "e4m3", "e5m2"):
        record(out, "f64 -> " + dst, "f64", dst, d)
    # The recorded finding: torch rounds f64 -> bf16 through f32.
    probe = torch.tensor([1.0 + 2 ** -8 + 2 ** -30], dtype=torch.float64)
    through_f32 = probe.float().to(torch.bfloat16).view(torch.int16).item()
    direct = probe.to(torch.bfloat16).view(torch.int16).item()
    assert direct == through_f32 == 0x3F80, (direct, through_f32)

    for src in ("bf16", "f16", "e4m3", "e5m2"):
        pats = torch.from_numpy(narrow_samples(src).copy())
        t = pats.view(TORCH[src]) if src in ("e4m3", "e5m2") else pats.view(torch.int16).view(TORCH[src])
        for dst in ("f32", "f64", "bf16", "f16", "e4m3", "e5m2"):
            if dst != src:
                record(out, src + " -> " + dst, src, dst, t)

    with open(path, "wb") as f:
        f.write(b"DSCAST1\0")
        for r in out:
            f.write(r)
    print("wrote", path, os.path.getsize(path), "bytes, torch", torch.__version__, file=sys.stderr)


if __name__ == "__main__":
    main()
