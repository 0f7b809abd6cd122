"""bench/wan_video_vae GPU driver: the Wan2.1 VAE decode of --frames latent frames at
--height x --width, bf16, tiled as the Wan pipeline tiles (30 x 52, stride 15 x 26 in latent
units): ours (vae_bench --backend cuda --tiled) against upstream DiffSynth-Studio's
WanVideoVAE.decode(tiled=True) (upstream_anchor.py) on the same GPU, one after the other, and one
table whose ratios are the results (DESIGN §7). Targets: ours / upstream time <= 0.8; our peak
device memory <= upstream's (ours: the most bytes live at once through the backend's alloc
slot over the timed decodes; upstream: torch.cuda.max_memory_allocated over its timed decodes;
both include the resident weights).

usage: compare_gpu.py --bench BUILD/bench/vae_bench [--python PY_WITH_DIFFSYNTH] [--frames T]
                      [--height H] [--width W] [--dtype bf16|f32] [--untiled] [--warmup N]
                      [--repeats N] [--timeout S] [--log FILE] [--backend cuda|cpu]

Standard library only; every row prints even where the upstream package or the GPU is
missing. --backend cpu: a smoke test of the script on tiny sizes.
"""
import argparse
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "vram_compare", os.path.join(HERE, "..", "vram", "compare.py"))
vram_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vram_compare)
run, fmt = vram_compare.run, vram_compare.fmt
TARGET_TIME, TARGET_PEAK = 0.8, 1.0


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
    p.add_argument("--frames", type=int, default=21, help="latent frames (21: 81 frames)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--untiled", action="store_true", help="single_decode instead")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout", type=int, default=1200, help="seconds per run")
    p.add_argument("--log", default=None, help="append every JSON result here")
    a = p.parse_args(argv)
    log = open(a.log, "a") if a.log else None
    args = ["--backend", a.backend, "--dtype", a.dtype, "--frames", str(a.frames),
            "--height", str(a.height), "--width", str(a.width), "--warmup", str(a.warmup),
            "--repeats", str(a.repeats)] + ([] if a.untiled else ["--tiled"])
    if a.backend == "cpu":
        args += ["--threads", str(os.cpu_count() or 1)]
    video_frames = 4 * (a.frames - 1) + 1
    how = "untiled" if a.untiled else "tiled 30x52 / stride 15x26 (latent units)"
    print(f"Wan2.1 VAE decode, {a.frames} latent frames -> {video_frames} frames of "
          f"{a.height}x{a.width}, {a.dtype}, {how}, seeded weights; fastest of {a.repeats} "
          f"after {a.warmup} warm-up", flush=True)
    runs = [("ours", [a.bench] + args)]
    if a.python:
        runs.append(("upstream", [a.python, os.path.join(HERE, "upstream_anchor.py")] + args))
    results = {}
    for name, cmd in runs:
        lines, status = run(cmd, a.timeout, log)
        r = lines[-1] if lines else None
        ok = status == "ok" and r and r.get("status") == "ok"
        results[name] = (r if ok else None,
                         status if status != "ok" else (r or {}).get("status", "no output"))
    ours, up = results["ours"][0], results.get("upstream", (None, None))[0]

    print(f"{'side':<10} {'decode':>10} {'median':>10} {'peak device':>12} {'vs upstream':>12}")
    for name in ("ours", "upstream"):
        r, status = results.get(name, (None, "no upstream Python given"))
        if r is None:
            print(f"{name:<10} not measured ({status})")
            continue
        peak = r.get("max_memory_allocated") if name == "upstream" else r.get("alloc_peak_bytes")
        ratio = ours["min_s"] / up["min_s"] if name == "ours" and up else None
        print(f"{name:<10} {fmt(r['min_s'], '.2f', ' s'):>10} "
              f"{fmt(r['median_s'], '.2f', ' s'):>10} "
              f"{fmt(gb(peak), '.2f', ' GB'):>12} "
              f"{fmt(ratio, '.2f', 'x') if name == 'ours' else '1.00x':>12}"
              + (f"   (manager peak {gb(r['vram_peak_bytes']):.2f} GB)"
                 if name == "ours" and r.get("vram_peak_bytes") is not None else "")
              + (f"   (torch {r.get('torch')})" if name == "upstream" else ""))
    if ours and up:
        t = ours["min_s"] / up["min_s"]
        print(f"  time: ours / upstream {t:.2f} " + ("ok" if t <= TARGET_TIME else "MISSED")
              + f" (<= {TARGET_TIME})")
        if ours.get("alloc_peak_bytes") is not None and up.get("max_memory_allocated"):
            m = ours["alloc_peak_bytes"] / up["max_memory_allocated"]
            print(f"  peak device memory: ours / upstream {m:.2f} "
                  + ("ok" if m <= TARGET_PEAK else "MISSED") + f" (<= {TARGET_PEAK})")
        cross_check(ours, up)
    if log:
        log.close()
    return 77 if results["ours"][1].startswith("unavailable") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
