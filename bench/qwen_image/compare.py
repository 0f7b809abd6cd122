"""bench/qwen_image driver: runs pipeline_bench (ours) and upstream_anchor.py (upstream
DiffSynth-Studio's QwenImagePipeline) alternately for each row, in the same run, and prints one
table whose ratios are the results (DESIGN §7), with each side's split into phases.

usage: compare.py --suite cpu|gpu --bench BUILD/bench/pipeline_bench [--python PY_WITH_DIFFSYNTH]
                  [--threads N] [--repeats N] [--rounds N] [--te-layers N] [--dit-layers N]
                  [--timeout S] [--tokenizer DIR] [--log FILE]

  cpu  the reduced pipeline (--te-layers text encoder layers, default 1, and --dit-layers DiT
       blocks, default 1, both at full width; the real VAE), 256x256, 4 steps, cfg 4, one row
       per --dtypes entry: f32, bf16, f32-from-bf16 (bf16 weights computed in f32: upstream casts
       them once at load, ours keeps them converted once as diffsynthd's CPU default does) and
       f32-from-bf16-widened (the same, ours with --convert-limit 0: widened at every call);
       same threads on both sides; ours/upstream wall time of one whole call, target <= 1.0.
  gpu  the full models (28 text encoder layers, 60 DiT blocks, the real VAE), random bf16
       weights, 1024x1024, 40 steps, cfg 4, upstream's "basic" configuration (every model bf16
       on the GPU); ours/upstream time, target <= 0.8; peak memory as each side counts it, and
       the device's used memory sampled with nvidia-smi while each side runs (the same method
       for both: the process's whole footprint, context and allocator caches included).

Each row runs ours and the anchor alternately, --rounds times, and keeps each side's best
median (bench/common/compare_util.py). Standard library only; every row prints even
where the upstream package or the GPU is missing. Exit status 77 when our side found no GPU.
"""
import argparse
import os
import shutil
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from compare_util import alternate, fmt_ms, run_one  # noqa: E402  (bench/common)
from compare_util import verdict as verdict_of  # noqa: E402

SIZE_CPU = "--height 256 --width 256 --steps 4 --cfg 4"
SIZE_GPU = "--height 1024 --width 1024 --steps 40 --cfg 4"


# A --dtypes entry: (row label, both sides' dtype arguments, ours alone).
CPU_ROWS = {
    "f32": ("f32", "--dtype f32", ""),
    "bf16": ("bf16", "--dtype bf16", ""),
    "f32-from-bf16": ("f32 from bf16 files", "--dtype f32 --weights-dtype bf16", ""),
    "f32-from-bf16-widened": ("f32 from bf16, ours widened per call",
                              "--dtype f32 --weights-dtype bf16", "--convert-limit 0"),
}


def rows(a):
    layers = f"--te-layers {a.te_layers} --dit-layers {a.dit_layers}"
    if a.suite == "cpu":
        shape = f"TE {a.te_layers}L, DiT {a.dit_layers}L, 256^2, 4 steps"
        out = []
        for key in a.dtypes.split(","):
            label, args, ours = CPU_ROWS[key]
            out.append(dict(name=f"pipeline {label}, {shape}", args=f"{args} {layers} {SIZE_CPU}",
                            ours=ours, target=1.0))
        return out
    return [dict(name=f"pipeline bf16, TE {a.te_layers}L, DiT {a.dit_layers}L, 1024^2, 40 steps",
                 args=f"--dtype bf16 {layers} {SIZE_GPU}", target=0.8)]


class DeviceMemory:
    """The GPU's used memory, sampled with nvidia-smi while a measurement runs: the peak above
    what was used before it started. None where nvidia-smi is missing or fails."""

    def __init__(self, period_s=0.5):
        self.period = period_s
        self.tool = shutil.which("nvidia-smi")
        self.base = self.peak = None
        self.stop = threading.Event()
        self.thread = None

    def sample(self):
        try:
            out = subprocess.run([self.tool, "--query-gpu=memory.used",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=10)
            return int(out.stdout.split()[0]) * 2**20 if out.returncode == 0 else None
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def poll(self):
        while not self.stop.wait(self.period):
            used = self.sample()
            if used is not None:
                self.peak = max(self.peak or 0, used)

    def __enter__(self):
        if self.tool:
            self.base = self.sample()
            if self.base is not None:
                self.thread = threading.Thread(target=self.poll, daemon=True)
                self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.thread:
            self.stop.set()
            self.thread.join()

    def used_above_base(self):
        return self.peak - self.base if self.base is not None and self.peak is not None else None


def measure(cmd, a, log):
    """run_one, with the device's memory sampled around it on the gpu suite."""
    if a.suite == "cpu":
        return run_one(cmd, a.timeout, log)
    with DeviceMemory() as mem:
        result = run_one(cmd, a.timeout, log)
    if mem.used_above_base() is not None:
        result["device_used_peak_bytes"] = mem.used_above_base()
    return result


def fmt_phases(r):
    if not r or r.get("status") != "ok":
        return "-"
    return " / ".join(f"{r[k]:.0f}" for k in ("encode_ms", "denoise_ms", "decode_ms")) + " ms"


def fmt_gb(r, key):
    return f"{r[key] / 1e9:.1f} GB" if r and key in r else "-"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=["cpu", "gpu"], required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--python", default=None, help="a Python with diffsynth; none: ours alone")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=None, help="default: 3 on cpu, 1 on gpu")
    p.add_argument("--rounds", type=int, default=None, help="default: 2 on cpu, 1 on gpu")
    p.add_argument("--te-layers", type=int, default=None, help="default: 1 on cpu, 28 on gpu")
    p.add_argument("--dit-layers", type=int, default=None, help="default: 1 on cpu, 60 on gpu")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    p.add_argument("--tokenizer", default=os.path.join(HERE, "..", "..", "tests", "data",
                                                       "qwen_tokenizer"))
    p.add_argument("--log", default=None, help="append every JSON result here")
    p.add_argument("--dtypes", default="f32,bf16,f32-from-bf16",
                   help="cpu: the rows, any of " + ", ".join(CPU_ROWS))
    a = p.parse_args(argv)
    cpu = a.suite == "cpu"
    unknown = [k for k in a.dtypes.split(",") if k not in CPU_ROWS]
    if cpu and unknown:
        p.error(f"--dtypes: unknown rows {unknown}; known: {', '.join(CPU_ROWS)}")
    a.repeats = a.repeats or (3 if cpu else 1)
    a.rounds = a.rounds or (2 if cpu else 1)
    a.te_layers = a.te_layers or (1 if cpu else 28)
    a.dit_layers = a.dit_layers or (1 if cpu else 60)
    backend = "cpu" if cpu else "cuda"
    common = ["--backend", backend, "--threads", str(a.threads), "--repeats", str(a.repeats),
              "--tokenizer", a.tokenizer]
    log = open(a.log, "a") if a.log else None
    anchor = os.path.join(HERE, "upstream_anchor.py")

    print(f"bench/qwen_image {a.suite.upper()}: ours vs upstream DiffSynth-Studio "
          f"(QwenImagePipeline.__call__, cfg 4, both prompts encoded), {backend}"
          + (f", {a.threads} threads" if cpu else "")
          + f", best of {a.rounds} alternating rounds of median-of-{a.repeats} after 1 warm-up",
          flush=True)
    print(f"{'benchmark':<50} {'ours':>12} {'upstream':>12} {'ours/up':>8}  {'target':<7} "
          "verdict", flush=True)
    missed = measured = 0
    no_gpu = False
    for row in rows(a):
        args = common + row["args"].split()
        ours, ref = alternate([a.bench] + args + row.get("ours", "").split(),
                              a.python and [a.python, anchor] + args, a.rounds,
                              lambda cmd: measure(cmd, a, log))
        no_gpu = no_gpu or ours.get("status") == "unavailable"
        ratio, verdict, miss = verdict_of(ours, ref, row["target"])
        missed += miss
        measured += ours.get("status") == "ok"
        r = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"{row['name']:<50} {fmt_ms(ours):>12} {fmt_ms(ref):>12} {r:>8}  "
              f"<= {row['target']:.2f} {verdict}", flush=True)
        print(f"  phases encode / denoise / decode: ours {fmt_phases(ours)}, "
              f"upstream {fmt_phases(ref)}", flush=True)
        if cpu and ours.get("status") == "ok":
            print(f"  ours: {ours.get('weights_dtype')} weights, "
                  f"{fmt_gb(ours, 'converted_bytes')} kept converted "
                  f"({ours.get('conversions', 0)} unit conversions), final latents "
                  f"fnv1a64 {ours.get('output_fnv1a64', '-')}", flush=True)
        if not cpu:
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
