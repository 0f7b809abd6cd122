"""bench/wan_video_dit VRAM driver: one step of the Wan2.1-T2V-14B DiT under a vram_limit with
fp8 storage, ours (wan_dit_bench --vram-gib G --vram-config FP8) against upstream
DiffSynth-Studio's dynamic VRAM mode at the same limit (upstream_anchor.py --vram-limit G
--storage fp8), one after the other on the same GPU, and one table whose ratio is the result
(DESIGN §7). Target: upstream's step / ours >= 2.

usage: compare_vram.py --bench BUILD/bench/wan_dit_bench [--python PY_WITH_DIFFSYNTH]
                       [--layers N] [--frames F] [--height H] [--width W] [--budget-gib G]
                       [--repeats N] [--resident] [--bf16] [--timeout S] [--log FILE]
                       [--backend cuda|cpu]

Rows: ours under the budget with fp8 storage (vram_config offload / onload / preparing
float8_e4m3fn on the cpu, computation bf16 on the device: upstream's low-VRAM config for
Wan); with --resident, ours with the same storage and no limit (every unit copied in once:
what the budget costs); with --bf16, ours under the budget with the weights' own bf16 (28 GB
for 40 blocks: more than a 24 GiB budget holds, so units stream every step); upstream under
the budget with fp8 storage. Columns: the fastest step, its TFLOP/s, the bytes the manager
copied per step, peak device memory (ours: through the backend's alloc slot; upstream:
torch.cuda.max_memory_allocated), and upstream / ours.
Each run builds its own model (28 GB of bf16 weights for 40 blocks on our side, 14 GB of fp8
on upstream's), so the runs go one after the other. Standard library only; every row prints
even where the upstream package or the GPU is missing. --backend cpu: a smoke test of the
script (upstream's limit check needs a GPU, so its row then reports unavailable).
"""
import argparse
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "vram_compare", os.path.join(HERE, "..", "vram", "compare.py"))
vram_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vram_compare)
run, fmt = vram_compare.run, vram_compare.fmt
TARGET_UPSTREAM = 2.0


def fp8_config(device):
    return json.dumps({"offload_dtype": "float8_e4m3fn", "offload_device": "cpu",
                       "onload_dtype": "float8_e4m3fn", "onload_device": "cpu",
                       "preparing_dtype": "float8_e4m3fn", "preparing_device": device,
                       "computation_dtype": "bfloat16", "computation_device": device})


def gb(v):
    return None if v is None else v * 1e-9


def cross_check(ours, up):
    """Our device's used memory after the run (CUDA context, the ops' scratch and kept buffers
    included) beside upstream's caching-allocator pool peak (no CUDA context): what the
    alloc-slot peak and max_memory_allocated leave out."""
    used, reserved = ours.get("device_used_bytes"), up.get("max_memory_reserved")
    if used is not None or reserved is not None:
        print(f"  cross-check: ours device used after the run {fmt(gb(used), '.2f', ' GB')} "
              f"(context and scratch included), upstream max reserved "
              f"{fmt(gb(reserved), '.2f', ' GB')} (its allocator's pool)")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", required=True)
    p.add_argument("--python", default=None, help="a Python with diffsynth; none: ours alone")
    p.add_argument("--backend", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--layers", type=int, default=40)
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--height", type=int, default=60)
    p.add_argument("--width", type=int, default=104)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--budget-gib", type=float, default=24.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--resident", action="store_true", help="also ours with no limit")
    p.add_argument("--bf16", action="store_true", help="also ours with bf16 storage")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per run")
    p.add_argument("--log", default=None, help="append every JSON result here")
    a = p.parse_args(argv)
    log = open(a.log, "a") if a.log else None
    tokens = a.frames * (a.height // 2) * (a.width // 2)
    shape = ["--backend", a.backend, "--dtype", "bf16", "--model", "14b",
             "--layers", str(a.layers), "--frames", str(a.frames), "--height", str(a.height),
             "--width", str(a.width), "--text-tokens", str(a.text_tokens),
             "--repeats", str(a.repeats)]
    if a.backend == "cpu":
        shape += ["--threads", str(os.cpu_count() or 1)]
    budget = f"{a.budget_gib:g}"
    fp8 = fp8_config(a.backend)

    print(f"Wan2.1-T2V-14B DiT, {a.layers} of 40 blocks, random bf16 weights, latents "
          f"{a.frames}x{a.height}x{a.width} ({tokens} tokens) + {a.text_tokens} text tokens, "
          f"vram_limit {budget} GiB, fp8 storage, bf16 compute; fastest of {a.repeats} steps "
          "after a warm-up", flush=True)
    runs = [("ours " + budget + " GiB, fp8",
             [a.bench] + shape + ["--vram-gib", budget, "--vram-config", fp8])]
    if a.resident:
        runs.append(("ours no limit, fp8",
                     [a.bench] + shape + ["--vram-gib", "unlimited", "--vram-config", fp8]))
    if a.bf16:
        runs.append(("ours " + budget + " GiB, bf16", [a.bench] + shape + ["--vram-gib", budget]))
    if a.python:
        runs.append(("upstream " + budget + " GiB, fp8",
                     [a.python, os.path.join(HERE, "upstream_anchor.py")] + shape
                     + ["--vram-limit", budget, "--storage", "fp8"]))
    results = []
    for name, cmd in runs:
        lines, status = run(cmd, a.timeout, log)
        r = lines[-1] if lines else None
        results.append((name, r if status == "ok" and r and r.get("status") == "ok" else None,
                        status if status != "ok" else (r or {}).get("status", "no output")))
    ours = results[0][1]
    up = results[-1][1] if a.python else None

    print(f"{'configuration':<26} {'step':>11} {'TFLOP/s':>8} {'moved/step':>11} "
          f"{'peak device':>12} {'upstream/ours':>14}")
    for name, r, status in results:
        if r is None:
            print(f"{name:<26} not measured ({status})")
            continue
        is_up = r.get("impl") == "upstream"
        peak = r.get("max_memory_allocated") if is_up else r.get("alloc_peak_bytes")
        vs_up = up["min_ms"] / r["min_ms"] if up and not is_up else None
        moved = r.get("moved_bytes_per_forward")
        print(f"{name:<26} {fmt(r['min_ms'], '.1f', ' ms'):>11} {fmt(r.get('tflops'), '.1f'):>8} "
              f"{fmt(gb(moved), '.2f', ' GB'):>11} {fmt(gb(peak), '.2f', ' GB'):>12} "
              f"{fmt(vs_up, '.2f', 'x') if not is_up else '1.00x':>14}"
              + (f"   ({r.get('modules_on_device')} of {r.get('modules_wrapped')} modules kept "
                 f"on the device, torch {r.get('torch')})" if is_up else ""))
    if not a.python:
        print(f"{'upstream ' + budget + ' GiB, fp8':<26} not measured (no upstream Python given)")
    if ours and up:
        ratio = up["min_ms"] / ours["min_ms"]
        print(f"  fp8 at {budget} GiB: upstream / ours {ratio:.2f}x "
              + ("ok" if ratio >= TARGET_UPSTREAM else "MISSED") + f" (>= {TARGET_UPSTREAM}x)")
        if ours.get("alloc_peak_bytes") and up.get("max_memory_allocated"):
            print(f"  peak device memory: ours {gb(ours['alloc_peak_bytes']):.2f} GB, upstream "
                  f"{gb(up['max_memory_allocated']):.2f} GB "
                  f"(budget {a.budget_gib * 1.073741824:.2f} GB)")
        cross_check(ours, up)
    if log:
        log.close()
    return 77 if results[0][2].startswith("unavailable") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
