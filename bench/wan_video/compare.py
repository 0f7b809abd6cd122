"""bench/wan_video driver: runs wan_pipeline_bench (ours) and upstream_anchor.py (upstream
DiffSynth-Studio's WanVideoPipeline) alternately for each row, in the same run, and prints one
table whose ratios are the results (DESIGN §7), with each side's split into phases.

usage: compare.py --suite cpu|gpu --bench BUILD/bench/wan_pipeline_bench
                  [--python PY_WITH_DIFFSYNTH] [--threads N] [--repeats N] [--rounds N]
                  [--te-layers N] [--dit-layers N] [--vram-limit GIB] [--timeout S] [--log FILE]

  cpu  the reduced pipeline (--te-layers UMT5 blocks, default 1, with the 700-row vocabulary of
       the test SentencePiece model, and --dit-layers Wan2.1-T2V-1.3B DiT blocks, default 1,
       both at full width; the real VAE), 9 frames of 128 x 128, 4 steps, cfg 5, f32, same
       threads on both sides; ours/upstream wall time of one whole call, target <= 1.0.
  gpu  Wan2.1-T2V-1.3B's shapes (24 UMT5 blocks with the full 256384-row vocabulary, 30 DiT
       blocks, the real VAE), random bf16 weights, 81 frames of 480 x 832, 50 steps, cfg 5:
       every model on the GPU (upstream's "basic" configuration, ours through a VRAM manager
       without a limit), then both under --vram-limit GiB (default 8: ours one budget for the
       pool, upstream its model pool's wrapping with vram_limit); ours/upstream time, target
       <= 0.8, at no more peak memory than upstream: as each side counts it (ours the backend's
       alloc slot and the manager's peak, upstream torch.cuda.max_memory_allocated), and the
       device's used memory sampled with nvidia-smi while each side runs.

Each row runs ours and the anchor alternately, --rounds times, and keeps each side's best
median (bench/common/compare_util.py). Standard library only; every row prints even where the
upstream package or the GPU is missing. Exit status 77 when our side found no GPU.
"""
import argparse
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from compare_util import alternate, fmt_ms, run_one  # noqa: E402  (bench/common)
from compare_util import verdict as verdict_of  # noqa: E402


def qwen_compare():
    """bench/qwen_image/compare.py, for its nvidia-smi sampler and formatters."""
    spec = importlib.util.spec_from_file_location(
        "qwen_image_compare", os.path.join(HERE, "..", "qwen_image", "compare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


QWEN = qwen_compare()
SIZE_CPU = "--frames 9 --height 128 --width 128 --steps 4 --cfg 5"
SIZE_GPU = "--frames 81 --height 480 --width 832 --steps 50 --cfg 5"


def rows(a):
    layers = f"--te-layers {a.te_layers} --dit-layers {a.dit_layers}"
    if a.suite == "cpu":
        shape = f"TE {a.te_layers}L, DiT {a.dit_layers}L, 9x128^2, 4 steps"
        return [dict(name=f"pipeline f32, {shape}",
                     args=f"--dtype f32 --vocab 700 {layers} {SIZE_CPU}", target=1.0)]
    shape = f"TE {a.te_layers}L, DiT {a.dit_layers}L, 81x480x832, 50 steps"
    full = f"--dtype bf16 --vocab 256384 {layers} {SIZE_GPU}"
    return [dict(name=f"pipeline bf16, {shape}", args=full, target=0.8),
            dict(name=f"pipeline bf16, vram_limit {a.vram_limit:g} GiB",
                 args=f"{full} --vram-limit {a.vram_limit:g}", target=0.8)]


def measure(cmd, a, log):
    """run_one, with the device's memory sampled around it on the gpu suite."""
    if a.suite == "cpu":
        return run_one(cmd, a.timeout, log)
    with QWEN.DeviceMemory() as mem:
        result = run_one(cmd, a.timeout, log)
    if mem.used_above_base() is not None:
        result["device_used_peak_bytes"] = mem.used_above_base()
    return result


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=["cpu", "gpu"], required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--python", default=None, help="a Python with diffsynth; none: ours alone")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--te-layers", type=int, default=None, help="default: 1 on cpu, 24 on gpu")
    p.add_argument("--dit-layers", type=int, default=None, help="default: 1 on cpu, 30 on gpu")
    p.add_argument("--vram-limit", type=float, default=8.0, help="GiB, the gpu suite's 2nd row")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    p.add_argument("--log", default=None, help="append every JSON result here")
    a = p.parse_args(argv)
    cpu = a.suite == "cpu"
    a.te_layers = a.te_layers or (1 if cpu else 24)
    a.dit_layers = a.dit_layers or (1 if cpu else 30)
    backend = "cpu" if cpu else "cuda"
    common = ["--backend", backend, "--threads", str(a.threads), "--repeats", str(a.repeats)]
    log = open(a.log, "a") if a.log else None
    anchor = os.path.join(HERE, "upstream_anchor.py")

    print(f"bench/wan_video {a.suite.upper()}: ours vs upstream DiffSynth-Studio "
          f"(WanVideoPipeline.__call__, cfg 5, both prompts encoded, upstream's tiling), "
          f"{backend}" + (f", {a.threads} threads" if cpu else "")
          + f", best of {a.rounds} alternating rounds of median-of-{a.repeats} after 1 warm-up",
          flush=True)
    print(f"{'benchmark':<52} {'ours':>12} {'upstream':>12} {'ours/up':>8}  {'target':<7} "
          "verdict", flush=True)
    missed = measured = 0
    no_gpu = False
    for row in rows(a):
        args = common + row["args"].split()
        ours, ref = alternate([a.bench] + args, a.python and [a.python, anchor] + args, a.rounds,
                              lambda cmd: measure(cmd, a, log))
        no_gpu = no_gpu or ours.get("status") == "unavailable"
        ratio, verdict, miss = verdict_of(ours, ref, row["target"])
        missed += miss
        measured += ours.get("status") == "ok"
        r = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"{row['name']:<52} {fmt_ms(ours):>12} {fmt_ms(ref):>12} {r:>8}  "
              f"<= {row['target']:.2f} {verdict}", flush=True)
        print(f"  phases encode / denoise / decode: ours {QWEN.fmt_phases(ours)}, "
              f"upstream {QWEN.fmt_phases(ref)}", flush=True)
        if not cpu:
            fmt_gb = QWEN.fmt_gb
            print(f"  peak memory: ours {fmt_gb(ours, 'alloc_peak_bytes')} through the backend's "
                  f"alloc (VRAM manager {fmt_gb(ours, 'vram_peak_bytes')}), upstream "
                  f"{fmt_gb(ref, 'alloc_peak_bytes')} max_memory_allocated "
                  f"({fmt_gb(ref, 'reserved_peak_bytes')} reserved); device used (nvidia-smi): "
                  f"ours {fmt_gb(ours, 'device_used_peak_bytes')}, upstream "
                  f"{fmt_gb(ref, 'device_used_peak_bytes')}", flush=True)
    print(f"{len(rows(a))} rows: {measured} measured, {missed} below target")
    if log:
        log.close()
    return 77 if no_gpu and measured == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
