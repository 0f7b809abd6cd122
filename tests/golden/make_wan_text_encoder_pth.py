"""A real torch.save checkpoint of Wan's text encoder, as upstream ships
models_t5_umt5-xxl-enc-bf16.pth (a bf16 state dict with the class's own key names, no
converter), small enough to ship, and upstream's output on it.

The model is the class with its own constructor arguments reduced: WanTextEncoder(vocab=32,
dim=64, dim_attn=64, dim_ffn=160, num_heads=4, num_layers=2) (32 buckets as Wan's), weights
from tests/golden/seeded_weights.py with the bounds of make_wan_text_encoder_golden.py, cast to
bf16 and saved with torch.save as upstream's file is.

Writes tests/data/torch/wan_text_encoder_small.pth and
tests/data/golden/wan_text_encoder_pth.safetensors (ids, mask and upstream's bf16 output).
Run with /work/venv/bin/python - never in CI.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import seeded_weights  # noqa: E402

from diffsynth.models.wan_video_text_encoder import WanTextEncoder  # noqa: E402

SEED = 2027
KWARGS = dict(vocab=32, dim=64, dim_attn=64, dim_ffn=160, num_heads=4, num_layers=2)
DATA = os.path.join(HERE, "..", "data")
PTH = os.path.join(DATA, "torch", "wan_text_encoder_small.pth")
OUT = os.path.join(DATA, "golden", "wan_text_encoder_pth.safetensors")


def tensor(name, shape):
    if name.endswith("norm.weight") or name.endswith("norm1.weight") or \
            name.endswith("norm2.weight"):
        return torch.from_numpy(seeded_weights.tensor(name, shape, SEED, 0.1, 1.0))
    if name.endswith("embedding.weight"):
        return torch.from_numpy(seeded_weights.tensor(name, shape, SEED, 1.0))
    return torch.from_numpy(seeded_weights.tensor(name, shape, SEED, 1.0 / math.sqrt(shape[1])))


def main():
    torch.set_num_threads(2)
    with torch.device("meta"):
        model = WanTextEncoder(**KWARGS)
    state = {name: tensor(name, list(t.shape)).to(torch.bfloat16)
             for name, t in model.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()

    torch.save(state, PTH)
    loaded = torch.load(PTH, weights_only=True)
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    ids = torch.tensor([[5, 3, 9, 31, 2, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        hidden = model(ids, mask)
    save_file({"ids": ids, "mask": mask, "hidden_bf16": hidden.contiguous()}, OUT,
              metadata={"checkpoint": "tests/data/torch/wan_text_encoder_small.pth",
                        "upstream": "diffsynth.models.wan_video_text_encoder.WanTextEncoder("
                                    + repr(KWARGS) + ") in bfloat16; torch "
                                    + torch.__version__})
    print(PTH, os.path.getsize(PTH), OUT, tuple(hidden.shape))


if __name__ == "__main__":
    main()
