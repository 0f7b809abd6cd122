"""bench/vram anchor: upstream DiffSynth-Studio's dynamic VRAM mode, timed as vram_bench.c
times ours under a budget.

Takes bench/qwen_image_dit/upstream_anchor.py's arguments plus --vram-limit (GiB, upstream's
vram_limit; "none": no limit) and prints one JSON line with the same fields, impl "upstream".
The model is diffsynth.models.qwen_image_dit.QwenImageDiT(num_layers=N), weights uniform in
[-0.02, 0.02] (1-D norm weights: 1 + that) drawn in bf16 on the CPU, then held in the offload
dtype on the CPU as upstream's loader holds them (load_model reads the state dict in the first
non-disk dtype of the vram_config, the offload one). VRAM management is enabled as the model
pool does (diffsynth.core.vram.enable_vram_management with upstream's module map for the class,
VRAM_MANAGEMENT_MODULE_MAPS, and vram_limit), with the vram_config
offload fp8 cpu / onload fp8 cpu / preparing fp8 <device> / computation bf16 <device>; then
every wrapped module is onloaded as the pipeline's load_models_to_device does. In the forward
each wrapped module moves itself to the preparing state (fp8 on the device, kept) while the
device's used memory (torch.cuda.mem_get_info: the whole device) is under vram_limit, and is
cast per call from the CPU otherwise. Timed: one
diffsynth.pipelines.qwen_image.model_fn_qwen_image call per forward under torch.no_grad,
warm-up first (it also fills the device up to the limit), then --repeats forwards, perf_counter
around the call and a synchronize; the median and the fastest are printed.

Upstream's limit check reads the device's free memory, which torch has no call for on the CPU:
on the CPU only --vram-limit none runs (a smoke test of this script); a limit there exits 77,
as does a CUDA run without a GPU. Never installs anything: run it with the private venv that
has the upstream package.
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from anchor_util import dit_inputs, set_up, time_calls, unavailable  # noqa: E402  (bench/common)

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
STORAGE = {"fp8": torch.float8_e4m3fn, "float8_e4m3fn": torch.float8_e4m3fn,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
NAMES = {torch.bfloat16: "bf16", torch.float8_e4m3fn: "float8_e4m3fn"}
DIM, TEXT_DIM = 3072.0, 3584.0
DIT_CLASS = "diffsynth.models.qwen_image_dit.QwenImageDiT"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="computation dtype (and the inputs')")
    p.add_argument("--storage", choices=sorted(STORAGE), default="fp8",
                   help="offload / onload / preparing dtype")
    p.add_argument("--vram-limit", default="8", help="GiB, or none")
    p.add_argument("--layers", type=int, default=60)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    if a.height % 16 or a.width % 16 or a.repeats < 1 or a.warmup < 0 or a.layers < 1:
        p.error("--height/--width multiples of 16, --repeats >= 1, --warmup >= 0, --layers >= 1")
    if a.vram_limit == "none":
        a.vram_limit = None
    else:
        try:
            a.vram_limit = float(a.vram_limit)
        except ValueError:
            p.error(f"--vram-limit: a number of GiB or none, got {a.vram_limit!r}")
    a.dtype, a.storage = DTYPES[a.dtype], STORAGE[a.storage]
    return a


def forward_flops(a):
    """Counted exactly as bench/qwen_image_dit/dit_bench.c counts them."""
    si, st = (a.height // 16) * (a.width // 16), a.text_tokens
    s, d = si + st, DIM
    per_block = 2.0 * s * d * (12 * d) + 4.0 * s * s * d + 2.0 * 2.0 * d * 6 * d
    outer = (2.0 * si * 64 * d + 2.0 * st * TEXT_DIM * d + 2.0 * (256 * d + d * d)
             + 2.0 * d * 2 * d + 2.0 * si * d * 64)
    return a.layers * per_block + outer


def build(a):
    """The class on the meta device, each parameter then drawn in bf16 on the CPU and stored in
    the offload dtype one at a time (the whole model never exists twice)."""
    from diffsynth.models.qwen_image_dit import QwenImageDiT
    with torch.device("meta"):
        model = QwenImageDiT(num_layers=a.layers)
    pe = model.pos_embed
    with torch.device("cpu"):
        model.pos_embed = type(pe)(pe.theta, pe.axes_dim, scale_rope=pe.scale_rope)
    gen = torch.Generator().manual_seed(0x5EED)
    for mod_name, module in model.named_modules():
        for name, p in list(module.named_parameters(recurse=False)):
            w = torch.empty(p.shape, dtype=torch.bfloat16).uniform_(-0.02, 0.02, generator=gen)
            if p.ndim == 1 and "norm" in f"{mod_name}.{name}":
                w.add_(1.0)
            module._parameters[name] = torch.nn.Parameter(w.to(a.storage), requires_grad=False)
    return model.eval()


def manage(a, model, device):
    """Upstream's model pool and pipeline steps for a managed model: wrap, then onload."""
    from diffsynth.configs import VRAM_MANAGEMENT_MODULE_MAPS
    from diffsynth.core.vram.layers import enable_vram_management
    from diffsynth.models.model_loader import ModelPool
    pool = ModelPool()
    module_map = {pool.import_model_class(src): pool.import_model_class(dst)
                  for src, dst in VRAM_MANAGEMENT_MODULE_MAPS[DIT_CLASS].items()}
    vram_config = {"offload_dtype": a.storage, "offload_device": "cpu",
                   "onload_dtype": a.storage, "onload_device": "cpu",
                   "preparing_dtype": a.storage, "preparing_device": device,
                   "computation_dtype": a.dtype, "computation_device": device}
    model = enable_vram_management(model, module_map, vram_config=vram_config,
                                   vram_limit=a.vram_limit)
    for module in model.modules():
        if hasattr(module, "onload"):
            module.onload()
    return model, vram_config


def main(argv):
    a = parse_args(argv)
    line = {"impl": "upstream", "backend": a.backend, "model": "QwenImageDiT",
            "layers": a.layers, "dtype": NAMES[a.dtype], "storage": NAMES[a.storage],
            "vram_limit_gib": a.vram_limit, "height": a.height, "width": a.width,
            "image_tokens": (a.height // 16) * (a.width // 16), "text_tokens": a.text_tokens,
            "threads": a.threads, "torch": torch.__version__}
    if a.backend == "cpu" and a.vram_limit is not None:
        return unavailable(line, "upstream's vram_limit check reads the device's free memory "
                                 "(torch.<device>.mem_get_info), which the CPU lacks: use "
                                 "--vram-limit none on the CPU")
    ready = set_up(a, line)
    if isinstance(ready, int):
        return ready
    device, sync = a.backend, ready[1]
    from diffsynth.pipelines.qwen_image import model_fn_qwen_image

    start = time.perf_counter()
    model, vram_config = manage(a, build(a), device)
    print(f"upstream_anchor: {a.layers} layers built and managed in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    inputs = dit_inputs(a, device)
    samples, median, out = time_calls(lambda: model_fn_qwen_image(dit=model, **inputs), sync,
                                      a.warmup, a.repeats)
    finite = bool(torch.isfinite(out.float()).all())
    prepared = sum(1 for m in model.modules() if getattr(m, "state", None) == 2)
    wrapped = sum(1 for m in model.modules() if hasattr(m, "preparing"))
    flops = forward_flops(a)
    line.update(status="ok" if finite else "bad_output", warmup=a.warmup, repeats=a.repeats,
                median_ms=median * 1e3, min_ms=samples[0] * 1e3, flops=flops,
                tflops=flops / median * 1e-12,
                vram_config={k: (NAMES.get(v, v) if isinstance(v, torch.dtype) else v)
                             for k, v in vram_config.items()},
                modules_on_device=prepared, modules_wrapped=wrapped,
                weights=f"{NAMES[a.storage]} on the cpu, modules kept on {device} while under "
                        "vram_limit, the rest cast per call",
                timing="perf_counter around one forward + synchronize")
    if a.backend == "cuda":
        line["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
