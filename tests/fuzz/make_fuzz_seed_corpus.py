#!/usr/bin/env python3
"""Writes the seed corpora of fuzz_tokenizer, fuzz_png, fuzz_model_configs and
fuzz_vram_config: small valid inputs of each shape the parsers accept, plus a few near misses.
PNG files are written here with zlib (independent of libspng, the decoder under test).

Usage: tests/fuzz/make_fuzz_seed_corpus.py   (standard library only; run from anywhere)
"""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# --- fuzz_tokenizer: first byte even = encode the rest, odd = decode int32 ids ---------------
TEXTS = {
    "ascii": "A cat sitting on a red chair, 4k, photo.",
    "chinese": "一只猫坐在红色的椅子上，高清照片。",
    "special": "<|im_start|>system\nDescribe the image.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
    "numbers": "1234567890 3.14159 2026-12-07",
    "whitespace": "  two  spaces\t\ttabs\r\n\n\nnewlines   ",
    "emoji_nfc": "caf\u0065\u0301 \u00e9 \U0001F600\U0001F431 \u212b",
    "contractions": "it's I'LL we've they'd don't",
    "unfinished_special": "<|im_start|<|im_end|><|vision_start|>",
}
for name, text in TEXTS.items():
    write("fuzz_tokenizer", "encode_" + name, b"\x00" + text.encode())
write("fuzz_tokenizer", "encode_invalid_utf8", b"\x00ab\xc3(\xff\xfe")
write("fuzz_tokenizer", "decode_ids", b"\x01" + struct.pack("<6i", 32, 4616, 151644, 151645, 0, 271))
write("fuzz_tokenizer", "decode_out_of_range", b"\x01" + struct.pack("<3i", 5, -1, 151669))
write("fuzz_tokenizer", "decode_partial_utf8", b"\x01" + struct.pack("<2i", 127, 128))


# --- fuzz_png ----------------------------------------------------------------------------------
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width, height, bit_depth, color_type, rows, extra=b"", interlace=0):
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    raw = b"".join(b"\x00" + r for r in rows)  # filter type 0 (None) on every row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def pixels(width, height, channels, depth_bytes=1):
    return [bytes((x * 37 + y * 11 + c * 5) & 0xFF for x in range(width)
                  for c in range(channels * depth_bytes)) for y in range(height)]


write("fuzz_png", "rgb8.png", png(5, 3, 8, 2, pixels(5, 3, 3)))
write("fuzz_png", "rgba8.png", png(4, 4, 8, 6, pixels(4, 4, 4)))
write("fuzz_png", "gray8.png", png(7, 2, 8, 0, pixels(7, 2, 1)))
write("fuzz_png", "gray_alpha16.png", png(3, 3, 16, 4, pixels(3, 3, 2, 2)))
write("fuzz_png", "rgb16.png", png(2, 5, 16, 2, pixels(2, 5, 3, 2)))
write("fuzz_png", "gray1.png", png(9, 2, 1, 0, [b"\xa5\x80", b"\x3c\x00"]))
write("fuzz_png", "palette4.png",
      png(4, 2, 4, 3, [b"\x01\x23", b"\x32\x10"],
          extra=chunk(b"PLTE", bytes(range(12))) + chunk(b"tRNS", b"\x00\x80")))
write("fuzz_png", "text_chunk.png",
      png(1, 1, 8, 2, [b"\x10\x20\x30"], extra=chunk(b"tEXt", b"Comment\x00seed")))
write("fuzz_png", "adam7.png",
      (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 1)) +
       chunk(b"IDAT", zlib.compress(b"".join(
           b"\x00" + bytes(3 * w) for w, h in
           ((1, 1), (1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (8, 4)) for _ in range(h)))) +
       chunk(b"IEND", b"")))
write("fuzz_png", "bad_crc.png", png(2, 2, 8, 2, pixels(2, 2, 3))[:-5] + b"\x00\x00\x00\x00\x00")
# A header claiming 768 MiB of pixels in a file of a few hundred bytes: it was allocated (and
# took seconds) before the decoder found the data missing.
write("fuzz_png", "size_bomb_16384_square.png",
      b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16384, 16384, 8, 2, 0, 0, 0)) +
      chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))

# --- fuzz_model_configs ------------------------------------------------------------------------
M = "diffsynth.models."
write("fuzz_model_configs", "one_entry.json", json.dumps([{
    "model_hash": "0319a1cb19835fb510907dd3367c95ff", "model_name": "qwen_image_dit",
    "model_class": M + "qwen_image_dit.QwenImageDiT"}]))
write("fuzz_model_configs", "full_entry.json", json.dumps([{
    "model_hash": "8004730443f55db63092006dd9f7110e", "model_name": "qwen_image_text_encoder",
    "model_class": M + "qwen_image_text_encoder.QwenImageTextEncoder",
    "state_dict_converter": "diffsynth.utils.state_dict_converters.qwen_image_text_encoder."
                            "QwenImageTextEncoderStateDictConverter",
    "extra_kwargs": {"additional_in_dim": 4, "nested": {"a": [1, 2.5, None, True]}},
    "quant_config": {"bits": 8}}], indent=1))
write("fuzz_model_configs", "two_entries.json", json.dumps([
    {"model_hash": "a" * 32, "model_name": "x", "model_class": M + "x.X"},
    {"model_hash": "b" * 32, "model_name": "y", "model_class": M + "y.Y", "extra_kwargs": {}}]))
write("fuzz_model_configs", "empty.json", "[]")
write("fuzz_model_configs", "bad_hash.json",
      '[{"model_hash": "XYZ", "model_name": "x", "model_class": "c"}]')
write("fuzz_model_configs", "unknown_key.json",
      '[{"model_hash": "' + "c" * 32 + '", "model_name": "x", "model_class": "c", "z": 1}]')
write("fuzz_model_configs", "duplicate_key.json",
      '[{"model_hash": "' + "d" * 32 + '", "model_hash": "' + "e" * 32 + '"}]')
write("fuzz_model_configs", "escapes.json",
      '[{"model_hash": "' + "f" * 32 + '", "model_name": "\\u00e9\\ud83d\\ude00\\u0000",'
      ' "model_class": "\\"q\\""}]')

# --- fuzz_vram_config --------------------------------------------------------------------------
VRAM = {
    "managed_fp8.json": {"offload_dtype": "float8_e4m3fn", "offload_device": "cpu",
                         "onload_dtype": "float8_e4m3fn", "onload_device": "cpu",
                         "preparing_dtype": "float8_e4m3fn", "preparing_device": "cuda",
                         "computation_dtype": "bfloat16", "computation_device": "cuda"},
    "disk_offload.json": {"offload_dtype": "disk", "offload_device": "disk",
                          "onload_dtype": "torch.bfloat16", "onload_device": "cpu",
                          "computation_device": "cuda:0"},
    "short_names.json": {"offload_dtype": "fp16", "offload_device": "cpu",
                         "preparing_dtype": "bf16", "computation_dtype": "fp32"},
    "nulls.json": {"offload_dtype": None, "onload_device": None},
    "unknown_field.json": {"offload_dtype": "bf16", "vram_limit": 3},
    "wrong_type.json": {"offload_dtype": 16},
    "disk_computation.json": {"computation_dtype": "disk", "computation_device": "disk"},
}
for name, cfg in VRAM.items():
    write("fuzz_vram_config", name, json.dumps(cfg))
write("fuzz_vram_config", "empty_object.json", "{}")
write("fuzz_vram_config", "not_object.json", '["cpu"]')
