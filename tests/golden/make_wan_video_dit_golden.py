"""Golden data for the Wan video DiT: upstream DiffSynth-Studio's own WanModel and VaceWanModel
run through its pipeline model function (model_fn_wan_video), on the CPU, with 2 blocks at the
real width of the config each case copies, float32 and bfloat16, batch 1 and batch 2.

Cases (each model's kwargs are those of upstream's config row named, with num_layers 2):
  t2v   Wan2.1-T2V-1.3B (row 9269f8db…): plain text-to-video.
  i2v   PAI/Wan2.1-Fun-1.3B-InP (row 6d6ccde6…, the 1.3B-width has_image_input row): `y`
        (20 channels) concatenated to the latents and 257 CLIP tokens through img_emb into
        the cross-attention's k_img/v_img.
  ti2v  Wan2.2-TI2V-5B (row 1f5ab770…, width 3072, 48 channels): seperated_timestep with
        fuse_vae_embedding_in_latents=True, as the pipeline runs it with an input image: the
        first latent frame's tokens get timestep 0, the others the step's timestep.
  flf2v the i2v row with has_image_pos_emb (upstream's only such row, Wan2.1-FLF2V-14B, is
        14B wide; this keeps the 1.3B width): 514 CLIP tokens (first and last frame) plus
        img_emb.emb_pos, of which the cross-attention takes the first 257 as the image's and
        the other 257 before the text as its context.
  vace  Wan2.1-T2V-1.3B DiT plus VaceWanModel at 1.3B width with vace_layers (0, 1), so hints
        are added after both blocks, vace_scale 0.75, vace_context of 96 channels.
Latents are 3 frames x 6 x 10 (a 3 x 3 x 5 token grid: non-square, several frames); the text
context has 7 tokens.

Nothing but the outputs (and the timesteps) is stored: weights and inputs come from
tests/golden/seeded_weights.py, which tests/tools/seeded_weights.c reproduces bit for bit.
  weights: seeded_weights.tensor(<parameter name>, shape, SEED, bound, center) with the
           parameter names of the module's state_dict (the VACE branch's own names, which
           start with "vace"), and bound/center from weight_range() below.
  inputs:  seeded_weights.tensor("input.<case>.<name>", shape of the batch-2 input, SEED,
           1.0, 0.0); batch 1 is item 0 of it (and timestep[:1]).
The bfloat16 run casts the model and every input with .to(torch.bfloat16) (round to nearest
even), as the pipeline does with torch_dtype=bfloat16.

Writes tests/data/golden/wan_video_dit_2layers.safetensors: for each case `<case>.timestep`
(f32, the batch-2 timesteps) and `<case>.b{1,2}.{f32,bf16}` (the noise prediction, bf16 as
returned), with the kwargs and input shapes in the metadata. Run with a private venv that has
the upstream package (pip install diffsynth) — never in CI; it needs about 4 GB of memory.
With case names as arguments only those cases are computed and the rest of the file is kept.
"""
import importlib.metadata
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seeded_weights  # noqa: E402

from diffsynth.configs.model_configs import MODEL_CONFIGS  # noqa: E402
from diffsynth.models.wan_video_dit import WanModel  # noqa: E402
from diffsynth.models.wan_video_vace import VaceWanModel  # noqa: E402
from diffsynth.pipelines.wan_video import model_fn_wan_video  # noqa: E402

SEED = 2025
NUM_LAYERS = 2
FRAMES, HEIGHT, WIDTH = 3, 6, 10
TEXT_TOKENS = 7
CLIP_TOKENS = 257  # CrossAttention splits the first 257 context rows off as the image's
# Exactly representable in bfloat16, so both runs see the same timesteps.
TIMESTEPS = [936.0, 500.0]
VACE_LAYERS = (0, 1)
VACE_SCALE = 0.75
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "wan_video_dit_2layers.safetensors")

CASES = {
    "t2v": {"row": "9269f8db9040a9d860eaca435be61814", "timesteps": TIMESTEPS},
    "i2v": {"row": "6d6ccde6845b95ad9114ab993d917893", "timesteps": TIMESTEPS},
    # One timestep for the batch: the per-token timestep is built from a single value.
    "ti2v": {"row": "1f5ab7703c6fc803fdded85ff040c316", "timesteps": TIMESTEPS[:1]},
    "vace": {"row": "9269f8db9040a9d860eaca435be61814", "timesteps": TIMESTEPS},
    "flf2v": {"row": "6d6ccde6845b95ad9114ab993d917893", "timesteps": TIMESTEPS,
              "kwargs": {"has_image_pos_emb": True}},
}
# Cases to compute; the others' tensors are copied from the existing file, so adding a case
# leaves them byte for byte as they were. Empty: all.
ONLY = sys.argv[1:]


def weight_range(name, shapes):
    """(bound, center) of a parameter: img_emb.emb_pos 0.5 around 0 (upstream starts it at
    zeros; this makes its part visible); torch's default init range 1/sqrt(fan_in) for conv
    and linear weights and their biases (fan_in = product of the weight's dims after the
    first); modulation tables 0.1 around 0; other 1-D weights (RMSNorm and LayerNorm scales) 0.1
    around 1, and LayerNorm biases 0.1 around 0."""
    shape = shapes[name]
    if name.endswith("emb_pos"):
        return 0.5, 0.0
    if name.endswith("modulation"):
        return 0.1, 0.0
    if len(shape) >= 2:
        return 1.0 / math.sqrt(math.prod(shape[1:])), 0.0
    if name.endswith(".bias"):
        weight = shapes.get(name[: -len("bias")] + "weight")
        if weight is not None and len(weight) >= 2:
            return 1.0 / math.sqrt(math.prod(weight[1:])), 0.0
        return 0.1, 0.0
    return 0.1, 1.0


def seeded(module):
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        bound, center = weight_range(name, shapes)
        state[name] = torch.from_numpy(seeded_weights.tensor(name, shape, SEED, bound, center))
    module.load_state_dict(state)
    return module.eval()


def row_kwargs(model_hash):
    rows = [c for c in MODEL_CONFIGS if c["model_hash"] == model_hash
            and c["model_class"].endswith("wan_video_dit.WanModel")]
    if len(rows) != 1:
        sys.exit(f"upstream has {len(rows)} WanModel rows with hash {model_hash}")
    kwargs = dict(rows[0]["extra_kwargs"])
    kwargs["num_layers"] = NUM_LAYERS
    return kwargs


def seeded_input(case, name, shape):
    return torch.from_numpy(seeded_weights.tensor(f"input.{case}.{name}", list(shape), SEED,
                                                  1.0, 0.0))


def case_inputs(case, kwargs):
    """The batch-2 inputs of a case, by model_fn_wan_video argument name."""
    grid = (FRAMES, HEIGHT, WIDTH)
    latent_channels = kwargs["out_dim"]
    inputs = {
        "latents": seeded_input(case, "latents", (2, latent_channels) + grid),
        "context": seeded_input(case, "context", (2, TEXT_TOKENS, kwargs["text_dim"])),
    }
    if case in ("i2v", "flf2v"):
        clip_tokens = 2 * CLIP_TOKENS if kwargs.get("has_image_pos_emb") else CLIP_TOKENS
        inputs["y"] = seeded_input(case, "y", (2, kwargs["in_dim"] - latent_channels) + grid)
        inputs["clip_feature"] = seeded_input(case, "clip_feature", (2, clip_tokens, 1280))
    if case == "vace":
        inputs["vace_context"] = seeded_input(case, "vace_context", (2, 96) + grid)
    return inputs


def run(dit, vace, dtype, inputs, timestep, case):
    dit = dit.to(dtype)
    if vace is not None:
        vace = vace.to(dtype)
    args = {k: v.to(dtype) for k, v in inputs.items()}
    extra = {}
    if case == "ti2v":
        extra["fuse_vae_embedding_in_latents"] = True
    if vace is not None:
        extra["vace_scale"] = VACE_SCALE
    with torch.no_grad():
        return model_fn_wan_video(dit=dit, vace=vace, timestep=timestep.to(dtype), **args,
                                  **extra)


def main():
    torch.set_num_threads(2)
    tensors, meta_cases = {}, {}
    if ONLY:
        from safetensors import safe_open
        with safe_open(OUT, "pt") as f:
            meta_cases = json.loads(f.metadata()["cases"])
            for name in f.keys():
                if name.split(".")[0] not in ONLY:
                    tensors[name] = f.get_tensor(name)
        meta_cases = {k: v for k, v in meta_cases.items() if k not in ONLY}
    for case, spec in CASES.items():
        if ONLY and case not in ONLY:
            continue
        kwargs = row_kwargs(spec["row"])
        kwargs.update(spec.get("kwargs", {}))
        dit = seeded(WanModel(**kwargs))
        vace, vace_kwargs = None, None
        if case == "vace":
            vace_kwargs = {"vace_layers": list(VACE_LAYERS), "vace_in_dim": 96,
                           "patch_size": kwargs["patch_size"], "has_image_input": False,
                           "dim": kwargs["dim"], "num_heads": kwargs["num_heads"],
                           "ffn_dim": kwargs["ffn_dim"], "eps": kwargs["eps"]}
            vace = seeded(VaceWanModel(**dict(vace_kwargs, vace_layers=VACE_LAYERS)))
        inputs = case_inputs(case, kwargs)
        timestep = torch.tensor(spec["timesteps"], dtype=torch.float32)
        tensors[f"{case}.timestep"] = timestep
        out = {}
        for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            for batch in (1, 2):
                first = {k: v[:batch] for k, v in inputs.items()}
                t = timestep if timestep.shape[0] == 1 else timestep[:batch]
                pred = run(dit, vace, dtype, first, t, case)
                out[(tag, batch)] = pred
                tensors[f"{case}.b{batch}.{tag}"] = pred.contiguous()
        ref = out[("f32", 2)]
        rel_bf16 = ((out[("bf16", 2)].float() - ref).norm() / ref.norm()).item()
        rel_b1 = ((out[("f32", 1)] - ref[:1]).norm() / ref[:1].norm()).item()
        print(f"{case}: out {tuple(ref.shape)}, mean |x| {ref.abs().mean().item():.4f}, "
              f"bf16 vs f32 rel L2 {rel_bf16:.2e}, b1 vs b2[0] rel L2 {rel_b1:.2e}")
        meta_cases[case] = {
            "config_row": spec["row"], "kwargs": kwargs, "vace_kwargs": vace_kwargs,
            "vace_scale": VACE_SCALE if vace is not None else None,
            "fuse_vae_embedding_in_latents": case == "ti2v",
            "inputs": {k: list(v.shape) for k, v in inputs.items()},
        }
        del dit, vace
    metadata = {
        "seed": str(SEED),
        "cases": json.dumps(meta_cases),
        "weights": "seeded_weights.tensor(name, shape, seed, bound, center); weight_range() in "
                   "tests/golden/make_wan_video_dit_golden.py",
        "inputs": "seeded_weights.tensor('input.<case>.<name>', batch-2 shape, seed, 1.0, 0.0); "
                  "batch 1 = item 0",
        "upstream": "diffsynth " + importlib.metadata.version("diffsynth"),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
