"""bench/text_encoder anchor: upstream DiffSynth-Studio's own prompt encoding, timed as
te_bench.c times ours.

Takes te_bench's arguments and prints one JSON line with the same fields, impl "upstream":
diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder with the text tower cut to
--layers decoder layers (the constructor is handed a Qwen2_5_VLConfig with fewer text layers,
as tests/golden/make_qwen_image_text_encoder_golden.py does; every layer is the same module),
only the text tower materialised, weights uniform in [-0.02, 0.02] (1-D norm weights: 1 + that),
in the given dtype on the given device; transformers' Qwen2Tokenizer loaded from --tokenizer
once, as from_pretrained does; and one QwenImageUnit_PromptEmbedder.process(pipe, prompt) per
call under torch.no_grad, torch.set_num_threads(THREADS) on the CPU. Warm-up, then the median
of --repeats calls, each timed with perf_counter around the call and a synchronize.
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
TEXT = "model.language_model."
# te_bench.c's PROMPT: 60 tokens.
PROMPT = ("A cozy reading nook by a tall window at dusk, warm lamplight on a worn leather "
          "armchair, a knitted blanket, a stack of books with gold lettering, a sleeping tabby "
          "cat, rain streaks on the glass, film grain, shallow depth of field, muted colors")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--tokenizer", default="tests/data/qwen_tokenizer")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.repeats < 1 or a.warmup < 0 or a.layers < 1:
        p.error("--repeats >= 1, --warmup >= 0, --layers >= 1")
    a.dtype = DTYPES[a.dtype]
    return a


def build(a, device):
    import transformers
    from diffsynth.models import qwen_image_text_encoder
    real_config = transformers.Qwen2_5_VLConfig

    def reduced_config(**kwargs):
        text = dict(kwargs["text_config"])
        text["num_hidden_layers"] = a.layers
        text["layer_types"] = text["layer_types"][:a.layers]
        return real_config(**dict(kwargs, num_hidden_layers=a.layers, text_config=text))

    transformers.Qwen2_5_VLConfig = reduced_config
    try:
        with torch.device("meta"):
            model = qwen_image_text_encoder.QwenImageTextEncoder()
    finally:
        transformers.Qwen2_5_VLConfig = real_config
    lm = model.model.language_model.to(a.dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0x5EED)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            p.uniform_(-0.02, 0.02, generator=gen)
            if p.ndim == 1 and "norm" in name:
                p.add_(1.0)
    # The rotary tables are non-persistent buffers, left empty by to_empty: the class's own
    # initialiser rebuilds them.
    rotary = lm.rotary_emb
    inv_freq, _ = rotary.compute_default_rope_parameters(rotary.config, device=device)
    rotary.inv_freq = inv_freq
    rotary.original_inv_freq = inv_freq.clone()
    return model.eval()


def main(argv):
    a = parse_args(argv)
    line = {"impl": "upstream", "backend": a.backend, "model": "QwenImageTextEncoder",
            "layers": a.layers, "dtype": NAMES[a.dtype], "prompt_tokens": 60,
            "threads": a.threads, "torch": torch.__version__}
    ready = set_up(a, line, ("diffsynth", "transformers"))
    if isinstance(ready, int):
        return ready
    device, sync = ready
    import transformers

    start = time.perf_counter()
    model = build(a, device)
    print(f"upstream_anchor: {a.layers} layers built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    # Imported after the build, as tests/golden/make_qwen_image_encode_prompt_golden.py does:
    # with the pipeline module imported first the meta-device build was seen to grow past 20 GB.
    from diffsynth.pipelines.qwen_image import QwenImagePipeline, QwenImageUnit_PromptEmbedder
    pipe = QwenImagePipeline(device=a.backend, torch_dtype=a.dtype)
    pipe.text_encoder = model
    pipe.tokenizer = transformers.Qwen2Tokenizer.from_pretrained(a.tokenizer)
    unit = QwenImageUnit_PromptEmbedder()

    samples, median, out = time_calls(lambda: unit.process(pipe, prompt=PROMPT), sync, a.warmup,
                                      a.repeats)
    emb = out["prompt_emb"]
    finite = bool(torch.isfinite(emb.float()).all())
    line.update(status="ok" if finite else "bad_output", encoded_tokens=emb.shape[1],
                warmup=a.warmup, repeats=a.repeats, median_ms=median * 1e3,
                min_ms=samples[0] * 1e3,
                timing="perf_counter around one PromptEmbedder.process + synchronize")
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
