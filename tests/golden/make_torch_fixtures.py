#!/usr/bin/env python3
"""Writes the PyTorch checkpoint fixtures under tests/data/torch/ with real torch.save, and
expected.json: for every file our reader must accept, what torch.load(weights_only=True)
returns after upstream's one-key unwrap rule (diffsynth/core/loader/file.py), as nested lists
of {"name", "dtype", "shape", "values"} or {"name", "dict"}. "values" are the first elements in
row-major order, read through the tensor (so strides and storage offsets are exercised).

Run with the private venv:  <venv>/bin/python tests/golden/make_torch_fixtures.py  (a private venv with torch)
"""
import collections
import io
import json
import os
import struct
import sys
import zipfile
import zlib

import warnings

import numpy as np
import torch

# out_of_bounds.pth needs a TypedStorage, which torch deprecates.
warnings.filterwarnings("ignore", message="TypedStorage is deprecated")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "torch")
FIRST_VALUES = 8

DTYPE_NAMES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
    torch.float8_e4m3fn: "f8_e4m3", torch.float8_e5m2: "f8_e5m2", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "bool",
}


def path(name):
    return os.path.join(OUT, name)


def unwrap(sd):
    """load_state_dict_from_bin's rule."""
    if len(sd) == 1:
        for key in ("state_dict", "module", "model_state"):
            if key in sd:
                return sd[key]
    return sd


def describe(d):
    entries = []
    for name, value in d.items():
        if isinstance(value, torch.Tensor):
            flat = value.reshape(-1)[:FIRST_VALUES]
            if value.dtype.is_floating_point:
                values = [float(x) for x in flat.to(torch.float64).tolist()]
            else:
                values = [int(x) for x in flat.to(torch.int64).tolist()]
            entries.append({"name": name, "dtype": DTYPE_NAMES[value.dtype],
                            "shape": list(value.shape), "values": values})
        else:
            entries.append({"name": name, "dict": describe(value)})
    return entries


def save(name, obj, **kwargs):
    torch.save(obj, path(name), **kwargs)


def rezip(src, dst, replace=None, drop=(), deflate=()):
    """Copies a torch.save archive entry by entry with Python's zipfile (no 64-byte alignment),
    replacing, dropping or deflating entries whose name ends with the given suffixes."""
    replace = replace or {}
    with zipfile.ZipFile(path(src)) as zin, zipfile.ZipFile(path(dst), "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if any(info.filename.endswith(s) for s in drop):
                continue
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            method = zipfile.ZIP_DEFLATED if any(info.filename.endswith(s) for s in deflate) \
                else zipfile.ZIP_STORED
            zout.writestr(zipfile.ZipInfo(info.filename), data, compress_type=method)


def write_zip64_forced(dst, entries):
    """A zip whose every entry carries ZIP64 extra fields (sizes and local header offset set to
    0xFFFFFFFF in both central and local headers), as writers do for files over 4 GiB; torch.load
    reads it, which the generator checks."""
    out = io.BytesIO()
    central = []
    for name, data in entries:
        name_b = name.encode()
        crc = zlib.crc32(data)
        offset = out.tell()
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034b50, 45, 0, 0, 0, 0x21, crc,
                              0xFFFFFFFF, 0xFFFFFFFF, len(name_b), len(local_extra)))
        out.write(name_b + local_extra + data)
        central_extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 45, 45, 0, 0, 0, 0x21,
                                   crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name_b), len(central_extra),
                                   0, 0, 0, 0, 0xFFFFFFFF) + name_b + central_extra)
    cd_offset = out.tell()
    for c in central:
        out.write(c)
    cd_size = out.tell() - cd_offset
    z64_offset = out.tell()
    out.write(struct.pack("<IQHHIIQQQQ", 0x06064b50, 44, 45, 45, 0, 0, len(entries),
                          len(entries), cd_size, cd_offset))
    out.write(struct.pack("<IIQI", 0x07064b50, 0, z64_offset, 1))
    out.write(struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                          0xFFFFFFFF, 0))
    with open(path(dst), "wb") as f:
        f.write(out.getvalue())


class RebuildOutOfBounds:
    """Pickles as _rebuild_tensor_v2 over a real 4-element storage but claims 100 elements."""

    def __init__(self, storage):
        self.storage = storage

    def __reduce_ex__(self, proto):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, (100,), (1,), False, collections.OrderedDict()))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    expected = {}

    def good(name, obj, weights_only=True, **kwargs):
        save(name, obj, **kwargs)
        loaded = torch.load(path(name), map_location="cpu", weights_only=weights_only)
        expected[name] = describe(unwrap(loaded))

    # Every dtype our reader maps, a 0-dim scalar, a transposed (non-contiguous) view, two
    # tensors sharing one storage at different offsets.
    base = torch.arange(12, dtype=torch.float32) * 0.5
    m = torch.randn(3, 4)
    flat = {
        "f32": torch.randn(2, 3),
        "bf16": torch.randn(2, 3).to(torch.bfloat16),
        "f16": torch.randn(5).to(torch.float16),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "i64": torch.arange(-3, 3, dtype=torch.int64),
        "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-5, 7], dtype=torch.int8),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f8_e4m3": torch.tensor([0.5, -1.5, 448.0, 0.0]).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.tensor([0.25, -3.0, 57344.0]).to(torch.float8_e5m2),
        "scalar": torch.tensor(2.5),
        "transposed": m.t(),
        "shared_a": base[2:8].view(2, 3),
        "shared_b": base[5:],
        "empty": torch.zeros(0, 3),
    }
    good("flat.pth", flat)

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    good("module_state_dict.pth", model.state_dict())
    good("parameters.pth", {"weight": torch.nn.Parameter(torch.randn(2, 3)),
                            "bias": torch.nn.Parameter(torch.randn(2), requires_grad=False)})

    inner = {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4)}
    good("wrap_state_dict.pth", {"state_dict": inner})
    good("wrap_module.pth", {"module": inner})
    good("wrap_model_state.pth", {"model_state": inner})
    good("two_keys.pth", {"state_dict": inner, "module": {"b": torch.randn(2)}})
    # facts §1.2 nested vector: md5 666bc378bfd4b7608b6d80f87109ee6e.
    good("nested.pth", {"x": {"y": torch.randn(2), "z.w": torch.randn(3, 1)},
                        "y": torch.randn(7)})
    good("int_key.pth", {"a": torch.randn(2), 5: torch.randn(3)})
    # Newer protocols: FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL. torch's weights_only
    # unpickler rejects FRAME ("Unsupported operand 149"), so these are read back unrestricted
    # (they are our own files); our reader accepts them.
    good("protocol4.pth", {"w": m.t(), "n": {"b": torch.randn(3).to(torch.bfloat16)}},
         weights_only=False, pickle_protocol=4)
    good("protocol5.pth", model.state_dict(), weights_only=False, pickle_protocol=5)

    zip64_inner = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32).view(2, 3)}, zip64_inner)
    with zipfile.ZipFile(io.BytesIO(zip64_inner.getvalue())) as z:
        entries = [(n, z.read(n)) for n in z.namelist()]
    entries = [(n.replace(n.split("/")[0], "zip64", 1), d) for n, d in entries]
    write_zip64_forced("zip64_forced.pth", entries)
    loaded = torch.load(path("zip64_forced.pth"), map_location="cpu", weights_only=True)
    expected["zip64_forced.pth"] = describe(unwrap(loaded))

    # Files upstream cannot hash, or that torch.load(weights_only=True) refuses.
    save("int_value.pth", {"a": torch.randn(2), "step": 5})
    save("list_in_nested.pth", {"a": {"b": [1, 2]}})
    save("wrapped_tensor.pth", {"state_dict": torch.randn(2)})
    save("top_list.pth", [torch.randn(2)])
    save("legacy.pth", {"a": torch.randn(2)}, _use_new_zipfile_serialization=False)
    save("numpy_value.pth", {"a": np.zeros(3, dtype=np.float32)})
    save("out_of_bounds.pth", {"bad": RebuildOutOfBounds(torch.arange(4.0).storage())})
    # data.pkl: GLOBAL os.system, ("echo pwned",), REDUCE inside an otherwise valid archive.
    evil = (b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.")
    with zipfile.ZipFile(path("malicious.pth"), "w") as z:
        z.writestr("malicious/data.pkl", evil)
        z.writestr("malicious/byteorder", b"little")
        z.writestr("malicious/version", b"3\n")
    # STACK_GLOBAL spelling of builtins.eval (protocol 4 style).
    evil4 = (b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c\x011\x94\x85\x94R\x94.")
    with zipfile.ZipFile(path("malicious_stack_global.pth"), "w") as z:
        z.writestr("evil/data.pkl", evil4)

    save("small.pth", {"w": torch.arange(4, dtype=torch.float32)})
    rezip("small.pth", "big_endian.pth", replace={"/byteorder": b"big"})
    rezip("small.pth", "deflated_storage.pth", deflate=("/data/0",))
    rezip("small.pth", "deflated_pickle.pth", deflate=("/data.pkl",))
    rezip("small.pth", "missing_storage.pth", drop=("/data/0",))
    rezip("small.pth", "short_storage.pth", replace={"/data/0": b"\0" * 8})
    expected["small.pth"] = describe(torch.load(path("small.pth"), weights_only=True))

    with open(path("expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", len(os.listdir(OUT)), "files to", OUT, "with torch", torch.__version__,
          file=sys.stderr)


if __name__ == "__main__":
    main()
