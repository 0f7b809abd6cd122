"""The anchor of bench/tokenizer: Hugging Face `tokenizers` (Rust) timed on the same prompts as
tokenizer_bench, the same way (each prompt alone; all joined by "\n" in one call; best of
REPEATS), with the same checksum of the ids.

usage: python hf_anchor.py TOKENIZER_DIR PROMPTS.json REPEATS"""
import json
import sys
import time

from tokenizers import Tokenizer


def fold(ids, acc):
    for i in ids:
        acc = (acc * 31 + i) & 0xFFFFFFFFFFFFFFFF
    return acc


def main():
    folder, prompts_path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(f"{folder}/tokenizer.json")
    load_s = time.perf_counter() - t0
    prompts = json.load(open(prompts_path, encoding="utf-8"))
    joined = "\n".join(prompts)
    best_prompts = best_whole = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encs = [tok.encode(p, add_special_tokens=False).ids for p in prompts]
        t1 = time.perf_counter()
        whole = tok.encode(joined, add_special_tokens=False).ids
        t2 = time.perf_counter()
        best_prompts = min(best_prompts, t1 - t0)
        best_whole = min(best_whole, t2 - t1)
    sum_prompts = 0
    for ids in encs:
        sum_prompts = fold(ids, sum_prompts)
    import tokenizers
    print(json.dumps({"load_s": load_s, "prompts_s": best_prompts, "whole_s": best_whole,
                      "bytes": len(joined.encode()), "ids_prompts": sum(map(len, encs)),
                      "ids_whole": len(whole), "sum_prompts": str(sum_prompts),
                      "sum_whole": str(fold(whole, 0)), "version": tokenizers.__version__}))


if __name__ == "__main__":
    main()
