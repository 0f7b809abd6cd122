"""bench/wan_text_encoder anchor: upstream DiffSynth-Studio's own Wan prompt encoding, timed as
wte_bench.c times ours.

Takes wte_bench's arguments and prints one JSON line with the same fields, impl "upstream":
diffsynth.models.wan_video_text_encoder.WanTextEncoder(vocab=--vocab, num_layers=--layers) (the
class's own arguments; full width otherwise), built on the meta device and materialised in the
given dtype on the given device, weights uniform in [-0.02, 0.02] (the T5 layer norms' weights:
1 + that); upstream's HuggingfaceTokenizer(name=--tokenizer, seq_len=512, clean='whitespace'),
as WanVideoPipeline.from_pretrained makes it, loaded once; and one
WanVideoUnit_PromptEmbedder.process(pipe, prompt, positive) per call on a WanVideoPipeline
holding both, under torch.no_grad, torch.set_num_threads(THREADS) on the CPU. Warm-up, then the
median of --repeats calls, each timed with perf_counter around the call and a synchronize.

--tokenizer here is a Hugging Face tokenizer folder (tokenizer.json): run.sh converts
tests/data/wan_tokenizer/spiece.model into one with make_hf_tokenizer.py, as upstream's
google/umt5-xxl folder ships one beside its spiece.model.
Never installs anything: run it with the private venv that has the upstream package.
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from anchor_util import set_up, time_calls  # noqa: E402  (bench/common)

DTYPES = {"f32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16}
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}
# wte_bench.c's PROMPT.
PROMPT = ("A cozy reading nook by a tall window at dusk, warm lamplight on a worn leather "
          "armchair, a knitted blanket, a stack of books with gold lettering, a sleeping tabby "
          "cat, rain streaks on the glass, film grain, shallow depth of field, muted colors")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256384)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.repeats < 1 or a.warmup < 0 or a.layers < 1 or a.vocab < 1:
        p.error("--repeats >= 1, --warmup >= 0, --layers >= 1, --vocab >= 1")
    a.dtype = DTYPES[a.dtype]
    return a


def build(a, device):
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    with torch.device("meta"):
        model = WanTextEncoder(vocab=a.vocab, num_layers=a.layers)
    model = model.to(a.dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0x5EED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(-0.02, 0.02, generator=gen)
            if p.ndim == 1 and "norm" in name:
                p.add_(1.0)
    return model.eval()


def main(argv):
    a = parse_args(argv)
    line = {"impl": "upstream", "backend": a.backend, "model": "WanTextEncoder",
            "layers": a.layers, "vocab": a.vocab, "dtype": NAMES[a.dtype], "threads": a.threads,
            "torch": torch.__version__}
    ready = set_up(a, line, ("diffsynth", "transformers"))
    if isinstance(ready, int):
        return ready
    device, sync = ready
    from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer
    from diffsynth.pipelines.wan_video import WanVideoPipeline, WanVideoUnit_PromptEmbedder

    start = time.perf_counter()
    model = build(a, device)
    print(f"upstream_anchor: {a.layers} layers built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    pipe = WanVideoPipeline(device=a.backend, torch_dtype=a.dtype)
    pipe.text_encoder = model
    pipe.tokenizer = HuggingfaceTokenizer(name=a.tokenizer, seq_len=512, clean="whitespace")
    unit = WanVideoUnit_PromptEmbedder()
    _, mask = pipe.tokenizer(PROMPT, return_mask=True, add_special_tokens=True)

    samples, median, out = time_calls(lambda: unit.process(pipe, prompt=PROMPT, positive=True),
                                      sync, a.warmup, a.repeats)
    emb = out["context"]
    finite = bool(torch.isfinite(emb.float()).all())
    line.update(status="ok" if finite else "bad_output", prompt_tokens=int(mask.sum()),
                seq_len=emb.shape[1], warmup=a.warmup, repeats=a.repeats,
                median_ms=median * 1e3, min_ms=samples[0] * 1e3,
                timing="perf_counter around one PromptEmbedder.process + synchronize")
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
