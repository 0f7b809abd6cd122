"""Golden data for the Qwen-Image DiT: upstream DiffSynth-Studio's own QwenImageDiT and its
pipeline model function (model_fn_qwen_image), on the CPU, with 2 of the 60 blocks at the real
width (the class has no smaller width), weights from tests/golden/seeded_weights.py (the C test
regenerates them), small latents with an odd token grid (h=3, w=4: RoPE centring) and a 7-token
prompt.

Writes tests/data/golden/qwen_image_dit_2layers.safetensors with the inputs and the outputs of a
float32 run and of a bfloat16 run (weights and inputs cast to bf16, as the pipeline runs it).
Run with a private venv that has the upstream package (pip install diffsynth) — never in CI.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seeded_weights  # noqa: E402

from diffsynth.models.qwen_image_dit import QwenImageDiT  # noqa: E402
from diffsynth.pipelines.qwen_image import model_fn_qwen_image  # noqa: E402

SEED = 2024
NUM_LAYERS = 2
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "qwen_image_dit_2layers.safetensors")


def weight_bounds(name, shape):
    """torch's default Linear init range, 1/sqrt(fan_in), for weights and biases alike; norm
    weights around 1."""
    if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or \
            name.endswith("norm_added_q.weight") or name.endswith("norm_added_k.weight") or \
            name == "txt_norm.weight":
        return 0.1, 1.0
    fan_in = shape[1] if len(shape) == 2 else None
    if fan_in is None:
        # A bias: its layer's weight has the fan-in; biases are named <layer>.bias.
        return None, 0.0
    return 1.0 / math.sqrt(fan_in), 0.0


def build_model():
    torch.manual_seed(0)
    with torch.device("meta"):
        model = QwenImageDiT(num_layers=NUM_LAYERS)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        bound, center = weight_bounds(name, shape)
        if bound is None:
            weight_shape = shapes[name[: -len("bias")] + "weight"]
            bound = 1.0 / math.sqrt(weight_shape[1])
        state[name] = torch.from_numpy(seeded_weights.tensor(name, shape, SEED, bound, center))
    model = QwenImageDiT(num_layers=NUM_LAYERS)
    model.load_state_dict(state)
    return model.eval(), {k: (weight_bounds(k, v)) for k, v in shapes.items()}


def run(model, dtype, latents, prompt_emb, timestep):
    model = model.to(dtype)
    with torch.no_grad():
        return model_fn_qwen_image(
            dit=model,
            latents=latents.to(dtype),
            timestep=timestep.to(dtype),
            prompt_emb=prompt_emb.to(dtype),
            prompt_emb_mask=torch.ones((1, prompt_emb.shape[1]), dtype=torch.int64),
            height=latents.shape[2] * 8,
            width=latents.shape[3] * 8,
        )


def main():
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(SEED)
    latents = torch.randn((1, 16, 6, 8), generator=generator)
    prompt_emb = torch.randn((1, 7, 3584), generator=generator)
    timestep = torch.tensor([982.25])
    model, _ = build_model()
    out_f32 = run(model, torch.float32, latents, prompt_emb, timestep)
    out_bf16 = run(model, torch.bfloat16, latents, prompt_emb, timestep)
    tensors = {
        "latents": latents.contiguous(),
        "prompt_emb": prompt_emb.contiguous(),
        "timestep": timestep.contiguous(),
        "noise_pred_f32": out_f32.float().contiguous(),
        "latents_bf16": latents.to(torch.bfloat16).contiguous(),
        "prompt_emb_bf16": prompt_emb.to(torch.bfloat16).contiguous(),
        "noise_pred_bf16": out_bf16.contiguous(),
    }
    metadata = {"seed": str(SEED), "num_layers": str(NUM_LAYERS), "timestep": "982.25",
                "weights": "tests/golden/seeded_weights.py: bound 1/sqrt(fan_in) for Linear "
                           "weights and biases; norm weights center 1 bound 0.1",
                "upstream": "diffsynth " + __import__("diffsynth").__version__
                if hasattr(__import__("diffsynth"), "__version__") else "diffsynth"}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, {k: tuple(v.shape) for k, v in tensors.items()})
    print("f32 out stats", out_f32.abs().mean().item(), "bf16 vs f32 rel",
          ((out_bf16.float() - out_f32).norm() / out_f32.norm()).item())


if __name__ == "__main__":
    main()
