"""bench/qwen_image anchor: upstream DiffSynth-Studio's own QwenImagePipeline.__call__, timed as
pipeline_bench.c times ours.

Takes pipeline_bench's arguments and prints one JSON line with the same fields, impl
"upstream": diffsynth.pipelines.qwen_image.QwenImagePipeline(device, torch_dtype) holding
  text_encoder  QwenImageTextEncoder, text tower cut to --te-layers decoder layers (built by
                bench/text_encoder/upstream_anchor.py's build),
  dit           QwenImageDiT(num_layers=--dit-layers) (bench/qwen_image_dit/upstream_anchor.py's
                build),
  vae           QwenImageVAE() (the real configuration),
  tokenizer     transformers' Qwen2Tokenizer from --tokenizer, loaded once as from_pretrained does,
every model in the compute dtype on the device (upstream's "basic" configuration: no VRAM
management), weights uniform in [-0.02, 0.02] (1-D norm weights and the VAE's RMS gammas:
1 + that), as pipeline_bench fills ours. With --weights-dtype (bf16 files at --dtype f32) the
models are built and filled in that dtype, then cast to --dtype, as upstream's loader casts a
bf16 file's state dict to torch_dtype float32 once at load: the same rounded values, computed in
f32. One call is pipe(prompt, negative_prompt="",
cfg_scale, height, width, seed=0, num_inference_steps) under torch.no_grad with the progress bar
off; torch.set_num_threads(THREADS) on the CPU. Warm-up, then the median of --repeats calls,
each timed with perf_counter around the call and a synchronize.

Phases, as ds_qwen_image_pipeline_times splits ours: encode = the pipeline units (shape check,
noise, prompt and negative prompt embedding), decode = vae.decode + vae_output_to_image,
denoise = the rest of the call (the scheduler set-up and the denoising loop); each wrapper
synchronizes on CUDA. On CUDA, peak memory is torch.cuda.max_memory_allocated (and _reserved)
since the models were built.
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
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from anchor_util import set_up  # noqa: E402  (bench/common)

DTYPES = {"f32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16}
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}
# pipeline_bench.c's PROMPT (te_bench's): 60 tokens.
PROMPT = ("A cozy reading nook by a tall window at dusk, warm lamplight on a worn leather "
          "armchair, a knitted blanket, a stack of books with gold lettering, a sleeping tabby "
          "cat, rain streaks on the glass, film grain, shallow depth of field, muted colors")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--weights-dtype", choices=sorted(DTYPES), default=None,
                   help="the weights' dtype as stored, cast to --dtype at load (default: --dtype)")
    p.add_argument("--te-layers", type=int, default=1)
    p.add_argument("--dit-layers", type=int, default=1)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--tokenizer", default="tests/data/qwen_tokenizer")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    if (a.repeats < 1 or a.warmup < 0 or a.te_layers < 1 or a.dit_layers < 1 or a.steps < 1
            or a.height < 16 or a.width < 16):
        p.error("--repeats, --te-layers, --dit-layers, --steps >= 1, --warmup >= 0, "
                "--height and --width >= 16")
    a.dtype = DTYPES[a.dtype]
    a.weights_dtype = DTYPES[a.weights_dtype] if a.weights_dtype else a.dtype
    return a


def load_anchor(name, folder):
    """Another bench's upstream_anchor.py, under its own module name (both files share one)."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(HERE, "..", folder, "upstream_anchor.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_vae(a, device):
    from diffsynth.models.qwen_image_vae import QwenImageVAE
    # Built on the CPU, not on the meta device: its latent mean and std are plain tensors made
    # in the constructor, which to_empty would not materialise. It is small (127 M parameters).
    model = QwenImageVAE().to(dtype=a.weights_dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(0x5EED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(-0.02, 0.02, generator=gen)
            if (p.ndim == 1 and "norm" in name) or name.endswith(".gamma"):
                p.add_(1.0)
    return model.eval()


def build(a, device):
    """(text_encoder, dit, vae), built with the other benches' builders in the weights' dtype,
    then cast to the compute dtype (a no-op without --weights-dtype)."""
    te_anchor = load_anchor("text_encoder_anchor", "text_encoder")
    dit_anchor = load_anchor("qwen_image_dit_anchor", "qwen_image_dit")
    stored = a.weights_dtype
    text_encoder = te_anchor.build(argparse.Namespace(layers=a.te_layers, dtype=stored), device)
    dit = dit_anchor.build(argparse.Namespace(layers=a.dit_layers, dtype=stored), device)
    models = (text_encoder, dit, build_vae(a, device))
    return tuple(m.to(dtype=a.dtype) for m in models)


def weight_bytes(*models):
    # The text encoder's vision tower stays on the meta device: only materialised weights count.
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters()
               if p.device.type != "meta")


class PhaseTimer:
    """Wraps the pipeline's units and its VAE decode to split one call's time into phases."""

    def __init__(self, pipe, sync):
        self.sync = sync
        self.encode = self.decode = 0.0
        pipe.unit_runner = self.timed(pipe.unit_runner, "encode")
        pipe.vae.decode = self.timed(pipe.vae.decode, "decode")
        pipe.vae_output_to_image = self.timed(pipe.vae_output_to_image, "decode")

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
    line = {"impl": "upstream", "backend": a.backend, "model": "QwenImagePipeline",
            "te_layers": a.te_layers, "dit_layers": a.dit_layers, "dtype": NAMES[a.dtype],
            "weights_dtype": NAMES[a.weights_dtype],
            "height": a.height, "width": a.width, "steps": a.steps, "cfg": a.cfg,
            "prompt_tokens": 60, "threads": a.threads, "torch": torch.__version__}
    ready = set_up(a, line, ("diffsynth", "transformers"))
    if isinstance(ready, int):
        return ready
    device, sync = ready
    import transformers

    start = time.perf_counter()
    text_encoder, dit, vae = build(a, device)
    print(f"upstream_anchor: models built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    # Imported after the build (see bench/text_encoder/upstream_anchor.py).
    from diffsynth.pipelines.qwen_image import QwenImagePipeline
    pipe = QwenImagePipeline(device=a.backend, torch_dtype=a.dtype)
    pipe.text_encoder, pipe.dit, pipe.vae = text_encoder, dit, vae
    pipe.tokenizer = transformers.Qwen2Tokenizer.from_pretrained(a.tokenizer)
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
            pipe(prompt=PROMPT, negative_prompt="", cfg_scale=a.cfg, height=a.height,
                 width=a.width, seed=0, num_inference_steps=a.steps,
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
                decode_ms=median[3] * 1e3, weight_bytes=weight_bytes(text_encoder, dit, vae))
    if a.backend == "cuda":
        line.update(alloc_peak_bytes=torch.cuda.max_memory_allocated(),
                    reserved_peak_bytes=torch.cuda.max_memory_reserved(),
                    memory="torch.cuda.max_memory_allocated / _reserved since the models "
                           "were built")
    line["timing"] = ("perf_counter around one pipe(...) call + synchronize; phases from "
                      "wrapped units and vae.decode of the median call")
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
