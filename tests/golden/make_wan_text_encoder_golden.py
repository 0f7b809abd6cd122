"""Golden data for Wan's text encoder: upstream DiffSynth-Studio's own WanTextEncoder and its
Wan pipeline's WanVideoUnit_PromptEmbedder.encode_prompt, on the CPU.

The model is the class at full width (dim 4096, 64 heads, FFN 10240, 32 buckets) with two of its
24 blocks and a 700-row vocabulary, through the class's own `num_layers` and `vocab` arguments:
700 is the size of the SentencePiece model in tests/data/wan_tokenizer (no UMT5 spiece.model can
be shipped), whose ids the prompts use. Built on the meta device, then every tensor assigned from
tests/golden/seeded_weights.py (the C test regenerates them): Linear weights within
1/sqrt(fan_in) (torch's default Linear init), T5 layer norm weights 1 +- 0.1, the token
embedding and the relative position tables within 1 (nn.Embedding's N(0, 1) scale).

Cases:
  forward: batch 2, 16 ids each, the second row right-padded with 0 (<pad>) and mask 0 on its
           last 5 positions; float32 and bfloat16 (weights cast, as the pipeline runs it).
  buckets: T5RelativeEmbedding._relative_position_bucket of every relative position -600..600.
  encode_prompt: the first two prompts of tests/data/wan_tokenizer/cases.json (English;
           Chinese with full-width punctuation) through PromptEmbedder.encode_prompt, with a
           tokenizer that returns the ids and mask upstream's tokenizer gives for them (recorded
           in cases.json by make_wan_tokenizer_cases.py); the context's first `length` rows are
           stored (the rest are zero, checked here), float32 and bfloat16.
Writes tests/data/golden/wan_text_encoder_2layers.safetensors.
Run with a venv that has the upstream package (/work/venv/bin/python) - never in CI.
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import seeded_weights  # noqa: E402

from diffsynth.models.wan_video_text_encoder import WanTextEncoder  # noqa: E402
from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder  # noqa: E402

SEED = 2026
NUM_LAYERS = 2
VOCAB = 700
SEQ_LEN = 512
DATA = os.path.join(HERE, "..", "data")
OUT = os.path.join(DATA, "golden", "wan_text_encoder_2layers.safetensors")


def weight_bounds(name, shape):
    """(bound, center) of a tensor."""
    if name.endswith("norm.weight") or name.endswith("norm1.weight") or \
            name.endswith("norm2.weight"):
        return 0.1, 1.0
    if name.endswith("embedding.weight"):
        return 1.0, 0.0
    return 1.0 / math.sqrt(shape[1]), 0.0


def build_model():
    with torch.device("meta"):
        model = WanTextEncoder(vocab=VOCAB, num_layers=NUM_LAYERS)
    state = {}
    for name, t in model.state_dict().items():
        bound, center = weight_bounds(name, list(t.shape))
        state[name] = torch.from_numpy(
            seeded_weights.tensor(name, list(t.shape), SEED, bound, center))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


class FakePipe:
    """What encode_prompt reads of the pipeline: the tokenizer, the device, the encoder."""

    def __init__(self, model, ids, mask):
        self.text_encoder = model
        self.device = "cpu"
        self._ids, self._mask = ids, mask

    def tokenizer(self, prompt, return_mask, add_special_tokens):
        assert return_mask and add_special_tokens
        return self._ids.clone(), self._mask.clone()


def padded(ids):
    row = torch.zeros((1, SEQ_LEN), dtype=torch.long)
    mask = torch.zeros((1, SEQ_LEN), dtype=torch.long)
    row[0, :len(ids)] = torch.tensor(ids)
    mask[0, :len(ids)] = 1
    return row, mask


def main():
    torch.set_num_threads(2)
    with open(os.path.join(DATA, "wan_tokenizer", "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(2, VOCAB, (2, 16), generator=generator)
    ids[:, 15] = 1  # </s>
    ids[1, 10] = 1
    ids[1, 11:] = 0
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 11:] = 0

    tensors = {"ids": ids, "mask": mask}
    rel = torch.arange(-600, 601)
    buckets = WanTextEncoder(vocab=1, num_layers=1).blocks[0].pos_embedding \
        ._relative_position_bucket(rel)
    tensors["buckets"] = buckets.to(torch.int32)

    model = build_model()
    unit = WanVideoUnit_PromptEmbedder()
    prompts = {"english": cases[0], "chinese": cases[1]}
    for name, case in prompts.items():
        tensors[f"prompt_{name}"] = torch.tensor(list(case["text"].encode("utf-8")),
                                                 dtype=torch.uint8)
        tensors[f"length_{name}"] = torch.tensor([case["length"]], dtype=torch.int64)
    for dtype, suffix in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        model.to(dtype)
        with torch.no_grad():
            tensors[f"hidden_{suffix}"] = model(ids, mask).contiguous()
            for name, case in prompts.items():
                row, row_mask = padded(case["ids"])
                context = unit.encode_prompt(FakePipe(model, row, row_mask), case["text"])
                n = case["length"]
                assert context.shape == (1, SEQ_LEN, 4096)
                assert torch.all(context[:, n:] == 0)
                tensors[f"context_{name}_{suffix}"] = context[:, :n].contiguous()
    metadata = {"seed": str(SEED), "num_layers": str(NUM_LAYERS), "vocab": str(VOCAB),
                "weights": "tests/golden/seeded_weights.py: Linear weights bound 1/sqrt(fan_in); "
                           "norm weights center 1 bound 0.1; embeddings (token and relative "
                           "position) bound 1",
                "upstream": "diffsynth.models.wan_video_text_encoder.WanTextEncoder(vocab=700, "
                            "num_layers=2); diffsynth.pipelines.wan_video."
                            "WanVideoUnit_PromptEmbedder.encode_prompt; torch "
                            + torch.__version__}
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, {k: tuple(v.shape) for k, v in tensors.items()})
    f, b = tensors["hidden_f32"], tensors["hidden_bf16"].float()
    print("forward f32 |mean|", f.abs().mean().item(), "bf16 vs f32 rel",
          ((b - f).norm() / f.norm()).item())


if __name__ == "__main__":
    main()
