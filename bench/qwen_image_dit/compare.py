"""bench/qwen_image_dit driver: runs dit_bench (ours) and upstream_anchor.py (upstream
DiffSynth-Studio) alternately for each row, in the same run, and prints one table whose ratios
are the results (DESIGN §7).

usage: compare.py --suite cpu|gpu --bench BUILD/bench/dit_bench [--python PY_WITH_DIFFSYNTH]
                  [--threads N] [--repeats N] [--rounds N] [--layers N] [--timeout S]
                  [--kernels-bench BUILD/bench/kernels_bench] [--log FILE]

  cpu  one forward of the reduced DiT (--layers blocks at full width, default 2), 256x256
       (256 image tokens), 32 text tokens, f32 and bf16, same threads on both sides;
       ours/upstream wall time, target <= 1.0.
  gpu  one step of the full DiT (60 blocks), bf16, 1024x1024 (4096 image tokens), 32 text
       tokens; ours/upstream step latency, target <= 0.8; and each side's TFLOP/s against the
       GEMM ceiling, our bf16 8192^3 linear (cuBLASLt, kernels_bench) measured in the same run.

Each row runs ours and the anchor alternately, --rounds times, and keeps each side's best
median (bench/common/compare_util.py): a neighbour's burst then spoils one round, not
the ratio. Standard library only; every row prints even where the upstream package or the GPU
is missing.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from compare_util import alternate, fmt_ms, run_one, why  # noqa: E402  (bench/common)
from compare_util import verdict as verdict_of  # noqa: E402

GEMM = "--op linear --m 8192 --k 8192 --n 8192 --dtype bf16 --warmup 5 --iters 20"


def rows(a):
    if a.suite == "cpu":
        shape = f"--layers {a.layers} --height 256 --width 256 --text-tokens 32"
        return [dict(name=f"DiT {a.layers} layers f32, 256 img + 32 txt tokens",
                     args=f"--dtype f32 {shape}", target=1.0),
                dict(name=f"DiT {a.layers} layers bf16, 256 img + 32 txt tokens",
                     args=f"--dtype bf16 {shape}", target=1.0)]
    layers = a.layers or 60
    return [dict(name=f"DiT {layers} layers bf16, 4096 img + 32 txt tokens",
                 args=f"--dtype bf16 --layers {layers} --height 1024 --width 1024 "
                      "--text-tokens 32", target=0.8)]


def main(argv, rows=rows, name="qwen_image_dit", model_fn="model_fn_qwen_image", anchor=None,
         doc=__doc__):
    """The driver for one model bench: `rows(args)` gives its rows, `anchor` its upstream
    script (default: this folder's upstream_anchor.py); bench/wan_video_dit/compare.py calls
    it with its own."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--suite", choices=["cpu", "gpu"], required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--python", default=None, help="a Python with diffsynth; none: ours alone")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=None, help="default: 2 on cpu, 1 on gpu")
    p.add_argument("--layers", type=int, default=None, help="default: 2 on cpu, 60 on gpu")
    p.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    p.add_argument("--kernels-bench", default=None, help="kernels_bench, for the GEMM ceiling")
    p.add_argument("--log", default=None, help="append every JSON result here")
    a = p.parse_args(argv)
    if a.suite == "cpu":
        a.layers = a.layers or 2
    rounds = a.rounds or (2 if a.suite == "cpu" else 1)
    backend = "cpu" if a.suite == "cpu" else "cuda"
    common = ["--backend", backend, "--threads", str(a.threads), "--repeats", str(a.repeats)]
    log = open(a.log, "a") if a.log else None
    anchor = anchor or os.path.join(HERE, "upstream_anchor.py")

    ceiling = None
    if a.suite == "gpu" and a.kernels_bench:
        ceiling = run_one([a.kernels_bench, "--backend", "cuda"] + GEMM.split(), a.timeout, log)
    ceil_tf = ceiling["tflops"] if ceiling and ceiling.get("status") == "ok" else None

    print(f"bench/{name} {a.suite.upper()}: ours vs upstream DiffSynth-Studio "
          f"({model_fn}), {backend}"
          + (f", {a.threads} threads" if a.suite == "cpu" else "")
          + f", best of {rounds} alternating rounds of median-of-{a.repeats} after warm-up",
          flush=True)
    print(f"{'benchmark':<44} {'ours':>12} {'upstream':>12} {'ours/up':>8}  {'target':<7} "
          "verdict", flush=True)
    missed = measured = 0
    notes = []
    for row in rows(a):
        args = common + row["args"].split()
        ours, ref = alternate([a.bench] + args, a.python and [a.python, anchor] + args, rounds,
                              lambda cmd: run_one(cmd, a.timeout, log))
        ratio, verdict, miss = verdict_of(ours, ref, row["target"])
        missed += miss
        measured += ours.get("status") == "ok"
        r = f"{ratio:.2f}" if ratio is not None else "-"
        load = f"  (load {os.getloadavg()[0]:.1f})" if a.suite == "cpu" else ""
        print(f"{row['name']:<44} {fmt_ms(ours):>12} {fmt_ms(ref):>12} {r:>8}  "
              f"<= {row['target']:.2f} {verdict}{load}", flush=True)
        if a.suite == "gpu":
            for who, res in (("ours", ours), ("upstream", ref)):
                if res.get("status") == "ok":
                    frac = f", {res['tflops'] / ceil_tf:.2f} of the GEMM ceiling" if ceil_tf else ""
                    notes.append(f"  {who}: {res['tflops']:.1f} TF/s{frac}")
        if ours.get("gemm"):
            notes.append(f"our GEMMs: {ours['gemm']}")
    if a.suite == "gpu":
        notes.insert(0, "GEMM ceiling (our bf16 8192^3 linear, cuBLASLt): "
                     + (f"{ceil_tf:.1f} TF/s" if ceil_tf else
                        why(ceiling or {"status": "missing", "message": "no kernels_bench"},
                            "kernels_bench")))
    for n in dict.fromkeys(notes):
        print(n)
    print(f"{len(rows(a))} rows: {measured} measured, {missed} below target")
    if log:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
