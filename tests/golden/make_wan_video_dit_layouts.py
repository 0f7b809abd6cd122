"""One small Wan video DiT in the two file layouts: diffusers' own WanTransformer3DModel with
seeded random weights saved as diffusers writes it (its state_dict names), and the same tensors
under DiffSynth-Studio's names as upstream's own converter (WanVideoDiTFromDiffusers) gives
them. tests/models/test_wan_video_dit_layouts.c loads each through our converters and checks
that one forward step of each is bit for bit the same.

The model: width 24 (2 heads of 12), FFN 32, 2 blocks, 4 latent channels in and out, text
width 8, frequency width 8; without the CLIP image branch (its 1280-wide projector would make
the files megabytes; its names are in the same rename table). The weights are
torch.randn(shape, generator seeded 1515) * 0.2 per tensor in state_dict order, with 1 added to
the norm scales so that they are not near zero.

Writes tests/data/golden/wan_video_dit_diffusers_layout.safetensors and
wan_video_dit_native_layout.safetensors (f32). Run with a private venv that has torch,
diffusers and diffsynth (never in CI):
    /work/venv/bin/python tests/golden/make_wan_video_dit_layouts.py
"""
import os
import sys

import torch
from diffusers import WanTransformer3DModel
from diffsynth.utils.state_dict_converters.wan_video_dit import WanVideoDiTFromDiffusers
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden")
CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12,
    "in_channels": 4, "out_channels": 4, "text_dim": 8, "freq_dim": 8, "ffn_dim": 32,
    "num_layers": 2, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
    "image_dim": None, "added_kv_proj_dim": None,
}
SEED = 1515


def main():
    model = WanTransformer3DModel(**CONFIG)
    g = torch.Generator().manual_seed(SEED)
    sd = {}
    for name, value in model.state_dict().items():
        t = torch.randn(value.shape, generator=g, dtype=torch.float32) * 0.2
        if "norm" in name and name.endswith(".weight") and t.dim() == 1:
            t = t + 1.0
        sd[name] = t.contiguous()
    native = WanVideoDiTFromDiffusers(sd)
    if len(native) != len(sd):
        sys.exit(f"the converter kept {len(native)} of {len(sd)} tensors")
    os.makedirs(OUT, exist_ok=True)
    save_file(sd, os.path.join(OUT, "wan_video_dit_diffusers_layout.safetensors"))
    save_file({k: v.clone() for k, v in native.items()},
              os.path.join(OUT, "wan_video_dit_native_layout.safetensors"))
    print(f"{len(sd)} tensors in each layout")


if __name__ == "__main__":
    main()
