"""Golden data for the whole Wan video pipeline: upstream DiffSynth-Studio's own
WanVideoPipeline.__call__ on the CPU in float32, over reduced models with seeded weights that the
C test regenerates bit for bit (tests/tools/seeded_weights.c):
  text encoder: make_wan_text_encoder_golden.py's WanTextEncoder (full width, the 700-row
                vocabulary of tests/data/wan_tokenizer) cut to 1 block,
  DiT:          make_wan_video_dit_golden.py's Wan2.1-T2V-1.3B WanModel (row 9269f8db…, full
                width) cut to 1 block,
  VAE:          make_wan_video_vae_golden.py's WanVideoVAE (the real config),
  VACE:         VaceWanModel at the DiT's width with vace_layers (0,) and vace_in_dim 96,
                seeded as make_wan_video_dit_golden.py seeds its VACE branch (the "vace" case).
The tokenizer is a stand-in that returns, for each prompt, the ids and mask upstream's
HuggingfaceTokenizer gives with the test SentencePiece model, as recorded in
tests/data/wan_tokenizer/cases.json (upstream's tokenizer class needs transformers' slow-to-fast
conversion, which this venv does not have): the prompt is that file's English case, the
negative prompt its Chinese case.

Cases (9 frames, cfg 5, 3 steps, sigma_shift 5 unless said):
  t2v   seed 42, height 40 x width 80 (the pipeline rounds the height up to 48), upstream's
        default tiling (tile 30 x 52, stride 15 x 26: one tile at this size)
  v2v   seed 7, 48 x 64, input_video (9 seeded frames), denoising_strength 0.7, sigma_shift 3,
        tiled with tile 4 x 6 and stride 2 x 3 (latent units), so encode and decode blend tiles
  vace  seed 3, 48 x 64, vace_scale 0.8, untiled: vace_video (10 seeded frames, one more than
        num_frames: upstream uses the first 9), vace_video_mask (10 frames of 0 / 255 in a
        pattern that differs per frame, channel and pixel within the 8 x 8 blocks),
        vace_reference_image (seeded): the reference frame is prepended to the noise and the
        VACE context and trimmed before decoding

Wan2.2-TI2V-5B cases, a pipeline of their own (as from_pretrained sets it up with the Wan2.2
VAE: height / width division factor 32), the same text encoder and tokenizer with
  DiT:          make_wan_video_dit_golden.py's Wan2.2-TI2V-5B WanModel (row 1f5ab770…, full
                width 3072, 48 channels, seperated_timestep, fuse_vae_embedding_in_latents)
                cut to 1 block,
  VAE:          make_wan_video_vae_golden.py's WanVideoVAE38 (the real config, z 48, 16x):
  ti2v  seed 11, 32 x 64, 9 frames, input_image (seeded): its latents fused into the first
        latent frame, which the DiT sees at timestep 0 and which is put back after every step;
        upstream's default tiling (one tile at this size)
  t2v5b seed 5, height 20 (rounded up to 32) x width 64, 5 frames, no input_image (plain
        timesteps), untiled
(Small: the Wan2.2 VAE's 705 M weights take most of a minute per 9 decoded 32 x 64 frames on a
small shared CPU.)

Writes tests/data/golden/wan_video_pipeline.safetensors:
  <case>_latents  f32 [1, 16, 3, H/8, W/8]  the latents vae.decode received (the final latents)
  <case>_noise    f32 [1, 16, 3, H/8, W/8]  the initial noise (for diagnosis)
  <case>_video    u8 [9, H, W, 3]           the output frames
  v2v_input_video u8 [9, 48, 64, 3]
  vace_input_video u8 [10, 48, 64, 3], vace_input_mask u8 [10, 48, 64, 3],
  vace_input_reference u8 [48, 64, 3]  (the VACE inputs)
and tests/data/golden/wan_video_pipeline_ti2v.safetensors:
  <case>_latents  f32 [1, 48, (T - 1) / 4 + 1, H/16, W/16], <case>_noise likewise,
  <case>_video    u8 [T, H, W, 3]
  ti2v_input_image u8 [32, 64, 3]
An argument "21" or "ti2v" writes one of the two files.
Run with a private venv that has the upstream package (/work/venv/bin/python) - never in CI;
it needs about 3 GB of memory (6 GB for the TI2V file).
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_wan_text_encoder_golden as te_golden  # noqa: E402
import make_wan_video_dit_golden as dit_golden  # noqa: E402
import make_wan_video_vae_golden as vae_golden  # noqa: E402
import seeded_weights  # noqa: E402

from diffsynth.models.wan_video_dit import WanModel  # noqa: E402
from diffsynth.models.wan_video_vace import VaceWanModel  # noqa: E402
from diffsynth.models.wan_video_vae import WanVideoVAE, WanVideoVAE38  # noqa: E402
from diffsynth.pipelines.wan_video import WanVideoPipeline  # noqa: E402
from PIL import Image  # noqa: E402

OUT = os.path.join(HERE, "..", "data", "golden", "wan_video_pipeline.safetensors")
OUT_TI2V = os.path.join(HERE, "..", "data", "golden", "wan_video_pipeline_ti2v.safetensors")
T2V_ROW = "9269f8db9040a9d860eaca435be61814"
TI2V_ROW = "1f5ab7703c6fc803fdded85ff040c316"
TEXT_LAYERS = 1
DIT_LAYERS = 1
VIDEO_SEED = 78

CASES = {
    "t2v": dict(seed=42, num_inference_steps=3, cfg_scale=5.0, height=40, width=80,
                num_frames=9),
    "v2v": dict(seed=7, num_inference_steps=3, cfg_scale=5.0, height=48, width=64, num_frames=9,
                denoising_strength=0.7, sigma_shift=3.0, tiled=True, tile_size=(4, 6),
                tile_stride=(2, 3)),
    "vace": dict(seed=3, num_inference_steps=3, cfg_scale=5.0, height=48, width=64,
                 num_frames=9, vace_scale=0.8, tiled=False),
}
VACE_LAYERS = (0,)
TI2V_CASES = {
    "ti2v": dict(seed=11, num_inference_steps=3, cfg_scale=5.0, height=32, width=64,
                 num_frames=9),
    "t2v5b": dict(seed=5, num_inference_steps=3, cfg_scale=5.0, height=20, width=64,
                  num_frames=5, tiled=False),
}


def vace_mask(frames, height, width):
    """255 where (3h + 5w + 7t + c) % 11 < 5: different per frame, channel and pixel."""
    t, h, w, c = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width),
                             np.arange(3), indexing="ij")
    return np.where((3 * h + 5 * w + 7 * t + c) % 11 < 5, 255, 0).astype(np.uint8)


def seeded_video(name, frames, height, width):
    """Seeded RGB frames: the C test computes the same bytes from seeded_weights (u * 256)."""
    u = seeded_weights.uniform(name, frames * height * width * 3, VIDEO_SEED)
    return (u * np.float32(256.0)).astype(np.uint8).reshape(frames, height, width, 3)


class RecordedTokenizer:
    """HuggingfaceTokenizer(seq_len=512)'s (ids, mask) for the prompts cases.json records."""

    def __init__(self, cases):
        self.cases = {c["text"]: c for c in cases}

    def __call__(self, prompt, return_mask=False, add_special_tokens=True):
        assert return_mask and add_special_tokens
        case = self.cases[prompt]
        ids = torch.zeros((1, te_golden.SEQ_LEN), dtype=torch.long)
        mask = torch.zeros((1, te_golden.SEQ_LEN), dtype=torch.long)
        ids[0, :len(case["ids"])] = torch.tensor(case["ids"])
        mask[0, :len(case["ids"])] = 1
        return ids, mask


def capture(pipe, vae):
    """Records the noise and the latents vae.decode receives; returns the dict they go to."""
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
    return captured


def write_ti2v(cases, text_encoder, prompt, negative):
    dit_golden.NUM_LAYERS = DIT_LAYERS
    dit = dit_golden.seeded(WanModel(**dit_golden.row_kwargs(TI2V_ROW)))
    vae = vae_golden.build_model(WanVideoVAE38)
    print("TI2V models built", flush=True)
    pipe = WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    pipe.text_encoder = text_encoder
    pipe.dit = dit
    pipe.vae = vae
    pipe.tokenizer = RecordedTokenizer(cases)
    # What from_pretrained does once the VAE is loaded.
    pipe.height_division_factor = vae.upsampling_factor * 2
    pipe.width_division_factor = vae.upsampling_factor * 2
    captured = capture(pipe, vae)

    tensors = {}
    for case, kwargs in TI2V_CASES.items():
        call = dict(kwargs, prompt=prompt, negative_prompt=negative)
        if case == "ti2v":
            image = seeded_video("ti2v.input_image", 1, kwargs["height"], kwargs["width"])[0]
            tensors["ti2v_input_image"] = torch.from_numpy(image.copy())
            call["input_image"] = Image.fromarray(image)
        with torch.no_grad():
            video = pipe(**call)
        frames = np.stack([np.array(f, dtype=np.uint8) for f in video])
        tensors[f"{case}_latents"] = captured["latents"].float().contiguous()
        tensors[f"{case}_noise"] = captured["noise"].float().contiguous()
        tensors[f"{case}_video"] = torch.from_numpy(frames.copy())
        print(case, tuple(captured["latents"].shape), frames.shape, flush=True)

    metadata = {"prompt": prompt, "negative_prompt": negative,
                "text_layers": str(TEXT_LAYERS), "dit_layers": str(DIT_LAYERS),
                "dit_row": TI2V_ROW, "vae": "WanVideoVAE38", "video_seed": str(VIDEO_SEED),
                "upstream": "diffsynth.pipelines.wan_video.WanVideoPipeline, torch "
                            + torch.__version__}
    for case, kwargs in TI2V_CASES.items():
        metadata[case] = repr(kwargs)
    save_file(tensors, OUT_TI2V, metadata=metadata)
    print(OUT_TI2V, os.path.getsize(OUT_TI2V), {k: (tuple(v.shape), str(v.dtype))
                                                for k, v in tensors.items()})


def main():
    torch.set_num_threads(2)
    which = sys.argv[1:] or ["21", "ti2v"]
    with open(os.path.join(te_golden.DATA, "wan_tokenizer", "cases.json"),
              encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    prompt, negative = cases[0]["text"], cases[1]["text"]

    te_golden.NUM_LAYERS = TEXT_LAYERS
    text_encoder = te_golden.build_model()
    if "ti2v" in which:
        write_ti2v(cases, text_encoder, prompt, negative)
    if "21" not in which:
        return
    dit_golden.NUM_LAYERS = DIT_LAYERS
    dit_kwargs = dit_golden.row_kwargs(T2V_ROW)
    dit = dit_golden.seeded(WanModel(**dit_kwargs))
    vae = vae_golden.build_model(WanVideoVAE)
    vace = dit_golden.seeded(VaceWanModel(
        vace_layers=VACE_LAYERS, vace_in_dim=96, patch_size=dit_kwargs["patch_size"],
        has_image_input=False, dim=dit_kwargs["dim"], num_heads=dit_kwargs["num_heads"],
        ffn_dim=dit_kwargs["ffn_dim"], eps=dit_kwargs["eps"]))
    print("models built", flush=True)

    pipe = WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    pipe.text_encoder = text_encoder
    pipe.dit = dit
    pipe.vae = vae
    pipe.tokenizer = RecordedTokenizer(cases)

    captured = capture(pipe, vae)

    tensors = {}
    for case, kwargs in CASES.items():
        call = dict(kwargs, prompt=prompt, negative_prompt=negative)
        if case == "v2v":
            frames = seeded_video("v2v.input_video", kwargs["num_frames"], kwargs["height"],
                                  kwargs["width"])
            tensors["v2v_input_video"] = torch.from_numpy(frames.copy())
            call["input_video"] = [Image.fromarray(f) for f in frames]
        pipe.vace = vace if case == "vace" else None
        if case == "vace":
            h, w = kwargs["height"], kwargs["width"]
            frames = seeded_video("vace.vace_video", 10, h, w)
            mask = vace_mask(10, h, w)
            ref = seeded_video("vace.vace_reference_image", 1, h, w)[0]
            tensors["vace_input_video"] = torch.from_numpy(frames.copy())
            tensors["vace_input_mask"] = torch.from_numpy(mask.copy())
            tensors["vace_input_reference"] = torch.from_numpy(ref.copy())
            call["vace_video"] = [Image.fromarray(f) for f in frames]
            call["vace_video_mask"] = [Image.fromarray(m) for m in mask]
            call["vace_reference_image"] = Image.fromarray(ref)
        with torch.no_grad():
            video = pipe(**call)
        frames = np.stack([np.array(f, dtype=np.uint8) for f in video])
        tensors[f"{case}_latents"] = captured["latents"].float().contiguous()
        tensors[f"{case}_noise"] = captured["noise"].float().contiguous()
        tensors[f"{case}_video"] = torch.from_numpy(frames.copy())
        print(case, tuple(captured["latents"].shape), frames.shape, flush=True)

    metadata = {"prompt": prompt, "negative_prompt": negative,
                "text_layers": str(TEXT_LAYERS), "dit_layers": str(DIT_LAYERS),
                "video_seed": str(VIDEO_SEED), "vace_layers": repr(VACE_LAYERS),
                "upstream": "diffsynth.pipelines.wan_video.WanVideoPipeline, torch "
                            + torch.__version__}
    for case, kwargs in CASES.items():
        metadata[case] = repr(kwargs)
    save_file(tensors, OUT, metadata=metadata)
    print(OUT, os.path.getsize(OUT), {k: (tuple(v.shape), str(v.dtype))
                                      for k, v in tensors.items()})


if __name__ == "__main__":
    main()
