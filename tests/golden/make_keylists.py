#!/usr/bin/env python3
"""Writes tests/data/keylists/*.json: the tensor names and shapes of real model files.

Real checkpoints are far too large to ship; their key/shape lists are enough to build
header-only safetensors files (tests/tools/ds_make_model) that identify and load exactly as the
real files do. The lists come from the hand-reconstructed reference scripts in
shared/reference/keylists/ (each verified against an upstream model_hash) and, for the
Qwen-Image block-wise ControlNets, from upstream's class definition written out below. Every
list is hashed with DiffSynth's algorithm and must equal the hash in upstream's config table
before anything is written.

Usage: make_keylists.py [--reference DIR] [--out DIR]
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The shared folder lies beside the checkout.
DEFAULT_REFERENCE = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "reference", "keylists"))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "data", "keylists"))


def qwen_image_blockwise_controlnet(num_layers=60, in_dim=64, additional_in_dim=0, dim=3072):
    """diffsynth/models/qwen_image_controlnet.py QwenImageBlockWiseControlNet, in module order:
    img_in = Linear(in_dim + additional_in_dim, dim); controlnet_blocks[i] =
    BlockWiseControlBlock(dim) = x_rms, y_rms (RMSNorm: .weight [dim]), input_proj, output_proj
    (Linear(dim, dim))."""
    sd = {}
    sd["img_in.weight"] = [dim, in_dim + additional_in_dim]
    sd["img_in.bias"] = [dim]
    for i in range(num_layers):
        p = f"controlnet_blocks.{i}."
        sd[p + "x_rms.weight"] = [dim]
        sd[p + "y_rms.weight"] = [dim]
        for n in ("input_proj", "output_proj"):
            sd[p + n + ".weight"] = [dim, dim]
            sd[p + n + ".bias"] = [dim]
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=DEFAULT_REFERENCE)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    sys.path.insert(0, args.reference)
    from hashlib_ds import h
    from qwen_dit_keys import qwen_dit
    from qwen_te_keys import qwen25vl_raw
    from qwen_vae_keys import qwen_vae
    from wan_keys import wan_native

    # (file stem, key list, upstream model_hash from diffsynth/configs/model_configs.py)
    lists = [
        ("qwen_image_dit", qwen_dit(), "0319a1cb19835fb510907dd3367c95ff"),
        ("qwen_image_dit_layered", qwen_dit(add_t=True), "8dc8cda05de16c73afa755e2c1ce2839"),
        ("qwen_image_vae", qwen_vae(), "ed4ea5824d55ec3107b09815e318123a"),
        ("qwen_image_text_encoder_raw", qwen25vl_raw(), "8004730443f55db63092006dd9f7110e"),
        ("wan2.1_t2v_1.3b", wan_native(), "9269f8db9040a9d860eaca435be61814"),
        ("qwen_image_blockwise_controlnet", qwen_image_blockwise_controlnet(),
         "073bce9cf969e317e5662cd570c3e79c"),
        ("qwen_image_blockwise_controlnet_inpaint",
         qwen_image_blockwise_controlnet(additional_in_dim=4), "a9e54e480a628f0b956a688a81c33bab"),
    ]
    failed = False
    for stem, sd, expected in lists:
        got = h(sd)
        if got != expected:
            print(f"{stem}: hash {got}, upstream has {expected}", file=sys.stderr)
            failed = True
    if failed:
        sys.exit(1)

    os.makedirs(args.out, exist_ok=True)
    for stem, sd, expected in lists:
        path = os.path.join(args.out, stem + ".json")
        with open(path, "w") as f:
            f.write("{\n")
            f.write(",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sd.items()))
            f.write("\n}\n")
        print(f"{path}: {len(sd)} tensors, hash {expected}")


if __name__ == "__main__":
    main()
