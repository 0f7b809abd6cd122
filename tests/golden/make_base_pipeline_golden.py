"""Golden data for diffusion/base_pipeline.c and core/image_png.c: upstream's BasePipeline helpers
(diffsynth/diffusion/base_pipeline.py) called on the CPU, and PNG files written by PIL, the
library upstream reads and writes images with.

Writes tests/data/golden/base_pipeline.safetensors:
  cfg.<dtype>.posi / .nega / .c<scale*10>   cfg_guided_model_fn's combination for cfg_scale 4,
                                           7.5, 3.3 and 1.7 (4099 values)
  vae.<dtype>.in / .out       vae_output_to_image on [1, 3, 37, 53] values around [-1.2, 1.2]
                              with NaN, +-inf and the clip edges in the first row -> [37, 53, 3] u8
  pre.rgb / pre.<dtype>       preprocess_image of a 37x53 RGB image -> [1, 3, 37, 53]
  png.<kind> / png_rgb.<kind> a PNG file's bytes (u8) as PIL writes it, and its pixels as RGB8:
                              PIL's own convert("RGB"), except for 16-bit samples, where the
                              expectation is the high byte (PIL clips 16-bit values instead)
Run with the private venv (torch on the CPU, the upstream diffsynth package) - never in CI.
"""
import io
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from diffsynth.diffusion.base_pipeline import BasePipeline

torch.set_num_threads(2)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "base_pipeline.safetensors")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
CFG_SCALES = [4.0, 7.5, 3.3, 1.7]
H, W = 37, 53


def png_bytes(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def u8(array):
    return torch.from_numpy(np.array(array, dtype=np.uint8))


def png_cases(rng):
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    cases = {
        "rgb8": Image.fromarray(rgb),
        "rgba8": Image.fromarray(rgba),
        "gray8": Image.fromarray(gray),
        "gray_alpha8": Image.fromarray(rgba[:, :, :2].copy()),
        "palette": Image.fromarray(rgb).quantize(colors=37),
        "palette4": Image.fromarray(rgb).quantize(colors=16),
        "bilevel": Image.fromarray(gray > 127),
    }
    out = {}
    for kind, image in cases.items():
        data = png_bytes(image, bits=4) if kind == "palette4" else png_bytes(image)
        out["png." + kind] = u8(np.frombuffer(data, dtype=np.uint8))
        out["png_rgb." + kind] = u8(np.array(Image.open(io.BytesIO(data)).convert("RGB")))
    data = png_bytes(Image.fromarray(gray16))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out["png.gray16"] = u8(np.frombuffer(data, dtype=np.uint8))
    high = (gray16 >> 8).astype(np.uint8)
    out["png_rgb.gray16"] = u8(np.stack([high] * 3, axis=-1))
    return out


def main():
    out = {}
    generator = torch.Generator().manual_seed(11)
    for name, dtype in DTYPES.items():
        posi = (torch.randn(4099, generator=generator) * 2).to(dtype)
        nega = (torch.randn(4099, generator=generator) * 2).to(dtype)
        out["cfg.%s.posi" % name] = posi
        out["cfg.%s.nega" % name] = nega
        for scale in CFG_SCALES:
            combined = BasePipeline.cfg_guided_model_fn(
                None, lambda x: x, scale, {}, {"x": posi}, {"x": nega})
            out["cfg.%s.c%d" % (name, round(scale * 10))] = combined

        x = torch.randn(1, 3, H, W, generator=generator) * 0.7
        edges = [float("nan"), float("inf"), -float("inf"), -1.0, 1.0, 0.99999, -0.9999, 1.5,
                 -1.5, 0.0, -0.0, 0.5 / 127.5 - 1.0]
        x[0, :, 0, :len(edges)] = torch.tensor(edges)
        x = x.to(dtype)
        out["vae.%s.in" % name] = x
        out["vae.%s.out" % name] = u8(np.array(BasePipeline.vae_output_to_image(None, x)))

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb[0, :4] = [[0, 0, 0], [255, 255, 255], [127, 128, 1], [254, 2, 253]]
    out["pre.rgb"] = u8(rgb)
    for name, dtype in DTYPES.items():
        out["pre." + name] = BasePipeline.preprocess_image(
            None, Image.fromarray(rgb), torch_dtype=dtype, device="cpu")

    out.update(png_cases(rng))
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print("wrote", OUT, len(out), "tensors")


if __name__ == "__main__":
    main()
