#!/usr/bin/env bash
# Builds stable-diffusion.cpp's command-line tool (sd-cli) on the CPU, outside this repository,
# for bench/sdcpp/run.py: the ggml peer of the Qwen-Image pipeline rows. Nothing fetched or built
# here is committed.
#
# usage: bench/sdcpp/build.sh SRC_DIR BUILD_DIR [JOBS]
#   SRC_DIR    a stable-diffusion.cpp tree with its ggml submodule in SRC_DIR/ggml
#   BUILD_DIR  where cmake builds (created); the tool is BUILD_DIR/bin/sd-cli
#   JOBS       parallel compile jobs (default 2)
#
# Measured with (2026-12-07): stable-diffusion.cpp 97d2990807fe6d558e395f8764198d7c7e7b411c
# (2026-08-19, "chore: format code") and the ggml commit its submodule names,
# 8e800cef2948046cc47f9db6090491c6128ca42c (submodule URL leejet/ggml; the commit is also in
# ggml-org/ggml). Exported without git history:
#   git --git-dir=SDCPP.git archive 97d2990... -- . ':(exclude)assets' | tar -x -C SRC_DIR
#   git --git-dir=GGML.git archive 8e800ce... | tar -x -C SRC_DIR/ggml
# The WebP/WebM submodules are left out (sd.cpp then builds without them: PNG output only).
#
# The Qwen2 tokenizer's merges are compiled into sd.cpp from src/tokenizers/vocab/qwen_merges.hpp,
# a generated header (hundreds of MB of hex in git, not in the snapshot this was built from). When
# it is missing this script regenerates it from tests/data/qwen_tokenizer/tokenizer.json (the same
# Qwen2 merges, "a b" per line after a "#version: 0.2" line, as sd.cpp's header holds them), and
# writes one-byte placeholders for the other models' vocabularies (Gemma, Mistral, GPT-OSS, T5,
# UMT5) that are missing too: the Qwen-Image pipeline never loads them.
#
# Flags: Release, GGML_NATIVE=ON (-march=native: on the bench machine ggml's CPU backend then
# uses AVX-512 with BF16/VNNI, the same instructions oneDNN and torch dispatch to at run time),
# no GPU backend, examples on (sd-cli), shared libs off.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "${1:?usage: build.sh SRC_DIR BUILD_DIR [JOBS]}" && pwd)
build=${2:?usage: build.sh SRC_DIR BUILD_DIR [JOBS]}
jobs=${3:-2}
[[ -f $src/CMakeLists.txt && -f $src/ggml/CMakeLists.txt ]] ||
    { echo "build.sh: $src is not a stable-diffusion.cpp tree with ggml/ in it" >&2; exit 1; }

vocab=$src/src/tokenizers/vocab
if [[ ! -s $vocab/qwen_merges.hpp ]]; then
    python3 - "$here/../../tests/data/qwen_tokenizer/tokenizer.json" "$vocab/qwen_merges.hpp" <<'PY'
import json, sys
merges = json.load(open(sys.argv[1], encoding="utf-8"))["model"]["merges"]
lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
data = ("#version: 0.2\n" + "\n".join(lines) + "\n").encode("utf-8")
with open(sys.argv[2], "w") as f:
    f.write("static const unsigned char qwen2_merges_utf8_c_str[] = {\n")
    for i in range(0, len(data), 4096):
        f.write(",".join(str(b) for b in data[i:i + 4096]) + ",\n")
    f.write("};\n")
PY
fi
for pair in gemma2_merges:gemma2_merges_utf8_c_str gemma2_vocab:gemma2_vocab_json_utf8_c_str \
            gemma_merges:gemma_merges_utf8_c_str gemma_vocab:gemma_vocab_json_utf8_c_str \
            gpt_oss_merges:gpt_oss_merges_utf8_c_str gpt_oss_vocab:gpt_oss_vocab_json_utf8_c_str \
            mistral_merges:mistral_merges_utf8_c_str mistral_vocab:mistral_vocab_json_utf8_c_str \
            t5:t5_tokenizer_json_str umt5:umt5_tokenizer_json_str; do
    file=$vocab/${pair%%:*}.hpp
    [[ -s $file ]] || echo "static const unsigned char ${pair#*:}[] = {0};" > "$file"
done

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DSD_BUILD_EXAMPLES=ON -DSD_WEBP=OFF -DSD_WEBM=OFF -DSD_BUILD_SHARED_LIBS=OFF \
    -DSD_SERVER_BUILD_FRONTEND=OFF
cmake --build "$build" --target sd-cli -j "$jobs"
echo "build.sh: $build/bin/sd-cli"
