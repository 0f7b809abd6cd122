"""Golden data for the Wan video VAEs: upstream DiffSynth-Studio's own WanVideoVAE (the real
config: z 16, dim 96, dim_mult [1, 2, 4, 4], temporal downsampling [False, True, True]) and
WanVideoVAE38 (z 48, dim 160, dec_dim 256, patchify 2, 705 M parameters) on the CPU, float32,
weights from tests/golden/seeded_weights.py under the names of the converted file
("model.encoder.conv1.weight", ...), bounded as make_qwen_image_vae_golden.py bounds them:
  conv weights and biases: uniform within 1/sqrt(fan_in) of their conv; RMS_norm gammas: centre
  1, bound 0.1.
The inputs are seeded tensors too (the C test regenerates them; only outputs are stored):
  WanVideoVAE    "latents" [1, 16, 3, 8, 12]: "wan_vae.latents", bound 2 (centre 0);
                 "video" [1, 3, 5, 64, 96]: "wan_vae.video", bound 1 (in [-1, 1));
  WanVideoVAE38  "latents" [1, 48, 3, 4, 6]: "wan_vae38.latents", bound 2;
                 "video" [1, 3, 5, 64, 96]: "wan_vae38.video", bound 1.
Cases: the untiled decode of latents (9 frames of 64 x 96, clamped as single_decode does) and the
untiled encode of video (2 latent frames): upstream's chunking (decode one latent frame at a
time; encode the first frame alone, then chunks of 4) with its two-frame feature cache, and for
VAE38 patchify, Decoder3d_38's first_chunk and the AvgDown3D / DupUp3D shortcuts; then both
tiled through .decode / .encode(tiled=True) with tiles small enough to overlap and blend on
these sizes (the pipeline's (30, 52) / (15, 26) would give one tile): tile (4, 6), stride
(2, 3) in latent units (3 x 3 tiles, blended across both axes) for WanVideoVAE; tile (4, 4),
stride (2, 2) for VAE38 (1 x 2 tiles, blended across the width only: 4/3 of the untiled work,
where the 705 M weights make every latent cell slow on a small CPU; the blend itself is the
same code as WanVideoVAE's, at 16x).

Writes tests/data/golden/wan_video_vae.safetensors and wan_video_vae38.safetensors (an argument
"21" or "38" writes one). Run with a private venv that has the upstream package (pip install
diffsynth) — never in CI.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seeded_weights  # noqa: E402

from diffsynth.models.wan_video_vae import WanVideoVAE, WanVideoVAE38  # noqa: E402

SEED = 2027
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "golden")

# class, file, input names, latents shape, tile, stride
CASES = {
    "21": (WanVideoVAE, "wan_video_vae.safetensors", "wan_vae", [1, 16, 3, 8, 12], (4, 6),
           (2, 3)),
    "38": (WanVideoVAE38, "wan_video_vae38.safetensors", "wan_vae38", [1, 48, 3, 4, 6], (4, 4),
           (2, 2)),
}


def weight_bounds(name, shape, shapes):
    if name.endswith(".gamma"):
        return 0.1, 1.0
    weight = shape if name.endswith(".weight") else shapes[name[: -len("bias")] + "weight"]
    fan_in = 1
    for d in weight[1:]:
        fan_in *= d
    return 1.0 / math.sqrt(fan_in), 0.0


def build_model(cls):
    with torch.device("meta"):
        meta = cls()
    shapes = {k: list(v.shape) for k, v in meta.state_dict().items()}
    model = cls()
    with torch.no_grad():
        for name, param in model.state_dict().items():
            bound, center = weight_bounds(name, shapes[name], shapes)
            param.copy_(torch.from_numpy(
                seeded_weights.tensor(name, shapes[name], SEED, bound, center)))
    return model.eval()


def write(case):
    cls, out, prefix, latents_shape, tile, stride = CASES[case]
    latents = torch.from_numpy(seeded_weights.tensor(prefix + ".latents", latents_shape, SEED,
                                                     2.0, 0.0))
    video = torch.from_numpy(seeded_weights.tensor(prefix + ".video", [1, 3, 5, 64, 96], SEED,
                                                   1.0, 0.0))
    model = build_model(cls)
    with torch.no_grad():
        t = {
            "decode_f32": model.single_decode(latents, "cpu"),
            "encode_f32": model.single_encode(video, "cpu"),
            "decode_tiled_f32": model.decode(latents, "cpu", tiled=True, tile_size=tile,
                                             tile_stride=stride),
            "encode_tiled_f32": model.encode(video, "cpu", tiled=True, tile_size=tile,
                                             tile_stride=stride),
        }
    t = {k: v.contiguous() for k, v in t.items()}
    print(out, {k: tuple(v.shape) for k, v in t.items()})
    os.makedirs(GOLDEN, exist_ok=True)
    save_file(t, os.path.join(GOLDEN, out))


def main():
    torch.set_num_threads(2)
    for case in sys.argv[1:] or sorted(CASES):
        write(case)


if __name__ == "__main__":
    main()
