#!/usr/bin/env bash
# bench/tokenizer: the Qwen2 tokenizer (tokenizers/qwen_tokenizer.c) against Hugging Face `tokenizers`
# on the same prompts in the same run: the shared and golden test prompts (English, CJK, emoji,
# numbers, whitespace runs, special tokens), each encoded alone and all joined in one call.
# Checks that both produce the same ids, prints both timings and the ratio ours / HF
# (target: <= 1.0, i.e. at least as fast). HF runs single-threaded per call, as we do.
#
# usage: bench/tokenizer/run.sh [PYTHON_WITH_TOKENIZERS] [REPEATS] [COPIES]
# The Python needs `pip install tokenizers` (a private venv; never installed by CI). COPIES
# repeats the prompt list to make the joined text longer (default 4, about 40 KB).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
repeats=${2:-20}
copies=${3:-4}
build=${DS_BUILD_DIR:-build-release}
bench/build_release.sh "$build" bench/tokenizer_bench
data=tests/data/qwen_tokenizer

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" - "$data" "$copies" "$work/prompts.json" <<'PY'
import json, sys
data, copies, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
texts = [c["text"] for c in json.load(open(f"{data}/cases.json", encoding="utf-8"))]
texts += [c["text"] for c in json.load(open(f"{data}/extra_cases.json", encoding="utf-8"))
          if c["text"]]
json.dump(texts * copies, open(out, "w", encoding="utf-8"), ensure_ascii=False)
PY

export RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
ours=$("$build/bench/tokenizer_bench" "$data" "$work/prompts.json" "$repeats")
hf=$("$python" bench/tokenizer/hf_anchor.py "$data" "$work/prompts.json" "$repeats")

"$python" - "$ours" "$hf" <<'PY'
import json, sys
ours, hf = (json.loads(a) for a in sys.argv[1:3])
for k in ("ids_prompts", "ids_whole", "sum_prompts", "sum_whole"):
    assert ours[k] == hf[k], f"ids differ from HF: {k}: ours {ours[k]}, HF {hf[k]}"
print(f"Qwen2 tokenizer, {ours['bytes']} bytes of prompts, {ours['ids_whole']} tokens "
      f"(ids identical to HF tokenizers {hf['version']})")
for key, what in (("prompts_s", "each prompt alone"), ("whole_s", "all joined, one call")):
    print(f"  {what:22s} ours {ours[key]*1e3:8.3f} ms   HF {hf[key]*1e3:8.3f} ms   "
          f"ratio {ours[key]/hf[key]:.2f}  ({ours['bytes']/ours[key]/1e6:.1f} MB/s vs "
          f"{hf['bytes']/hf[key]/1e6:.1f} MB/s)")
print(f"  load tokenizer.json    ours {ours['load_s']*1e3:8.1f} ms   HF {hf['load_s']*1e3:8.1f} ms")
print("  target: ratio <= 1.0")
PY
