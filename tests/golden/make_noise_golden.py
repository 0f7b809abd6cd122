"""Golden data for core/torch_generator.c: torch.randn on a CPU torch.Generator, as upstream's
pipelines draw their initial noise (BasePipeline.generate_noise: torch.Generator("cpu")
.manual_seed(seed), then torch.randn(shape, generator, dtype) straight in the compute dtype).

Writes tests/data/golden/torch_noise.safetensors:
  noise.<dtype>.s<seed>.<shape>      whole draws from a fresh generator, shapes
                                     [1,16,8,8] (blocks of 16), [1,16,3,5] (240: blocks) and
                                     [1,16,1,1] (16), [3] and [15] (the serial path), [17] and
                                     [33] (a tail that redraws 16)
  big.<dtype>.s<seed>.head / .tail   first and last 4096 values of [1,16,128,128] (a 1024x1024
  big.<dtype>.s<seed>.fnv            image), and the FNV-1a 64 hash of all its bytes (u8[8], LE)
  noise.bf16.s0.1x16x128x128         that draw in full for seed 0 in bf16 (the pipeline's case)
  seq.<dtype>.<i>                    draws one after another from one generator (seed 7):
                                     sizes 3, 240, 5, 17, 1, 16, 2 - the serial path's cached
                                     second value survives the block path in between
Run with the private venv (torch on the CPU) - never in CI.
"""
import os

import torch
from safetensors.torch import save_file

torch.set_num_threads(2)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "torch_noise.safetensors")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
SEEDS = [0, 1, 42, 2**64 - 1]
SHAPES = [(1, 16, 8, 8), (1, 16, 3, 5), (1, 16, 1, 1), (3,), (15,), (17,), (33,)]
SEQ_SIZES = [3, 240, 5, 17, 1, 16, 2]


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def raw_bytes(t):
    view = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    return t.contiguous().view(view[t.dtype]).numpy().tobytes()


def draw(seed, shape, dtype):
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, device="cpu", dtype=dtype)


def main():
    out = {}
    for name, dtype in DTYPES.items():
        for seed in SEEDS:
            for shape in SHAPES:
                key = "noise.%s.s%d.%s" % (name, seed, "x".join(str(d) for d in shape))
                out[key] = draw(seed, shape, dtype)
            if name == "f16":
                continue
            big = draw(seed, (1, 16, 128, 128), dtype)
            flat = big.flatten()
            out["big.%s.s%d.head" % (name, seed)] = flat[:4096].clone()
            out["big.%s.s%d.tail" % (name, seed)] = flat[-4096:].clone()
            digest = fnv1a64(raw_bytes(big)).to_bytes(8, "little")
            out["big.%s.s%d.fnv" % (name, seed)] = torch.frombuffer(bytearray(digest),
                                                                     dtype=torch.uint8)
        generator = torch.Generator("cpu").manual_seed(7)
        for i, n in enumerate(SEQ_SIZES):
            out["seq.%s.%d" % (name, i)] = torch.randn((n,), generator=generator, dtype=dtype)
    out["noise.bf16.s0.1x16x128x128"] = draw(0, (1, 16, 128, 128), torch.bfloat16)
    save_file(out, OUT)
    print("wrote", OUT, len(out), "tensors")


if __name__ == "__main__":
    main()
