"""Writes tests/data/upstream_hashes.json: upstream DiffSynth-Studio's own hash_model_file over
every fixture file that upstream can read (torch checkpoints and safetensors under tests/data),
so tests/unit/test_upstream_hashes.c compares our hash with upstream's numbers, not ours.

Run with a Python that has the upstream package (a private venv: pip install diffsynth torch
safetensors); never in CI. Files upstream rejects are recorded with the exception's type.
"""
import glob
import json
import os

import hashlib

import torch
from diffsynth.core.loader.file import (convert_keys_dict_to_single_str,
                                        convert_state_dict_to_keys_dict, hash_model_file)

# Valid torch.save output that torch's weights_only unpickler refuses (pickle protocols 4 and
# 5). We read them; their expected hash is upstream's hash function over what a full
# torch.load returns (our own fixtures, so the unrestricted load is safe here).
READ_BEYOND_UPSTREAM = {"torch/protocol4.pth", "torch/protocol5.pth"}

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
paths = sorted(glob.glob(os.path.join(root, "torch", "*.pth")) +
               glob.glob(os.path.join(root, "safetensors", "*.safetensors")))
result = {}
for path in paths:
    rel = os.path.relpath(path, root)
    try:
        result[rel] = {"model_hash": hash_model_file(path)}
    except Exception as exc:  # upstream's own failure is part of the record
        result[rel] = {"error": type(exc).__name__}
        if rel in READ_BEYOND_UPSTREAM:
            keys = convert_state_dict_to_keys_dict(torch.load(path, weights_only=False))
            text = convert_keys_dict_to_single_str(keys).encode("utf-8")
            result[rel]["content_model_hash"] = hashlib.md5(text).hexdigest()
with open(os.path.join(root, "upstream_hashes.json"), "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
    f.write("\n")
print(f"{len(result)} files")
