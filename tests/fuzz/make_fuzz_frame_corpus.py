#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_frame: byte streams of framed Envelopes, encoded by protoc
(the reference protobuf encoder) from text format. Each file's first byte is the chunk size
the target feeds the decoder with (value + 1 bytes per feed).

Usage: tests/fuzz/make_fuzz_frame_corpus.py  (needs protoc; run from anywhere)
"""
import os
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "proto")
OUT = os.path.join(HERE, "corpus", "fuzz_frame")


def encode(text):
    return subprocess.run(
        ["protoc", "--proto_path=" + PROTO_DIR, "--encode=diffsynth.v1.Envelope", "diffsynth.proto"],
        input=text.encode(), capture_output=True, check=True).stdout


def frame(body):
    return struct.pack("<I", len(body)) + body


REQUESTS = {
    "status": 'request_id: 1 status {}',
    "list_models": 'request_id: 2 list_models {}',
    "identify": 'request_id: 3 identify { paths: "/models/a.safetensors" }',
    "load_shards": 'request_id: 4 load { paths: "/m/model-00001-of-00002.safetensors" '
                   'paths: "/m/model-00002-of-00002.safetensors" client_name: "web-ui" }',
    "load_relative": 'request_id: 5 load { paths: "models/a.safetensors" }',
    "unload": 'request_id: 6 unload { model_id: "m1" all_references: true }',
    "cancel": 'request_id: 7 cancel { target_request_id: 4 }',
    "list_configs": 'request_id: 8 list_configs { verify: true }',
    "response_body": 'request_id: 9 load_result { model_hash: "073bce9cf969e317e5662cd570c3e79c" }',
    "error_body": 'request_id: 10 error { code: NOT_FOUND message: "x" }',
    "no_body": 'request_id: 11',
}


def main():
    os.makedirs(OUT, exist_ok=True)
    frames = {name: frame(encode(text)) for name, text in REQUESTS.items()}
    seeds = {}
    for name, data in frames.items():
        seeds[name] = bytes([255]) + data
    seeds["all_in_one_stream"] = bytes([255]) + b"".join(frames.values())
    seeds["byte_by_byte"] = bytes([0]) + frames["load_shards"] + frames["status"]
    seeds["chunks_of_3"] = bytes([2]) + b"".join(frames.values())
    seeds["zero_length"] = bytes([255]) + struct.pack("<I", 0) + frames["status"]
    seeds["oversize"] = bytes([255]) + struct.pack("<I", 4097) + b"\x08\x01"
    seeds["at_cap"] = bytes([255]) + struct.pack("<I", 4096) + b"\x00" * 4096
    seeds["garbage"] = bytes([255]) + frame(b"\x0f\x01\xff\xff") + frames["status"]
    seeds["truncated"] = bytes([255]) + frames["identify"][:-3]
    for name, data in seeds.items():
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
