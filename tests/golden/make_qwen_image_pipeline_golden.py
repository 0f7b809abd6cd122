"""Golden data for the whole Qwen-Image pipeline: upstream DiffSynth-Studio's own
QwenImagePipeline.__call__ on the CPU in float32, over reduced models with seeded weights that the
C test regenerates bit for bit:
  text encoder: make_qwen_image_text_encoder_golden.py's model cut to 1 decoder layer (full width;
                only the embedding rows of the prompts' tokens are materialised, the others are
                zero and never read),
  DiT:          make_qwen_image_dit_golden.py's model cut to 1 block (full width),
  VAE:          make_qwen_image_vae_golden.py's model (the real config),
with the real tokenizer of tests/data/qwen_tokenizer.

Cases (prompt "A red fox in the snow", empty negative prompt):
  t2i      seed 42, 3 steps, cfg 4, height 50 x width 80 (rounded up to 64 x 80 by the pipeline;
           the dynamic shift sees the un-rounded size)
  nocfg    seed 1, 2 steps, cfg 1 (no negative pass), 32 x 32
  i2i      seed 0, 3 steps, cfg 4, 32 x 48, input image (seeded RGB), denoising_strength 0.6

Writes tests/data/golden/qwen_image_pipeline.safetensors:
  <case>_latents  f32 [1, 16, H/8, W/8]  the latents vae.decode received (the final latents)
  <case>_image    u8 [H, W, 3]            the output image's pixels
  <case>_noise    f32 [1, 16, H/8, W/8]  the initial noise (for diagnosis)
  i2i_input_image u8 [32, 48, 3]
  used_token_ids  i64 [n]                 the embedding rows the prompts read
Run with a private venv that has the upstream package (pip install diffsynth) — never in CI.
"""
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_qwen_image_dit_golden as dit_golden  # noqa: E402
import make_qwen_image_encode_prompt_golden as prompt_golden  # noqa: E402
import make_qwen_image_text_encoder_golden as te_golden  # noqa: E402
import make_qwen_image_vae_golden as vae_golden  # noqa: E402
import seeded_weights  # noqa: E402

OUT = os.path.join(HERE, "..", "data", "golden", "qwen_image_pipeline.safetensors")
PROMPT = "A red fox in the snow"
TEXT_LAYERS = 1
DIT_LAYERS = 1
IMAGE_SEED = 77

CASES = {
    "t2i": dict(seed=42, num_inference_steps=3, cfg_scale=4.0, height=50, width=80),
    "nocfg": dict(seed=1, num_inference_steps=2, cfg_scale=1.0, height=32, width=32),
    "i2i": dict(seed=0, num_inference_steps=3, cfg_scale=4.0, height=32, width=48,
                denoising_strength=0.6),
}


def input_image(height, width):
    """Seeded RGB pixels: the C test computes the same bytes from seeded_weights (u * 256)."""
    u = seeded_weights.uniform("input_image", height * width * 3, IMAGE_SEED)
    return (u * np.float32(256.0)).astype(np.uint8).reshape(height, width, 3)


def main():
    torch.set_num_threads(2)
    tokenizer = transformers.Qwen2Tokenizer.from_pretrained(prompt_golden.TOKENIZER)
    used = set()
    for text in (PROMPT, ""):
        used.update(int(t) for t in
                    tokenizer([prompt_golden.TEMPLATE.format(text)]).input_ids[0])
    full = seeded_weights.tensor

    def tensor(name, shape, seed, bound, center=0.0):
        if name.endswith("embed_tokens.weight"):
            return prompt_golden.seeded_rows(name, shape, seed, bound, center, sorted(used))
        return full(name, shape, seed, bound, center)

    seeded_weights.tensor = tensor
    te_golden.NUM_LAYERS = TEXT_LAYERS
    text_encoder, _ = te_golden.build_model()
    seeded_weights.tensor = full
    dit_golden.NUM_LAYERS = DIT_LAYERS
    dit, _ = dit_golden.build_model()
    vae = vae_golden.build_model(image_channels=3, dtype=torch.float32)
    print("models built", flush=True)

    # Imported after the models are built (see make_qwen_image_encode_prompt_golden.py).
    from diffsynth.pipelines.qwen_image import QwenImagePipeline
    from PIL import Image
    pipe = QwenImagePipeline(device="cpu", torch_dtype=torch.float32)
    pipe.text_encoder = text_encoder
    pipe.dit = dit
    pipe.vae = vae
    pipe.tokenizer = tokenizer

    captured = {}
    real_decode = vae.decode

    def decode(latents, *args, **kwargs):
        captured["latents"] = latents.detach().clone()
        return real_decode(latents, *args, **kwargs)

    vae.decode = decode
    real_noise = pipe.generate_noise

    def generate_noise(*args, **kwargs):
        noise = real_noise(*args, **kwargs)
        captured["noise"] = noise.detach().clone()
        return noise

    pipe.generate_noise = generate_noise

    tensors = {"used_token_ids": torch.tensor(sorted(used), dtype=torch.int64)}
    for case, kwargs in CASES.items():
        call = dict(kwargs, prompt=PROMPT, negative_prompt="")
        if case == "i2i":
            pixels = input_image(kwargs["height"], kwargs["width"])
            tensors["i2i_input_image"] = torch.from_numpy(pixels.copy())
            call["input_image"] = Image.fromarray(pixels)
        with torch.no_grad():
            image = pipe(**call)
        tensors[f"{case}_latents"] = captured["latents"].float().contiguous()
        tensors[f"{case}_noise"] = captured["noise"].float().contiguous()
        tensors[f"{case}_image"] = torch.from_numpy(np.array(image, dtype=np.uint8).copy())
        print(case, tuple(captured["latents"].shape), image.size, flush=True)

    metadata = {"prompt": PROMPT, "text_layers": str(TEXT_LAYERS),
                "dit_layers": str(DIT_LAYERS), "image_seed": str(IMAGE_SEED),
                "upstream": "diffsynth.pipelines.qwen_image.QwenImagePipeline, torch "
                            + torch.__version__}
    for case, kwargs in CASES.items():
        metadata[case] = repr(kwargs)
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, {k: (tuple(v.shape), str(v.dtype)) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
