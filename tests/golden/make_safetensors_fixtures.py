"""Writes the safetensors fixtures of tests/unit/test_safetensors.c with the real `safetensors`
package, so the C reader is checked against files the reference writer produced.

    <venv>/bin/python tests/golden/make_safetensors_fixtures.py  (a private venv with torch, safetensors)

Values are chosen to be exact in every dtype; the C test hardcodes their encodings.
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "safetensors")


def main():
    os.makedirs(OUT, exist_ok=True)
    tensors = {
        "w.f32": torch.arange(6, dtype=torch.float32).reshape(2, 3) - 2.5,
        "w.f16": torch.tensor([[1.0, -2.0], [0.5, 65504.0]], dtype=torch.float16),
        "w.bf16": torch.tensor([1.0, -2.5, 0.15625, 256.0], dtype=torch.bfloat16),
        "w.f8_e4m3": torch.tensor([1.0, -0.5, 448.0], dtype=torch.float8_e4m3fn),
        "w.f8_e5m2": torch.tensor([2.0, -0.25], dtype=torch.float8_e5m2),
        "w.f64": torch.tensor(3.25, dtype=torch.float64),
        "ids": torch.tensor([1, -2, 1 << 40], dtype=torch.int64),
        "i32": torch.tensor([[-7], [9]], dtype=torch.int32),
        "i16": torch.tensor([-300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([255, 0, 7], dtype=torch.uint8),
        "mask": torch.tensor([True, False], dtype=torch.bool),
        "empty": torch.zeros((0, 4), dtype=torch.float32),
        "blocks.0.attn\"q\"": torch.tensor([5.0], dtype=torch.float32),
        "\u00e9mbed.\U0001F600": torch.tensor([6.0], dtype=torch.float32),
    }
    metadata = {"format": "pt", "note": "caf\u00e9 \"quoted\"\n"}
    save_file(tensors, os.path.join(OUT, "mixed.safetensors"), metadata=metadata)
    # No tensors at all: the writer's smallest valid file.
    save_file({}, os.path.join(OUT, "empty.safetensors"))


if __name__ == "__main__":
    main()
