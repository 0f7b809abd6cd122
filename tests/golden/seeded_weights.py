"""Deterministic pseudo-random weights that the C tests regenerate bit for bit, so golden files
of full-width models (the Qwen-Image DiT has 340 M parameters per block) store only inputs and
outputs, not gigabytes of weights.

Element i of the tensor named `name` (flat, row-major) is
    u   = (splitmix64(fnv1a64(name) ^ (seed * 0x9E3779B97F4A7C15) + i) >> 40) / 2^24      in [0, 1)
    val = (2u - 1) * bound + center
with `bound` and `center` chosen per tensor by the caller (e.g. 1/sqrt(fan_in) for Linear weights
and biases, as torch's default init; center 1 and bound 0.1 for norm weights). u has 24 bits so
val is exact in float32 whatever the language. The same formula is in tests/tools/seeded_weights.c.
"""
import numpy as np

MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def splitmix64(x):
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform(name, count, seed):
    base = (fnv1a64(name) ^ ((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
    out = np.empty(count, dtype=np.float32)
    chunk = 1 << 24
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        with np.errstate(over="ignore"):
            idx = np.uint64(base) + np.arange(start, start + n, dtype=np.uint64)
        bits = splitmix64(idx) >> np.uint64(40)
        out[start:start + n] = bits.astype(np.float32) * np.float32(1.0 / (1 << 24))
    return out


def tensor(name, shape, seed, bound, center=0.0):
    count = int(np.prod(shape)) if len(shape) else 1
    u = uniform(name, count, seed)
    val = (np.float32(2.0) * u - np.float32(1.0)) * np.float32(bound) + np.float32(center)
    return val.reshape(shape)
