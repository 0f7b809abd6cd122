#!/usr/bin/env python3
"""Writes core/model_configs_builtin.c from upstream's diffsynth/configs/model_configs.py.

Usage:
    git -C DiffSynth-Studio show HEAD:diffsynth/configs/model_configs.py > /tmp/mc.py
    tools/gen_model_configs.py /tmp/mc.py fed7b18fac2e > core/model_configs_builtin.c

The upstream file is plain Python literals, so it is run as-is (runpy) and MODEL_CONFIGS read
back. extra_kwargs / quant_config are kept as json.dumps(value) with Python's default
separators, which is what the client re-indents to print upstream's json.dumps(..., indent=4).

After upstream's rows come the rows diffsynthd adds (ADDED_CONFIGS), each for a file layout
upstream names but has no row for. Such a row's hash is never typed in: it is computed here, with
DiffSynth's algorithm, from a key list that tests/golden/make_keylists.py --wan took from the
library that writes that layout (for Wan2.1-T2V-1.3B-Diffusers: the diffusers package's own
WanTransformer3DModel at the config of that repo's transformer/config.json, built on the meta
device in a private venv), and its kwargs are those of upstream's row for the same model in
its native layout, so only the converter differs.
"""
import hashlib
import json
import os
import runpy
import sys

KEYLISTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                        "keylists")

# (key list, model_name, model_class, converter, upstream row whose extra_kwargs are taken)
ADDED_CONFIGS = [
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/diffusion_pytorch_model.safetensors: the
    # Diffusers-layout file upstream's integration guide cites; its converter exists upstream
    # (used there only for Video-As-Prompt).
    ("wan2.1_t2v_1.3b_diffusers.json", "wan_video_dit", "diffsynth.models.wan_video_dit.WanModel",
     "diffsynth.utils.state_dict_converters.wan_video_dit.WanVideoDiTFromDiffusers",
     "9269f8db9040a9d860eaca435be61814"),
]


def keylist_hash(path):
    """hash_state_dict_keys(with_shape=True) of a {name: shape} list (facts §1.1)."""
    with open(path) as f:
        shapes = json.load(f)
    keys = []
    for name, shape in shapes.items():
        keys.append(name + ":" + "_".join(str(d) for d in shape))
        keys.append(name)
    keys.sort()
    return hashlib.md5(",".join(keys).encode("utf-8")).hexdigest()


def added_configs(upstream):
    rows = []
    for keylist, name, cls, converter, like in ADDED_CONFIGS:
        native = [c for c in upstream if c["model_hash"] == like]
        if len(native) != 1:
            sys.exit(f"{keylist}: upstream has {len(native)} rows with hash {like}, expected 1")
        model_hash = keylist_hash(os.path.join(KEYLISTS, keylist))
        if any(c["model_hash"] == model_hash for c in upstream):
            sys.exit(f"{keylist}: hash {model_hash} is already in upstream's table")
        row = {"model_hash": model_hash, "model_name": name, "model_class": cls,
               "state_dict_converter": converter}
        if "extra_kwargs" in native[0]:
            row["extra_kwargs"] = native[0]["extra_kwargs"]
        rows.append(row)
    return rows

KEYS = ("model_hash", "model_name", "model_class", "state_dict_converter", "extra_kwargs",
        "quant_config")
REQUIRED = ("model_hash", "model_name", "model_class")


def c_string(value):
    """A C string literal. Octal escapes never swallow the next character (they stop at three
    digits), and every '?' is escaped so no trigraph can form under -std=c11."""
    out = ['"']
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append("\\%03o" % byte)
    out.append('"')
    return "".join(out)


def optional(entry, key, encode):
    return c_string(encode(entry[key])) if key in entry else "NULL"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: gen_model_configs.py MODEL_CONFIGS_PY UPSTREAM_COMMIT")
    path, commit = sys.argv[1], sys.argv[2]
    upstream = runpy.run_path(path)["MODEL_CONFIGS"]
    configs = upstream + added_configs(upstream)

    for i, entry in enumerate(configs):
        unknown = set(entry) - set(KEYS)
        missing = [k for k in REQUIRED if k not in entry]
        if unknown or missing:
            sys.exit(f"entry {i}: unknown keys {sorted(unknown)}, missing {missing}")
        for key in ("model_hash", "model_name", "model_class", "state_dict_converter"):
            if key in entry and not isinstance(entry[key], str):
                sys.exit(f"entry {i}: {key} is not a string")
        for key in ("extra_kwargs", "quant_config"):
            if key in entry and not isinstance(entry[key], dict):
                sys.exit(f"entry {i}: {key} is not a dict")
        h = entry["model_hash"]
        if len(h) != 32 or any(c not in "0123456789abcdef" for c in h):
            sys.exit(f"entry {i}: bad model_hash {h!r}")

    lines = [
        f"/* Generated by tools/gen_model_configs.py from upstream DiffSynth-Studio commit {commit}",
        " * (diffsynth/configs/model_configs.py, MODEL_CONFIGS in order), then the rows diffsynthd",
        f" * adds ({len(configs) - len(upstream)}, from index {len(upstream)} on; see the script).",
        " * Do not edit by hand: rerun the script. */",
        '#include "core/model_configs.h"',
        "",
        "const ds_model_config ds_builtin_model_configs[] = {",
    ]
    for entry in configs:
        lines.append("    {")
        lines.append(f"        .model_hash = {c_string(entry['model_hash'])},")
        lines.append(f"        .model_name = {c_string(entry['model_name'])},")
        lines.append(f"        .model_class = {c_string(entry['model_class'])},")
        lines.append(f"        .state_dict_converter = {optional(entry, 'state_dict_converter', str)},")
        lines.append(f"        .extra_kwargs_json = {optional(entry, 'extra_kwargs', json.dumps)},")
        lines.append(f"        .quant_config_json = {optional(entry, 'quant_config', json.dumps)},")
        lines.append('        .source = "builtin",')
        lines.append("    },")
    lines.append("};")
    lines.append("")
    lines.append("const size_t ds_builtin_model_config_count =")
    lines.append("    sizeof ds_builtin_model_configs / sizeof ds_builtin_model_configs[0];")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
