"""Golden data for the Qwen-Image VAE: upstream DiffSynth-Studio's own QwenImageVAE (the full
real config: base_dim 96, dim_mult [1, 2, 4, 4], 127 M parameters) on the CPU, weights from
tests/golden/seeded_weights.py (the C test regenerates them bit for bit):
  conv weights and biases: uniform within 1/sqrt(fan_in), fan_in = Cin * prod(kernel) of the
      conv (torch's default init range), a bias taking its conv weight's fan_in;
  RMS_norm gammas: centre 1, bound 0.1.

Cases (images are [B, C, H, W] in [-1, 1], latents [B, 16, H/8, W/8]):
  decode of seeded latents [1, 16, 8, 8] -> [1, 3, 64, 64], float32 and bfloat16 (the model
      cast with vae.to(bf16) and bf16 latents, as the pipeline runs it), and the bfloat16 decode
      once more with each RMS_norm rounded once (decode_norm_f32 says why);
  encode of a seeded image [1, 3, 64, 64], float32 and bfloat16;
  a non-square decode (latents 6 x 10) and encode (image 48 x 80), float32;
  the image_channels=4 config (Qwen-Image-Layered's VAE): decode and encode, float32.

Writes tests/data/golden/qwen_image_vae.safetensors (inputs and outputs only).
`build_model(image_channels, dtype)` and SEED are imported by other golden scripts.
Run with a private venv that has the upstream package (pip install diffsynth) — never in CI.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seeded_weights  # noqa: E402

from diffsynth.models import qwen_image_vae as vae_module  # noqa: E402
from diffsynth.models.qwen_image_vae import QwenImageVAE  # noqa: E402

SEED = 2027
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "qwen_image_vae.safetensors")


def weight_bounds(name, shape, shapes):
    """(bound, center) of a parameter: gammas around 1, conv weights and biases within
    1/sqrt(fan_in) of their conv."""
    if name.endswith(".gamma"):
        return 0.1, 1.0
    weight = shape if name.endswith(".weight") else shapes[name[: -len("bias")] + "weight"]
    fan_in = 1
    for d in weight[1:]:
        fan_in *= d
    return 1.0 / math.sqrt(fan_in), 0.0


def build_model(image_channels=3, dtype=torch.float32):
    with torch.device("meta"):
        meta = QwenImageVAE(image_channels=image_channels)
    shapes = {k: list(v.shape) for k, v in meta.state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        bound, center = weight_bounds(name, shape, shapes)
        state[name] = torch.from_numpy(seeded_weights.tensor(name, shape, SEED, bound, center))
    model = QwenImageVAE(image_channels=image_channels)
    model.load_state_dict(state)
    return model.eval().to(dtype)


def decode(model, latents, dtype):
    with torch.no_grad():
        return model.to(dtype).decode(latents.to(dtype))


def encode(model, image, dtype):
    with torch.no_grad():
        return model.to(dtype).encode(image.to(dtype))


def decode_norm_f32(model, latents, dtype):
    """decode with every RMS_norm computed in float32 and rounded to `dtype` once, as our
    channel_rms_norm kernel does; upstream's bf16 F.normalize rounds the norm, the quotient and
    each product. With these random weights the bf16 decode is that sensitive to rounding: this
    variant differs from upstream's bf16 decode by about 3 % (relative L2), as much as upstream's
    bf16 decode differs from its f32 decode, so the C test checks its bf16 decode against both."""
    original = vae_module.QwenImageRMS_norm.forward

    def forward(self, x):
        y = torch.nn.functional.normalize(x.float(), dim=(1 if self.channel_first else -1))
        return (y * self.scale * self.gamma.float() + self.bias).to(x.dtype)

    vae_module.QwenImageRMS_norm.forward = forward
    try:
        return decode(model, latents, dtype)
    finally:
        vae_module.QwenImageRMS_norm.forward = original


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(SEED)
    latents = torch.randn((1, 16, 8, 8), generator=generator)
    image = torch.rand((1, 3, 64, 64), generator=generator) * 2 - 1
    latents_wide = torch.randn((1, 16, 6, 10), generator=generator)
    image_wide = torch.rand((1, 3, 48, 80), generator=generator) * 2 - 1
    latents_4ch = torch.randn((1, 16, 4, 6), generator=generator)
    image_4ch = torch.rand((1, 4, 32, 48), generator=generator) * 2 - 1

    model = build_model(3)
    t = {
        "latents": latents,
        "image": image,
        "latents_wide": latents_wide,
        "image_wide": image_wide,
        "latents_4ch": latents_4ch,
        "image_4ch": image_4ch,
    }
    t["decode_f32"] = decode(model, latents, torch.float32)
    t["encode_f32"] = encode(model, image, torch.float32)
    t["decode_wide_f32"] = decode(model, latents_wide, torch.float32)
    t["encode_wide_f32"] = encode(model, image_wide, torch.float32)
    t["latents_bf16"] = latents.to(torch.bfloat16)
    t["image_bf16"] = image.to(torch.bfloat16)
    t["decode_bf16"] = decode(model, latents, torch.bfloat16)
    t["encode_bf16"] = encode(model, image, torch.bfloat16)
    t["decode_bf16_norm_f32"] = decode_norm_f32(model, latents, torch.bfloat16)
    del model
    model4 = build_model(4)
    t["decode_4ch_f32"] = decode(model4, latents_4ch, torch.float32)
    t["encode_4ch_f32"] = encode(model4, image_4ch, torch.float32)

    tensors = {k: v.contiguous() for k, v in t.items()}
    metadata = {"seed": str(SEED),
                "weights": "tests/golden/seeded_weights.py: conv weights and biases bound "
                           "1/sqrt(Cin * prod(kernel)); RMS_norm gammas center 1 bound 0.1",
                "upstream": "diffsynth " + getattr(__import__("diffsynth"), "__version__", "")}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, {k: tuple(v.shape) for k, v in tensors.items()})
    print("decode f32 std", t["decode_f32"].std().item(), "encode f32 std",
          t["encode_f32"].std().item())
    print("bf16 vs f32: decode", rel(t["decode_bf16"], t["decode_f32"]), "encode",
          rel(t["encode_bf16"], t["encode_f32"]), "; bf16 norm-f32 variant vs bf16",
          rel(t["decode_bf16_norm_f32"], t["decode_bf16"]))


if __name__ == "__main__":
    main()
