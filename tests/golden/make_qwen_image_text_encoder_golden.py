"""Golden data for the Qwen-Image text encoder: upstream DiffSynth-Studio's own
QwenImageTextEncoder (transformers' Qwen2_5_VLModel inside), called as the pipeline's
encode_prompt calls it — text_encoder(input_ids=, attention_mask=, output_hidden_states=True)[-1],
the hidden states after the final RMSNorm — on the CPU.

The class's constructor takes no arguments and fixes the whole Qwen2.5-VL-7B config, so the
width cannot shrink. The depth is cut to NUM_LAYERS by handing the constructor a config with
fewer text layers (the one deviation from upstream's class; every layer is the same module).
The model is built on the meta device and only the text tower is materialised: the vision
tower and lm_head are not used on the text path and would cost 5 GB.

Weights come from tests/golden/seeded_weights.py (the C test regenerates them): Linear weights
and biases uniform within 1/sqrt(fan_in) (torch's default Linear init), RMSNorm weights 1 +- 0.1,
the token embedding uniform within 1 (torch's nn.Embedding draws N(0, 1); a unit bound keeps the
same scale).

Cases: "single" (batch 1, 11 tokens, mask all ones as the tokenizer gives it) and "padded"
(batch 2, 13 tokens, the second row right-padded with 4 <|endoftext|> tokens and mask 0 there,
as the tokenizer pads). Each runs in float32 and in bfloat16 (weights cast to bf16, as the
pipeline runs it). Writes tests/data/golden/qwen_image_text_encoder_2layers.safetensors.
Run with a private venv that has the upstream package (pip install diffsynth) — never in CI.
"""
import math
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seeded_weights  # noqa: E402

from diffsynth.models import qwen_image_text_encoder  # noqa: E402

SEED = 2025
NUM_LAYERS = 2
PAD_ID = 151643  # <|endoftext|>, Qwen2's pad token
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "qwen_image_text_encoder_2layers.safetensors")
TEXT = "model.language_model."


def weight_bounds(name, shapes):
    """(bound, center) of a text-tower tensor."""
    if name.endswith("norm.weight"):
        return 0.1, 1.0
    if name.endswith("embed_tokens.weight"):
        return 1.0, 0.0
    if name.endswith(".bias"):
        return 1.0 / math.sqrt(shapes[name[: -len("bias")] + "weight"][1]), 0.0
    return 1.0 / math.sqrt(shapes[name][1]), 0.0


def build_model():
    real_config = transformers.Qwen2_5_VLConfig

    def reduced_config(**kwargs):
        text = dict(kwargs["text_config"])
        text["num_hidden_layers"] = NUM_LAYERS
        text["layer_types"] = text["layer_types"][:NUM_LAYERS]
        kwargs = dict(kwargs, num_hidden_layers=NUM_LAYERS, text_config=text)
        return real_config(**kwargs)

    transformers.Qwen2_5_VLConfig = reduced_config
    try:
        with torch.device("meta"):
            model = qwen_image_text_encoder.QwenImageTextEncoder()
    finally:
        transformers.Qwen2_5_VLConfig = real_config

    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith(TEXT)}
    state = {}
    for name, shape in shapes.items():
        bound, center = weight_bounds(name, shapes)
        state[name] = torch.from_numpy(seeded_weights.tensor(name, shape, SEED, bound, center))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    assert not unexpected and all(not k.startswith(TEXT) for k in missing), (missing, unexpected)
    # The rotary tables are non-persistent buffers, still on meta: rebuild them with the
    # class's own initialiser.
    rotary = model.model.language_model.rotary_emb
    inv_freq, _ = rotary.compute_default_rope_parameters(rotary.config)
    rotary.inv_freq = inv_freq
    rotary.original_inv_freq = inv_freq.clone()
    for name, t in list(model.model.language_model.named_parameters()) + \
            list(model.model.language_model.named_buffers()):
        assert t.device.type == "cpu", name
    return model.eval(), shapes


def run(model, dtype, ids, mask):
    model.model.language_model.to(dtype)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        last = model.model(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
    # The pipeline's [-1] is the final norm's output (facts §5.3).
    assert torch.equal(hidden[-1], last)
    assert len(hidden) == NUM_LAYERS + 1
    return hidden[-1]


def main():
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(SEED)
    # Ids across the whole table, the chat-template specials among them.
    single = torch.randint(0, 152064, (1, 11), generator=generator)
    single[0, 0] = 151644  # <|im_start|>
    single[0, 5] = 151645  # <|im_end|>
    padded = torch.randint(0, 152064, (2, 13), generator=generator)
    padded[1, 9:] = PAD_ID
    padded_mask = torch.ones((2, 13), dtype=torch.int64)
    padded_mask[1, 9:] = 0
    cases = {
        "single": (single, torch.ones_like(single)),
        "padded": (padded, padded_mask),
    }
    model, _ = build_model()
    tensors = {}
    for dtype, suffix in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        for case, (ids, mask) in cases.items():
            out = run(model, dtype, ids, mask)
            tensors[f"hidden_{case}_{suffix}"] = out.contiguous()
    for case, (ids, mask) in cases.items():
        tensors[f"ids_{case}"] = ids.contiguous()
        tensors[f"mask_{case}"] = mask.contiguous()
    metadata = {"seed": str(SEED), "num_layers": str(NUM_LAYERS),
                "weights": "tests/golden/seeded_weights.py: bound 1/sqrt(fan_in) for Linear "
                           "weights and biases; RMSNorm weights center 1 bound 0.1; "
                           "embed_tokens bound 1",
                "upstream": "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder, "
                            "transformers " + transformers.__version__}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, {k: tuple(v.shape) for k, v in tensors.items()})
    for case in cases:
        f, b = tensors[f"hidden_{case}_f32"], tensors[f"hidden_{case}_bf16"].float()
        print(case, "f32 |mean|", f.abs().mean().item(), "bf16 vs f32 rel",
              ((b - f).norm() / f.norm()).item())


if __name__ == "__main__":
    main()
