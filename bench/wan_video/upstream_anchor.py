"""bench/wan_video anchor: upstream DiffSynth-Studio's own WanVideoPipeline.__call__, timed as
pipeline_bench.c times ours.

Takes pipeline_bench's arguments and prints one JSON line with the same fields, impl
"upstream": diffsynth.pipelines.wan_video.WanVideoPipeline(device, torch_dtype) holding
  text_encoder  WanTextEncoder(vocab=--vocab, num_layers=--te-layers) at full width,
  dit           Wan2.1-T2V-1.3B's WanModel with --dit-layers blocks
                (bench/wan_video_dit/upstream_anchor.py's build),
  vae           WanVideoVAE() (the real configuration),
  tokenizer     the recorded ids of tests/data/wan_tokenizer/cases.json for the two prompts (the
                golden script's stand-in: upstream's HuggingfaceTokenizer needs transformers'
                slow-to-fast conversion, which the venv lacks; tokenizing is not what is timed),
weights uniform in [-0.02, 0.02] (1-D norm weights and the VAE's RMS gammas: 1 + that), as
pipeline_bench fills ours. Without --vram-limit every model is in the compute dtype on the
device (upstream's "basic" configuration). With --vram-limit GIB the models are wrapped as
upstream's model pool wraps them (enable_vram_management with VRAM_MANAGEMENT_MODULE_MAPS and
vram_limit; vram_config offload and onload in the compute dtype on the CPU, preparing and
computation on the device), and the pipeline's load_models_to_device moves them in and out.
One call is pipe(prompt, negative_prompt, cfg_scale, height, width, num_frames, seed=0,
num_inference_steps) with upstream's default tiling, under torch.no_grad with the progress bar
off; torch.set_num_threads(THREADS) on the CPU. Warm-up, then the median of --repeats calls,
each timed with perf_counter around the call and a synchronize.

Phases, as our pipeline's results split ours: encode = every unit_runner call (shape check,
noise, both prompts' embedding, and the post-denoising units), decode = vae.decode +
vae_output_to_video, denoise = the rest of the call (the scheduler set-up and the denoising
loop); each wrapper synchronizes on CUDA. On CUDA, peak memory is torch.cuda.max_memory_allocated
(and _reserved) since the models were built.
Never installs anything: run it with the private venv that has the upstream package.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from anchor_util import set_up, unavailable  # noqa: E402  (bench/common)

DTYPES = {"f32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16}
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}
SEQ_LEN = 512  # the Wan tokenizer's seq_len


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--te-layers", type=int, default=1)
    p.add_argument("--vocab", type=int, default=700)
    p.add_argument("--dit-layers", type=int, default=1)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "tests", "data", "wan_tokenizer"))
    p.add_argument("--vram-limit", type=float, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    if (a.repeats < 1 or a.warmup < 0 or a.te_layers < 1 or a.dit_layers < 1 or a.steps < 1
            or a.frames < 1 or a.height < 16 or a.width < 16 or a.vocab < 700):
        p.error("--repeats, --te-layers, --dit-layers, --steps, --frames >= 1, --warmup >= 0, "
                "--height and --width >= 16, --vocab >= 700")
    a.dtype = DTYPES[a.dtype]
    return a


class RecordedTokenizer:
    """HuggingfaceTokenizer(seq_len=512)'s (ids, mask) for the prompts cases.json records."""

    def __init__(self, folder):
        with open(os.path.join(folder, "cases.json"), encoding="utf-8") as f:
            self.cases = {c["text"]: c for c in json.load(f)["cases"]}

    def prompts(self):
        texts = list(self.cases)
        return texts[0], texts[1]  # the English and the Chinese case: pipeline_bench's

    def __call__(self, prompt, return_mask=False, add_special_tokens=True):
        assert return_mask and add_special_tokens
        ids = torch.zeros((1, SEQ_LEN), dtype=torch.long)
        mask = torch.zeros((1, SEQ_LEN), dtype=torch.long)
        case = self.cases[prompt]["ids"]
        ids[0, :len(case)] = torch.tensor(case)
        mask[0, :len(case)] = 1
        return ids, mask


def fill(model, seed):
    """Uniform in [-0.02, 0.02]; 1-D norm weights and RMS gammas 1 + that."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(-0.02, 0.02, generator=gen)
            if (p.ndim == 1 and "norm" in name) or name.endswith(".gamma"):
                p.add_(1.0)
    return model.eval()


def build(a, device):
    """(text_encoder, dit, vae) in the compute dtype on `device`."""
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import WanVideoVAE
    spec = importlib.util.spec_from_file_location(
        "wan_video_dit_anchor", os.path.join(HERE, "..", "wan_video_dit", "upstream_anchor.py"))
    dit_anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dit_anchor)
    with torch.device("meta"):
        text_encoder = WanTextEncoder(vocab=a.vocab, num_layers=a.te_layers)
    text_encoder = fill(text_encoder.to(a.dtype).to_empty(device=device), 0x7E)
    dit = dit_anchor.build(argparse.Namespace(layers=a.dit_layers, dtype=a.dtype), device)
    # On the CPU first: its latent mean and std are plain tensors made in the constructor.
    vae = fill(WanVideoVAE().to(dtype=a.dtype, device=device), 0x5EED)
    return text_encoder, dit, vae


def manage(a, models, device):
    """Upstream's model pool's wrapping of each model under vram_limit."""
    from diffsynth.configs import VRAM_MANAGEMENT_MODULE_MAPS
    from diffsynth.core.vram.layers import enable_vram_management
    from diffsynth.models.model_loader import ModelPool
    pool = ModelPool()
    vram_config = {"offload_dtype": a.dtype, "offload_device": "cpu",
                   "onload_dtype": a.dtype, "onload_device": "cpu",
                   "preparing_dtype": a.dtype, "preparing_device": device,
                   "computation_dtype": a.dtype, "computation_device": device}
    out = []
    for model in models:
        cls = f"{type(model).__module__}.{type(model).__name__}"
        module_map = {pool.import_model_class(src): pool.import_model_class(dst)
                      for src, dst in VRAM_MANAGEMENT_MODULE_MAPS[cls].items()}
        out.append(enable_vram_management(model, module_map, vram_config=dict(vram_config),
                                          vram_limit=a.vram_limit))
    return out


def weight_bytes(*models):
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters())


class PhaseTimer:
    """Wraps the pipeline's units and its VAE decode to split one call's time into phases."""

    def __init__(self, pipe, sync):
        self.sync = sync
        self.encode = self.decode = 0.0
        pipe.unit_runner = self.timed(pipe.unit_runner, "encode")
        pipe.vae.decode = self.timed(pipe.vae.decode, "decode")
        pipe.vae_output_to_video = self.timed(pipe.vae_output_to_video, "decode")

    def timed(self, fn, phase):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            setattr(self, phase, getattr(self, phase) + time.perf_counter() - start)
            return out
        return wrapper

    def reset(self):
        self.encode = self.decode = 0.0


def main(argv):
    a = parse_args(argv)
    line = {"impl": "upstream", "backend": a.backend, "model": "WanVideoPipeline",
            "te_layers": a.te_layers, "vocab": a.vocab, "dit_layers": a.dit_layers,
            "dtype": NAMES[a.dtype], "frames": a.frames, "height": a.height, "width": a.width,
            "steps": a.steps, "cfg": a.cfg, "threads": a.threads, "torch": torch.__version__}
    if a.vram_limit is not None:
        line["vram_limit_gib"] = a.vram_limit
    ready = set_up(a, line)
    if isinstance(ready, int):
        return ready
    device, sync = ready
    if a.vram_limit is not None and a.backend != "cuda":
        return unavailable(line, "upstream's vram_limit check reads the device's free memory, "
                                 "which torch has no call for on the CPU")

    start = time.perf_counter()
    models = build(a, "cpu" if a.vram_limit is not None else device)
    weights = weight_bytes(*models)
    if a.vram_limit is not None:
        models = manage(a, models, a.backend)
    print(f"upstream_anchor: models built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    from diffsynth.pipelines.wan_video import WanVideoPipeline
    pipe = WanVideoPipeline(device=a.backend, torch_dtype=a.dtype)
    pipe.text_encoder, pipe.dit, pipe.vae = models
    pipe.tokenizer = RecordedTokenizer(a.tokenizer)
    pipe.vram_management_enabled = pipe.check_vram_management_state()
    prompt, negative = pipe.tokenizer.prompts()
    phases = PhaseTimer(pipe, sync)
    captured = {}
    decode = pipe.vae.decode

    def keep_latents(latents, *args, **kwargs):
        captured["latents"] = latents
        return decode(latents, *args, **kwargs)

    pipe.vae.decode = keep_latents
    if a.backend == "cuda":
        torch.cuda.reset_peak_memory_stats()

    samples = []
    with torch.no_grad():
        for r in range(-a.warmup, a.repeats):
            phases.reset()
            start = time.perf_counter()
            pipe(prompt=prompt, negative_prompt=negative, cfg_scale=a.cfg, height=a.height,
                 width=a.width, num_frames=a.frames, seed=0, num_inference_steps=a.steps,
                 progress_bar_cmd=lambda steps: steps)
            sync()
            total = time.perf_counter() - start
            if r >= 0:
                samples.append((total, phases.encode, total - phases.encode - phases.decode,
                                phases.decode))
    finite = bool(torch.isfinite(captured["latents"].float()).all())
    samples.sort()
    median = samples[len(samples) // 2]  # pipeline_bench's median, for odd or even counts
    line.update(status="ok" if finite else "bad_output", warmup=a.warmup, repeats=a.repeats,
                median_ms=median[0] * 1e3, min_ms=samples[0][0] * 1e3,
                encode_ms=median[1] * 1e3, denoise_ms=median[2] * 1e3,
                decode_ms=median[3] * 1e3, weight_bytes=weights)
    if a.backend == "cuda":
        line.update(alloc_peak_bytes=torch.cuda.max_memory_allocated(),
                    reserved_peak_bytes=torch.cuda.max_memory_reserved(),
                    memory="torch.cuda.max_memory_allocated / _reserved since the models "
                           "were built")
    line["timing"] = ("perf_counter around one pipe(...) call + synchronize; phases from "
                      "wrapped units, vae.decode and vae_output_to_video of the median call")
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
