#!/usr/bin/env python3
"""Writes tests/data/keylists/*.json: the tensor names and shapes of real model files.

Real checkpoints are far too large to ship; their key/shape lists are enough to build
header-only safetensors files (tests/tools/ds_make_model) that identify and load exactly as the
real files do. The Qwen-Image lists come from the hand-reconstructed reference scripts in
shared/reference/keylists/ (each verified against an upstream model_hash) and, for the
block-wise ControlNets, from upstream's class definition written out below. The Wan lists are
taken from the classes themselves (--wan, needs torch, diffsynth and diffusers; see wan_lists):
the DiTs, VACE sets, the UMT5 text encoder and both video VAEs.
Every list is hashed with DiffSynth's algorithm and must equal the hash in upstream's config
table before anything is written.

Usage: make_keylists.py [--reference DIR] [--out DIR] [--wan]
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


# Diffusers' own config for Wan2.1-T2V-1.3B (transformer/config.json of
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers, as diffusers' scripts/convert_wan_to_diffusers.py writes it
# for "Wan-T2V-1.3B"); every other argument keeps the class default.
WAN_1_3B_DIFFUSERS_CONFIG = {
    "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06,
    "ffn_dim": 8960, "freq_dim": 256, "in_channels": 16, "num_attention_heads": 12,
    "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads", "text_dim": 4096,
}
# Not in upstream's table (upstream has no Diffusers-layout 1.3B row); it is what the key set
# above hashes to, and tools/gen_model_configs.py adds a row with it.
WAN_1_3B_DIFFUSERS_HASH = "b0a133b5687c7d054175e5bfa66ef5fd"
# The Wan checkpoints were written by diffusers' ModelMixin.save_pretrained in f32, whose
# default max_shard_size is 10GB: that gives the real repos' shard counts (14B: 6, VACE-14B: 7,
# TI2V-5B: 3, 1.3B and VACE-1.3B: one file). The boundaries are huggingface_hub's greedy split
# in module order, which is how save_pretrained cuts; they are not checked against the real
# index files.
WAN_SHARD_SIZE = "10GB"


def wan_lists(h):
    """[(stem, [(shard file name, {name: shape})], upstream hash)] for the Wan files, from
    upstream's WanModel / VaceWanModel with the kwargs of upstream's own config rows and from
    diffusers' WanTransformer3DModel, built on the meta device (no memory, no weights)."""
    import torch
    from diffusers import WanTransformer3DModel
    from diffsynth.configs.model_configs import MODEL_CONFIGS
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import WanVideoVAE, WanVideoVAE38
    from diffsynth.models.wan_video_vace import VaceWanModel
    from diffsynth.utils.state_dict_converters.wan_video_dit import (
        WanVideoDiTFromDiffusers, WanVideoDiTStateDictConverter)
    from diffsynth.utils.state_dict_converters.wan_video_vace import VaceWanModelDictConverter
    from huggingface_hub import split_torch_state_dict_into_shards

    def rows(model_hash):
        found = [c for c in MODEL_CONFIGS if c["model_hash"] == model_hash]
        if not found:
            sys.exit(f"upstream's table has no row {model_hash}")
        return found

    def shapes(sd):
        return {k: list(v.shape) for k, v in sd.items()}

    def shard(stem, sd):
        split = split_torch_state_dict_into_shards(
            sd, max_shard_size=WAN_SHARD_SIZE, filename_pattern=stem + "{suffix}.safetensors")
        if not split.is_sharded:
            return [(stem + ".safetensors", shapes(sd))]
        return [(name, {k: list(sd[k].shape) for k in keys})
                for name, keys in sorted(split.filename_to_tensors.items())]

    def check(what, sd, expected):
        got = h(shapes(sd))
        if got != expected:
            sys.exit(f"{what}: hash {got}, expected {expected}")

    out = []
    with torch.device("meta"):
        # One DiT file each: the config row has no converter, so the class's tree is the file.
        for stem, model_hash in (("wan2.1_t2v_1.3b", "9269f8db9040a9d860eaca435be61814"),
                                 ("wan2.1_t2v_14b", "aafcfd9672c3a2456dc46e1cb6e52c70"),
                                 ("wan2.2_ti2v_5b", "1f5ab7703c6fc803fdded85ff040c316")):
            sd = WanModel(**rows(model_hash)[0]["extra_kwargs"]).state_dict()
            out.append((stem, shard("diffusion_pytorch_model", sd), model_hash))

        # A VACE file set holds the base DiT and the VACE branch; each row's converter must
        # pick out exactly its class's tree. The 1.3B branch's row has no kwargs (class
        # defaults).
        for stem, vace_hash in (("wan2.1_vace_14b", "7a513e1f257a861512b1afd387a8ecd9"),
                                ("wan2.1_vace_1.3b", "a61453409b67cd3246cf0c3bebad47ba")):
            dit_row, vace_row = rows(vace_hash)
            dit = WanModel(**dit_row["extra_kwargs"]).state_dict()
            vace = VaceWanModel(**vace_row.get("extra_kwargs", {})).state_dict()
            both = dict(dit)
            both.update(vace)
            check(stem + " DiT part", WanVideoDiTStateDictConverter(both), h(shapes(dit)))
            check(stem + " VACE part", VaceWanModelDictConverter(both), h(shapes(vace)))
            out.append((stem, shard("diffusion_pytorch_model", both), vace_hash))

        # The text encoder and the VAEs ship as .pth files whose keys are the class's own (the
        # VAE converter adds "model." on load); the same names and shapes in a safetensors file
        # hash the same.
        out.append(("wan2.1_text_encoder", [("text_encoder.safetensors",
                                             shapes(WanTextEncoder().state_dict()))],
                    "9c8818c2cbea55eca56c7b447df170da"))
        for stem, vae, model_hash in (("wan2.1_vae", WanVideoVAE, "ccc42284ea13e1ad04693284c7a09be6"),
                                      ("wan2.2_vae", WanVideoVAE38, "e1de6c02cdac79f8b739f4d3698cd216")):
            out.append((stem, [("vae.safetensors", shapes(vae().model.state_dict()))], model_hash))

        diffusers = WanTransformer3DModel.from_config(WAN_1_3B_DIFFUSERS_CONFIG).state_dict()
        check("Diffusers 1.3B converted", WanVideoDiTFromDiffusers(diffusers),
              "9269f8db9040a9d860eaca435be61814")
        out.append(("wan2.1_t2v_1.3b_diffusers", shard("diffusion_pytorch_model", diffusers),
                    WAN_1_3B_DIFFUSERS_HASH))
    return out


def write_list(path, sd):
    with open(path, "w") as f:
        f.write("{\n")
        f.write(",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sd.items()))
        f.write("\n}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=DEFAULT_REFERENCE)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--wan", action="store_true",
                    help="also write the Wan lists from the upstream and diffusers packages")
    args = ap.parse_args()

    sys.path.insert(0, args.reference)
    from hashlib_ds import h
    from qwen_dit_keys import qwen_dit
    from qwen_te_keys import qwen25vl_raw
    from qwen_vae_keys import qwen_vae

    # (file stem, key list, upstream model_hash from diffsynth/configs/model_configs.py)
    lists = [
        ("qwen_image_dit", qwen_dit(), "0319a1cb19835fb510907dd3367c95ff"),
        ("qwen_image_dit_layered", qwen_dit(add_t=True), "8dc8cda05de16c73afa755e2c1ce2839"),
        ("qwen_image_vae", qwen_vae(), "ed4ea5824d55ec3107b09815e318123a"),
        ("qwen_image_text_encoder_raw", qwen25vl_raw(), "8004730443f55db63092006dd9f7110e"),
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
        write_list(path, sd)
        print(f"{path}: {len(sd)} tensors, hash {expected}")

    if not args.wan:
        return
    # A sharded set is written one list per shard, named as the shard with .json for
    # .safetensors, so tests rebuild the same file set.
    for stem, shards, expected in wan_lists(h):
        merged = {}
        for _, sd in shards:
            merged.update(sd)
        got = h(merged)
        if got != expected:
            sys.exit(f"{stem}: hash {got}, expected {expected}")
        for name, sd in shards:
            suffix = ""
            if name.startswith("diffusion_pytorch_model"):
                suffix = name[len("diffusion_pytorch_model"):-len(".safetensors")]
            path = os.path.join(args.out, stem + suffix + ".json")
            write_list(path, sd)
            print(f"{path}: {len(sd)} tensors")
        print(f"{stem}: {len(merged)} tensors in {len(shards)} file(s), hash {expected}")


if __name__ == "__main__":
    main()
