"""bench/wan_video_dit anchor: upstream DiffSynth-Studio's own forward, timed as
wan_dit_bench.c times ours.

Takes wan_dit_bench's arguments and prints one JSON line with the same fields, impl
"upstream": diffsynth.models.wan_video_dit.WanModel with the kwargs of upstream's own config
row for --model (1.3b: Wan2.1-T2V-1.3B, row 9269f8db...; 14b: Wan2.1-T2V-14B, row
aafcfd96...) and num_layers N, weights uniform in [-0.02, 0.02] (1-D norm weights: 1 + that),
and one diffsynth.pipelines.wan_video.model_fn_wan_video call per forward under
torch.no_grad, torch.set_num_threads(THREADS) on the CPU. Warm-up, then the median of
--repeats forwards, each timed with perf_counter around the call and a synchronize.

Without --vram-limit the model is built on the meta device, cast, then materialised on the
target device and filled in place: every weight resident in the given dtype. With
--vram-limit G (GiB, upstream's vram_limit; "none": managed without a limit) it runs in
upstream's dynamic VRAM mode as bench/vram/upstream_anchor.py does for the Qwen-Image DiT:
the weights held on the CPU in the --storage dtype (as upstream's loader holds them: the
vram_config's offload dtype), wrapped by diffsynth.core.vram.layers.enable_vram_management
with upstream's module map for WanModel (VRAM_MANAGEMENT_MODULE_MAPS) and the vram_config
offload <storage> cpu / onload <storage> cpu / preparing <storage> <device> / computation
<dtype> <device>, then every wrapped module onloaded as the pipeline's load_models_to_device
does. In the forward each wrapped module moves itself to the preparing state (kept on the
device) while the device's used memory is under vram_limit, and is cast per call from the CPU
otherwise. The weights are drawn on the target device (fast for 14B on a GPU), stored there in
the storage dtype and moved to the CPU one tensor at a time.

The RoPE tables (plain tensors, not parameters) are rebuilt on the CPU, where the constructor
would have left them. On CUDA, max_memory_allocated (torch's peak over the timed forwards,
after a reset_peak_memory_stats) and max_memory_reserved (its caching allocator's pool) are
printed. Upstream's limit check reads the device's free
memory, which torch has no call for on the CPU: there only --vram-limit none runs (a smoke
test of this script); a limit exits 77, as does a CUDA run without a GPU. Never installs
anything: run it with the private venv that has the upstream package.
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from anchor_util import set_up, time_calls, unavailable  # noqa: E402  (bench/common)

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
STORAGE = {"fp8": torch.float8_e4m3fn, "float8_e4m3fn": torch.float8_e4m3fn,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float8_e4m3fn: "float8_e4m3fn"}
# --model: upstream's config row, the name in the JSON line, and the width and FFN for flops.
ROWS = {"1.3b": ("9269f8db9040a9d860eaca435be61814", "WanModel-1.3B", 1536.0, 8960.0),
        "14b": ("aafcfd9672c3a2456dc46e1cb6e52c70", "WanModel-14B", 5120.0, 13824.0)}
TEXT_DIM = 4096.0
WAN_CLASS = "diffsynth.models.wan_video_dit.WanModel"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32",
                   help="computation dtype (and the inputs')")
    p.add_argument("--model", choices=sorted(ROWS), default="1.3b")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--vram-limit", default=None,
                   help="GiB, or none: upstream's dynamic VRAM mode (default: not managed)")
    p.add_argument("--storage", choices=sorted(STORAGE), default="fp8",
                   help="offload / onload / preparing dtype under --vram-limit")
    a = p.parse_args(argv)
    if a.height % 2 or a.width % 2 or a.repeats < 1 or a.warmup < 0 or a.layers < 1:
        p.error("--height/--width even, --repeats >= 1, --warmup >= 0, --layers >= 1")
    a.managed = a.vram_limit is not None
    if a.vram_limit == "none":
        a.vram_limit = None
    elif a.managed:
        try:
            a.vram_limit = float(a.vram_limit)
        except ValueError:
            p.error(f"--vram-limit: a number of GiB or none, got {a.vram_limit!r}")
    a.dtype, a.storage = DTYPES[a.dtype], STORAGE[a.storage]
    return a


def tokens(a):
    return a.frames * (a.height // 2) * (a.width // 2)


def forward_flops(a):
    """Counted exactly as wan_dit_bench.c counts them."""
    _, _, d, ffn = ROWS[a.model]
    n, l = tokens(a), a.text_tokens
    per_block = (2.0 * n * d * (6 * d + 2 * ffn) + 2.0 * l * d * 2 * d + 4.0 * n * n * d
                 + 4.0 * n * l * d)
    outer = 2.0 * n * 64 * d + 2.0 * l * (TEXT_DIM * d + d * d) + 2.0 * n * d * 64
    return a.layers * per_block + outer


def row_kwargs(a):
    from diffsynth.configs.model_configs import MODEL_CONFIGS
    row = next(c for c in MODEL_CONFIGS if c["model_hash"] == ROWS[a.model][0]
               and c["model_class"] == WAN_CLASS)
    return dict(row["extra_kwargs"], num_layers=a.layers)


def fill(p, name, gen, device, dtype):
    """One parameter's values: uniform in [-0.02, 0.02] in bf16 or f32 (1 + that for 1-D norm
    weights), drawn on `device`."""
    w = torch.empty(p.shape, dtype=torch.float32 if dtype == torch.float32 else torch.bfloat16,
                    device=device).uniform_(-0.02, 0.02, generator=gen)
    if p.ndim == 1 and "norm" in name:
        w.add_(1.0)
    return w


def build(a, device):
    """Every weight resident on `device` in a.dtype."""
    from diffsynth.models.wan_video_dit import WanModel
    kwargs = row_kwargs(a)
    with torch.device("meta"):
        model = WanModel(**kwargs)
    model = model.to(a.dtype).to_empty(device=device)
    with torch.device("cpu"):
        model.freqs = WanModel(**dict(kwargs, num_layers=0)).freqs
    gen = torch.Generator(device=device).manual_seed(0x5EED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(fill(p, name, gen, device, a.dtype))
    return model.eval()


def build_offloaded(a, device):
    """Every weight on the CPU in the storage dtype (drawn on `device`, one tensor at a time:
    the whole model never exists twice)."""
    from diffsynth.models.wan_video_dit import WanModel
    kwargs = row_kwargs(a)
    with torch.device("meta"):
        model = WanModel(**kwargs)
    with torch.device("cpu"):
        model.freqs = WanModel(**dict(kwargs, num_layers=0)).freqs
    gen = torch.Generator(device=device).manual_seed(0x5EED)
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            for name, p in list(module.named_parameters(recurse=False)):
                w = fill(p, f"{mod_name}.{name}", gen, device, torch.bfloat16)
                module._parameters[name] = torch.nn.Parameter(
                    w.to(a.storage).to("cpu"), requires_grad=False)
    return model.eval()


def manage(a, model, device):
    """Upstream's model pool and pipeline steps for a managed model: wrap, then onload."""
    from diffsynth.configs import VRAM_MANAGEMENT_MODULE_MAPS
    from diffsynth.core.vram.layers import enable_vram_management
    from diffsynth.models.model_loader import ModelPool
    pool = ModelPool()
    module_map = {pool.import_model_class(src): pool.import_model_class(dst)
                  for src, dst in VRAM_MANAGEMENT_MODULE_MAPS[WAN_CLASS].items()}
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


def inputs(a, device):
    gen = torch.Generator().manual_seed(1)
    bound = 3.0 ** 0.5
    latents = ((torch.rand((1, 16, a.frames, a.height, a.width), generator=gen) * 2 - 1)
               * bound).to(device=device, dtype=a.dtype)
    context = ((torch.rand((1, a.text_tokens, 4096), generator=gen) * 2 - 1) * bound
               ).to(device=device, dtype=a.dtype)
    timestep = torch.tensor([500.0], device=device).to(a.dtype)
    return dict(latents=latents, timestep=timestep, context=context)


def main(argv):
    a = parse_args(argv)
    line = {"impl": "upstream", "backend": a.backend, "model": ROWS[a.model][1],
            "layers": a.layers, "dtype": NAMES[a.dtype], "frames": a.frames, "height": a.height,
            "width": a.width, "tokens": tokens(a), "text_tokens": a.text_tokens,
            "threads": a.threads, "torch": torch.__version__,
            "vram_limit_gib": a.vram_limit if a.managed else None,
            "storage": NAMES[a.storage] if a.managed else None}
    if a.managed and a.backend == "cpu" and a.vram_limit is not None:
        return unavailable(line, "upstream's vram_limit check reads the device's free memory "
                                 "(torch.<device>.mem_get_info), which the CPU lacks: use "
                                 "--vram-limit none on the CPU")
    ready = set_up(a, line, modules=("diffsynth.pipelines.wan_video",))
    if isinstance(ready, int):
        return ready
    device, sync = ready
    from diffsynth.pipelines.wan_video import model_fn_wan_video

    start = time.perf_counter()
    vram_config = None
    if a.managed:
        model, vram_config = manage(a, build_offloaded(a, device), device)
    else:
        model = build(a, device)
    print(f"upstream_anchor: {ROWS[a.model][1]}, {a.layers} layers built"
          f"{' and managed' if a.managed else ''} in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    x = inputs(a, device)

    def call():
        return model_fn_wan_video(dit=model, **x)

    # The peak over the timed forwards only, as wan_dit_bench resets its own after the warm-up.
    with torch.no_grad():
        for _ in range(a.warmup):
            call()
            sync()
    if a.backend == "cuda":
        torch.cuda.reset_peak_memory_stats()
    samples, median, out = time_calls(call, sync, 0, a.repeats)
    finite = bool(torch.isfinite(out.float()).all())
    flops = forward_flops(a)
    line.update(status="ok" if finite else "bad_output", warmup=a.warmup, repeats=a.repeats,
                median_ms=median * 1e3, min_ms=samples[0] * 1e3, flops=flops,
                tflops=flops / median * 1e-12,
                timing="perf_counter around one forward + synchronize")
    if a.managed:
        line.update(
            vram_config={k: (NAMES.get(v, str(v)) if isinstance(v, torch.dtype) else str(v))
                         for k, v in vram_config.items()},
            modules_on_device=sum(1 for m in model.modules() if getattr(m, "state", None) == 2),
            modules_wrapped=sum(1 for m in model.modules() if hasattr(m, "preparing")),
            weights=f"{NAMES[a.storage]} on the cpu, modules kept on {device} while under "
                    "vram_limit, the rest cast per call")
    else:
        line["weights"] = f"{a.backend}, resident"
    if a.backend == "cuda":
        line["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        line["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    print(json.dumps(line), flush=True)
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
