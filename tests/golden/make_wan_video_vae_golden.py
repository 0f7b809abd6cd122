"""Golden data for the Wan2.1 video VAE: upstream DiffSynth-Studio's own WanVideoVAE (the real
config: z 16, dim 96, dim_mult [1, 2, 4, 4], temporal downsampling [False, True, True]) on the
CPU, float32, weights from tests/golden/seeded_weights.py under the names of the converted file
("model.encoder.conv1.weight", ...), bounded as make_qwen_image_vae_golden.py bounds them:
  conv weights and biases: uniform within 1/sqrt(fan_in) of their conv; RMS_norm gammas: centre
  1, bound 0.1.
The inputs are seeded tensors too (the C test regenerates them; only outputs are stored):
  "latents" [1, 16, 3, 8, 12]: seeded_weights "wan_vae.latents", bound 2 (centre 0);
  "video"   [1, 3, 5, 64, 96]: seeded_weights "wan_vae.video", bound 1 (in [-1, 1)).
Cases: the untiled decode of latents (9 frames of 64 x 96, clamped as single_decode does) and
the untiled encode of video (2 latent frames): upstream's chunking (decode one latent frame at
a time; encode the first frame alone, then chunks of 4) with its two-frame feature cache; then
both tiled through WanVideoVAE.decode / .encode(tiled=True) with tile (4, 6) and stride (2, 3)
in latent units, small enough that 3 x 3 tiles overlap and blend on this size (the pipeline's
(30, 52) / (15, 26) would give one tile).

Writes tests/data/golden/wan_video_vae.safetensors. Run with a private venv that has the
upstream package (pip install diffsynth) — never in CI.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seeded_weights  # noqa: E402

from diffsynth.models.wan_video_vae import WanVideoVAE  # noqa: E402

SEED = 2027
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden",
                   "wan_video_vae.safetensors")


def weight_bounds(name, shape, shapes):
    if name.endswith(".gamma"):
        return 0.1, 1.0
    weight = shape if name.endswith(".weight") else shapes[name[: -len("bias")] + "weight"]
    fan_in = 1
    for d in weight[1:]:
        fan_in *= d
    return 1.0 / math.sqrt(fan_in), 0.0


def build_model():
    with torch.device("meta"):
        meta = WanVideoVAE()
    shapes = {k: list(v.shape) for k, v in meta.state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        bound, center = weight_bounds(name, shape, shapes)
        state[name] = torch.from_numpy(seeded_weights.tensor(name, shape, SEED, bound, center))
    model = WanVideoVAE()
    model.load_state_dict(state)
    return model.eval()


def main():
    torch.set_num_threads(2)
    latents = torch.from_numpy(seeded_weights.tensor("wan_vae.latents", [1, 16, 3, 8, 12], SEED,
                                                     2.0, 0.0))
    video = torch.from_numpy(seeded_weights.tensor("wan_vae.video", [1, 3, 5, 64, 96], SEED,
                                                   1.0, 0.0))
    model = build_model()
    with torch.no_grad():
        decoded = model.single_decode(latents, "cpu")
        encoded = model.single_encode(video, "cpu")
        decoded_tiled = model.decode(latents, "cpu", tiled=True, tile_size=(4, 6),
                                     tile_stride=(2, 3))
        encoded_tiled = model.encode(video, "cpu", tiled=True, tile_size=(4, 6),
                                     tile_stride=(2, 3))
    t = {"decode_f32": decoded.contiguous(), "encode_f32": encoded.contiguous(),
         "decode_tiled_f32": decoded_tiled.contiguous(),
         "encode_tiled_f32": encoded_tiled.contiguous()}
    print({k: tuple(v.shape) for k, v in t.items()})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(t, OUT)


if __name__ == "__main__":
    main()
