"""Golden data for Qwen-Image prompt encoding: upstream DiffSynth-Studio's own
QwenImageUnit_PromptEmbedder.process (encode_prompt: the system/user template, the tokenizer
call, hidden_states[-1], the mask split, the 34-token drop, the re-padding and the cast to the
pipeline dtype) on the reduced text encoder of make_qwen_image_text_encoder_golden.py (2 decoder
layers at full width, seeded weights), with the real tokenizer files of
tests/data/qwen_tokenizer/ loaded as upstream loads them (transformers' Qwen2Tokenizer).

Prompts: "short" (a few words), "long" (60 prompt tokens, the benchmark's prompt) and "cjk"
(Chinese with Latin words and punctuation). Each runs with a float32 pipeline and a bfloat16 one
(text encoder weights cast to bf16, as the pipeline loads them).

Writes tests/data/golden/qwen_image_encode_prompt_2layers.safetensors:
  prompt_<case>        u8 [n]        the prompt's UTF-8 bytes
  input_ids_<case>     i64 [1, S]    the templated prompt's tokens (what the encoder saw)
  prompt_emb_<case>_<dtype>  [1, L, 3584] f32 / bf16, L = S - 34
  prompt_emb_mask_<case>     i64 [1, L]
Run with a private venv that has the upstream package (pip install diffsynth) — never in CI.
"""
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_qwen_image_text_encoder_golden as te_golden  # noqa: E402
import numpy as np  # noqa: E402
import seeded_weights  # noqa: E402


TOKENIZER = os.path.join(HERE, "..", "data", "qwen_tokenizer")
OUT = os.path.join(HERE, "..", "data", "golden", "qwen_image_encode_prompt_2layers.safetensors")
TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
            "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")

PROMPTS = {
    "short": "A red fox in the snow",
    # 60 tokens: also bench/text_encoder's prompt.
    "long": ("A cozy reading nook by a tall window at dusk, warm lamplight on a worn leather "
             "armchair, a knitted blanket, a stack of books with gold lettering, a sleeping "
             "tabby cat, rain streaks on the glass, film grain, shallow depth of field, "
             "muted colors"),
    "cjk": "一只橘猫坐在窗台上，窗外是东京的夜景，霓虹灯牌写着「営業中」, cinematic lighting.",
}


def seeded_rows(name, shape, seed, bound, center, rows):
    """seeded_weights.tensor's values for these rows of a 2-D tensor, every other row zero.
    Each value depends only on its flat index (seeded_weights.uniform), so the rows are exactly
    those of the full tensor; np.zeros leaves the untouched rows unallocated. The embedding's
    rows of tokens no prompt uses never reach the output, and the full table's 2 GB plus its
    temporaries is enough to run a shared machine out of memory."""
    out = np.zeros(shape, dtype=np.float32)
    base = (seeded_weights.fnv1a64(name) ^ ((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)) \
        & 0xFFFFFFFFFFFFFFFF
    width = shape[1]
    for r in sorted(rows):
        with np.errstate(over="ignore"):
            idx = np.uint64(base) + np.arange(r * width, (r + 1) * width, dtype=np.uint64)
        u = (seeded_weights.splitmix64(idx) >> np.uint64(40)).astype(np.float32) \
            * np.float32(1.0 / (1 << 24))
        out[r] = (np.float32(2.0) * u - np.float32(1.0)) * np.float32(bound) + np.float32(center)
    return out


def main():
    torch.set_num_threads(2)
    tokenizer = transformers.Qwen2Tokenizer.from_pretrained(TOKENIZER)
    ids = {case: tokenizer([TEMPLATE.format(p)], return_tensors="pt").input_ids
           for case, p in PROMPTS.items()}
    used = sorted({int(t) for v in ids.values() for t in v.flatten()})
    full = seeded_weights.tensor

    def tensor(name, shape, seed, bound, center=0.0):
        if name.endswith("embed_tokens.weight"):
            return seeded_rows(name, shape, seed, bound, center, used)
        return full(name, shape, seed, bound, center)

    probe = seeded_rows("probe", [8, 16], te_golden.SEED, 1.0, 0.0, [3])
    assert np.array_equal(probe[3], full("probe", [8, 16], te_golden.SEED, 1.0)[3])
    seeded_weights.tensor = tensor
    model, _ = te_golden.build_model()
    print("model built", flush=True)
    # Imported after the model is built: with the pipeline module imported first, the build was
    # seen to grow past 20 GB (meta-device construction no longer stays on meta).
    from diffsynth.pipelines.qwen_image import QwenImagePipeline, QwenImageUnit_PromptEmbedder
    unit = QwenImageUnit_PromptEmbedder()
    tensors = {}
    for case, prompt in PROMPTS.items():
        tensors[f"prompt_{case}"] = torch.frombuffer(bytearray(prompt.encode("utf-8")),
                                                     dtype=torch.uint8).clone()
        tensors[f"input_ids_{case}"] = ids[case].contiguous()
        print(case, "kept tokens (L)", ids[case].shape[1] - 34)
    for dtype, suffix in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        model.model.language_model.to(dtype)
        pipe = QwenImagePipeline(device="cpu", torch_dtype=dtype)
        pipe.text_encoder = model
        pipe.tokenizer = tokenizer
        for case, prompt in PROMPTS.items():
            with torch.no_grad():
                out = unit.process(pipe, prompt=prompt)
            emb, mask = out["prompt_emb"], out["prompt_emb_mask"]
            assert emb.dtype == dtype and emb.shape[1] == tensors[f"input_ids_{case}"].shape[1] - 34
            tensors[f"prompt_emb_{case}_{suffix}"] = emb.contiguous()
            tensors[f"prompt_emb_mask_{case}"] = mask.contiguous()
    metadata = {"seed": str(te_golden.SEED), "num_layers": str(te_golden.NUM_LAYERS),
                "upstream": "diffsynth.pipelines.qwen_image.QwenImageUnit_PromptEmbedder, "
                            "transformers " + transformers.__version__}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, {k: (tuple(v.shape), str(v.dtype)) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
