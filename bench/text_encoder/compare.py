"""bench/text_encoder driver: runs te_bench (ours) and upstream_anchor.py (upstream
DiffSynth-Studio) alternately for each row, in the same run, and prints one table whose ratios
are the results (DESIGN §7).

usage: compare.py --suite cpu|gpu --bench BUILD/bench/te_bench [--python PY_WITH_DIFFSYNTH]
                  [--threads N] [--repeats N] [--rounds N] [--layers N] [--timeout S]
                  [--tokenizer DIR] [--log FILE]

  cpu  encode_prompt of a 60-token prompt on the reduced encoder (--layers decoder layers at
       full width, default 2), f32, same threads on both sides; ours/upstream wall time,
       target <= 1.0.
  gpu  the same prompt on the full encoder (28 layers), bf16, on the GPU; ours/upstream
       latency, target <= 0.8.

Each row runs ours and the anchor alternately, --rounds times, and keeps each side's best
median (bench/common/compare_util.py). Standard library only; every row prints even
where the upstream package or the GPU is missing.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from compare_util import alternate, fmt_ms, run_one, why  # noqa: E402  (bench/common)
from compare_util import verdict as verdict_of  # noqa: E402


def rows(a):
    if a.suite == "cpu":
        return [dict(name=f"encode_prompt {a.layers} layers {dtype}, 60-token prompt",
                     args=f"--dtype {dtype} --layers {a.layers}", target=1.0)
                for dtype in ("f32", "bf16")]
    return [dict(name=f"encode_prompt {a.layers} layers bf16, 60-token prompt",
                 args=f"--dtype bf16 --layers {a.layers}", target=0.8)]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=["cpu", "gpu"], required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--python", default=None, help="a Python with diffsynth; none: ours alone")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--layers", type=int, default=None, help="default: 2 on cpu, 28 on gpu")
    p.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    p.add_argument("--tokenizer", default=os.path.join(HERE, "..", "..", "tests", "data",
                                                       "qwen_tokenizer"))
    p.add_argument("--log", default=None, help="append every JSON result here")
    a = p.parse_args(argv)
    a.layers = a.layers or (2 if a.suite == "cpu" else 28)
    backend = "cpu" if a.suite == "cpu" else "cuda"
    common = ["--backend", backend, "--threads", str(a.threads), "--repeats", str(a.repeats),
              "--tokenizer", a.tokenizer]
    log = open(a.log, "a") if a.log else None
    anchor = os.path.join(HERE, "upstream_anchor.py")

    print(f"bench/text_encoder {a.suite.upper()}: ours vs upstream DiffSynth-Studio "
          f"(QwenImageUnit_PromptEmbedder), {backend}"
          + (f", {a.threads} threads" if a.suite == "cpu" else "")
          + f", best of {a.rounds} alternating rounds of median-of-{a.repeats} after warm-up",
          flush=True)
    print(f"{'benchmark':<44} {'ours':>12} {'upstream':>12} {'ours/up':>8}  {'target':<7} "
          "verdict", flush=True)
    missed = measured = 0
    for row in rows(a):
        args = common + row["args"].split()
        ours, ref = alternate([a.bench] + args, a.python and [a.python, anchor] + args, a.rounds,
                              lambda cmd: run_one(cmd, a.timeout, log))
        ratio, verdict, miss = verdict_of(ours, ref, row["target"])
        missed += miss
        measured += ours.get("status") == "ok"
        r = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"{row['name']:<44} {fmt_ms(ours):>12} {fmt_ms(ref):>12} {r:>8}  "
              f"<= {row['target']:.2f} {verdict}", flush=True)
    print(f"{len(rows(a))} rows: {measured} measured, {missed} below target")
    if log:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
