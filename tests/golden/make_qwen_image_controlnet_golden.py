"""Golden data for the Qwen-Image Blockwise ControlNet path: upstream DiffSynth-Studio's own
QwenImageDiT (2 blocks, the weights and inputs of make_qwen_image_dit_golden.py) with an upstream
QwenImageBlockWiseControlNet (2 blocks, full width), through the pipeline model function
model_fn_qwen_image with blockwise controlnet conditioning, on the CPU.

Two ControlNets, each with seeded weights of its own seed (tests/golden/seeded_weights.py; the C
test regenerates them). Upstream zero-initialises img_in and every output_proj, which would make
the residual path a no-op: the seeded weights are nonzero everywhere so that it is exercised.
  a: the plain config (in_dim 64, additional_in_dim 0): conditioning [1, 16, 6, 8], scale 1.0
  b: the inpainting config (additional_in_dim 4: a mask channel, packed 2x2 into 4 more input
     features): conditioning [1, 17, 6, 8], scale 0.75
Each runs in float32 and in bfloat16 (weights and inputs cast to bf16, as the pipeline runs it).
The output of the DiT without a ControlNet is stored too, so the test can check the path is live.

Writes tests/data/golden/qwen_image_controlnet_2layers.safetensors (inputs and outputs only).
Run with a private venv that has the upstream package (pip install diffsynth) — never in CI.
"""
import copy
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_qwen_image_dit_golden as dit_golden  # noqa: E402
import seeded_weights  # noqa: E402

from diffsynth.models.qwen_image_controlnet import QwenImageBlockWiseControlNet  # noqa: E402
from diffsynth.pipelines.qwen_image import (  # noqa: E402
    QwenImageBlockwiseMultiControlNet, model_fn_qwen_image)
from diffsynth.utils.controlnet.controlnet_input import ControlNetInput  # noqa: E402

NUM_LAYERS = 2
CONTROLNETS = {
    # name: (seed, additional_in_dim, conditioning channels, scale)
    "a": (2025, 0, 16, 1.0),
    "b": (2026, 4, 17, 0.75),
}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "qwen_image_controlnet_2layers.safetensors")


def controlnet_bounds(name, shape, shapes):
    """1/sqrt(fan_in) for Linear weights and their biases; RMSNorm weights around 1."""
    if name.endswith("_rms.weight"):
        return 0.1, 1.0
    weight = shape if len(shape) == 2 else shapes[name[: -len("bias")] + "weight"]
    return 1.0 / math.sqrt(weight[1]), 0.0


def build_controlnet(seed, additional_in_dim):
    with torch.device("meta"):
        model = QwenImageBlockWiseControlNet(num_layers=NUM_LAYERS,
                                             additional_in_dim=additional_in_dim)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        bound, center = controlnet_bounds(name, shape, shapes)
        state[name] = torch.from_numpy(seeded_weights.tensor(name, shape, seed, bound, center))
    model = QwenImageBlockWiseControlNet(num_layers=NUM_LAYERS,
                                         additional_in_dim=additional_in_dim)
    model.load_state_dict(state)
    return model.eval()


def run(dit, controlnet, dtype, latents, prompt_emb, timestep, conditioning, scale):
    # Module.to casts in place: the float32 model is kept and a cast copy runs.
    dit = copy.deepcopy(dit).to(dtype)
    kwargs = {}
    if controlnet is not None:
        kwargs = dict(
            blockwise_controlnet=QwenImageBlockwiseMultiControlNet(
                [copy.deepcopy(controlnet).to(dtype)]),
            blockwise_controlnet_conditioning=[conditioning.to(dtype)],
            blockwise_controlnet_inputs=[ControlNetInput(scale=scale)],
            progress_id=0,
            num_inference_steps=1,
        )
    with torch.no_grad():
        return model_fn_qwen_image(
            dit=dit,
            latents=latents.to(dtype),
            timestep=timestep.to(dtype),
            prompt_emb=prompt_emb.to(dtype),
            prompt_emb_mask=torch.ones((1, prompt_emb.shape[1]), dtype=torch.int64),
            height=latents.shape[2] * 8,
            width=latents.shape[3] * 8,
            **kwargs,
        )


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    torch.set_num_threads(2)
    # The DiT golden's inputs, drawn in the same order from the same generator.
    generator = torch.Generator().manual_seed(dit_golden.SEED)
    latents = torch.randn((1, 16, 6, 8), generator=generator)
    prompt_emb = torch.randn((1, 7, 3584), generator=generator)
    timestep = torch.tensor([982.25])
    dit, _ = dit_golden.build_model()

    tensors = {
        "latents": latents.contiguous(),
        "prompt_emb": prompt_emb.contiguous(),
        "timestep": timestep.contiguous(),
        "latents_bf16": latents.to(torch.bfloat16).contiguous(),
        "prompt_emb_bf16": prompt_emb.to(torch.bfloat16).contiguous(),
    }
    plain_f32 = run(dit, None, torch.float32, latents, prompt_emb, timestep, None, 0)
    tensors["noise_pred_plain_f32"] = plain_f32.float().contiguous()
    metadata = {"dit_seed": str(dit_golden.SEED), "num_layers": str(NUM_LAYERS),
                "timestep": "982.25"}
    for key, (seed, additional_in_dim, channels, scale) in CONTROLNETS.items():
        cond_gen = torch.Generator().manual_seed(seed)
        conditioning = torch.randn((1, channels, 6, 8), generator=cond_gen)
        controlnet = build_controlnet(seed, additional_in_dim)
        out_f32 = run(dit, controlnet, torch.float32, latents, prompt_emb, timestep,
                      conditioning, scale)
        out_bf16 = run(dit, controlnet, torch.bfloat16, latents, prompt_emb, timestep,
                       conditioning, scale)
        tensors[f"conditioning_{key}"] = conditioning.contiguous()
        tensors[f"conditioning_{key}_bf16"] = conditioning.to(torch.bfloat16).contiguous()
        tensors[f"noise_pred_{key}_f32"] = out_f32.float().contiguous()
        tensors[f"noise_pred_{key}_bf16"] = out_bf16.contiguous()
        metadata[f"controlnet_{key}"] = (f"seed {seed}, additional_in_dim {additional_in_dim}, "
                                         f"scale {scale}")
        print(key, "vs plain f32:", rel(out_f32, plain_f32), "bf16 vs f32:",
              rel(out_bf16, out_f32))
    metadata["weights"] = ("tests/golden/seeded_weights.py: bound 1/sqrt(fan_in) for Linear "
                           "weights and biases; RMSNorm weights center 1 bound 0.1")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, {k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
