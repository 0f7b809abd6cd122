"""bench/kernels driver: runs kernels_bench (ours) and its anchor for each row of a suite, in the
same run, and prints one table whose ratios are the results (DESIGN §7).

usage: compare.py --suite cpu|gpu --bench BUILD/bench/kernels_bench [--python PY_WITH_TORCH]
                  [--threads N] [--repeats N] [--rounds N] [--timeout S] [--log FILE]

Each row runs ours and its anchor alternately, --rounds times, and keeps each side's best
median: on a shared machine a neighbour's burst then spoils one round, not the ratio.

Standard library only: the anchor runs in its own process under --python (torch_anchor.py), so
this works, and still prints every row, where torch or the GPU is missing.

  cpu  ours/torch wall time per call, target <= 1.0: linear 3072x3072 on 4096 tokens (f32, bf16
       weights with f32 activations, bf16) and attention B1 H24 D128 S4096 non-causal (f32,
       bf16), and rms_norm, modulate and gated_residual in bf16 on [1, 4096, 3072]. Each row
       ends with the machine's 1-minute load average when it finished.
  gpu  bf16 GEMM 8192^3 TFLOP/s vs torch.matmul (>= 0.95); attention bf16 S4096 and S8192,
       H24 D128, TFLOP/s (4 B H S^2 D) vs F.scaled_dot_product_attention (>= 0.70); rms_norm,
       modulate and gated_residual on [1, 8192, 3072] bf16, effective GB/s vs our own
       device-to-device copy of 1 GiB through the backend (cudaMemcpyAsync) measured in the same
       run (>= 0.70); the copy row itself compares with torch's copy_, as a check on the timing.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from compare_util import best, run_one, why  # noqa: E402  (bench/common/compare_util.py)

# The bf16 norm and elementwise rows on the CPU: a DiT-sized activation, several calls per sample.
ELEM = "--tokens 4096 --dim 3072 --dtype bf16 --iters 5"
FUSED = "--tokens 8192 --dim 3072 --dtype bf16 --warmup 20 --iters 100 --sets 4"


def cpu_rows():
    lin = "--op linear --m 4096 --k 3072 --n 3072 --bias"
    att = "--op attention --batch 1 --seq 4096 --heads 24 --head-dim 128"
    return [
        dict(name="linear f32 4096x3072 @ 3072x3072^T +bias", args=lin + " --dtype f32",
             metric="ms", anchor="torch", target=1.0),
        dict(name="linear f32, bf16 weights, same shape",
             args=lin + " --dtype f32 --weight-dtype bf16", metric="ms", anchor="torch",
             target=1.0),
        dict(name="linear bf16, same shape", args=lin + " --dtype bf16", metric="ms",
             anchor="torch", target=1.0),
        dict(name="attention f32 B1 S4096 H24 D128", args=att + " --dtype f32", metric="ms",
             anchor="torch", target=1.0),
        dict(name="attention bf16 B1 S4096 H24 D128", args=att + " --dtype bf16", metric="ms",
             anchor="torch", target=1.0),
        dict(name="rms_norm bf16 [1,4096,3072]", args="--op rms_norm " + ELEM, metric="ms",
             anchor="torch", target=1.0),
        dict(name="modulate bf16 [1,4096,3072]", args="--op modulate " + ELEM, metric="ms",
             anchor="torch", target=1.0),
        dict(name="gated_residual bf16 [1,4096,3072]", args="--op gated_residual " + ELEM,
             metric="ms", anchor="torch", target=1.0),
    ]


def gpu_rows():
    att = "--op attention --batch 1 --heads 24 --head-dim 128 --dtype bf16 --warmup 3"
    return [
        dict(name="gemm bf16 8192^3 (linear, cuBLASLt)", metric="tflops", anchor="torch",
             target=0.95, args="--op linear --m 8192 --k 8192 --n 8192 --dtype bf16 "
                               "--warmup 5 --iters 20"),
        dict(name="attention bf16 S4096 H24 D128", metric="tflops", anchor="torch", target=0.70,
             args=att + " --seq 4096 --iters 20"),
        dict(name="attention bf16 S8192 H24 D128", metric="tflops", anchor="torch", target=0.70,
             args=att + " --seq 8192 --iters 10"),
        dict(name="d2d copy 1 GiB (anchor below)", metric="gbps", anchor="torch", target=None,
             args="--op copy --bytes 1073741824 --warmup 3 --iters 20", key="copy"),
        dict(name="rms_norm bf16 [1,8192,3072]", metric="gbps", anchor="copy", target=0.70,
             args="--op rms_norm " + FUSED),
        dict(name="modulate bf16 [1,8192,3072]", metric="gbps", anchor="copy", target=0.70,
             args="--op modulate " + FUSED),
        dict(name="gated_residual bf16 [1,8192,3072]", metric="gbps", anchor="copy", target=0.70,
             args="--op gated_residual " + FUSED),
    ]


def value(result, metric):
    if result.get("status") != "ok":
        return None
    return result["median_ms"] if metric == "ms" else result[metric]


def fmt(v, metric):
    if v is None:
        return "-"
    return {"ms": f"{v:.1f} ms", "tflops": f"{v:.1f} TF/s", "gbps": f"{v:.0f} GB/s"}[metric]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=["cpu", "gpu"], required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--python", default=None, help="a Python with torch; none: ours alone")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=None, help="default: 2 on cpu, 1 on gpu")
    p.add_argument("--timeout", type=int, default=300, help="seconds per measurement")
    p.add_argument("--log", default=None, help="append every JSON result here")
    a = p.parse_args(argv)

    backend = "cpu" if a.suite == "cpu" else "cuda"
    rounds = a.rounds or (2 if a.suite == "cpu" else 1)
    rows = cpu_rows() if a.suite == "cpu" else gpu_rows()
    common = ["--backend", backend, "--threads", str(a.threads), "--repeats", str(a.repeats)]
    log = open(a.log, "a") if a.log else None

    # Rows are printed as they complete, so a run stopped at its time limit still shows some.
    if a.suite == "cpu":
        print(f"bench/kernels CPU: {a.threads} threads, our CPU backend vs torch, same machine, "
              f"same run, best of {rounds} alternating rounds of median-of-{a.repeats} after "
              "warm-up", flush=True)
    else:
        print("bench/kernels GPU: our CUDA backend vs anchors measured in the same run "
              "(timing: monotonic clock around N calls + synchronize, both sides)", flush=True)
    ratio_name = "ours/torch" if a.suite == "cpu" else "ours/anchor"
    print(f"{'benchmark':<42} {'ours':>12} {'anchor':>12} {ratio_name:>11}  {'target':<8} "
          "verdict / anchor", flush=True)
    anchors = {}
    missed = measured = 0
    gemm = anchor_cpu = None
    for row in rows:
        args = common + row["args"].split()
        ours = ref = None
        for _ in range(rounds):
            ours = best(ours, run_one([a.bench] + args, a.timeout, log))
            if row["anchor"] == "torch" and a.python:
                ref = best(ref, run_one([a.python, os.path.join(HERE, "torch_anchor.py")] + args,
                                        a.timeout, log))
        if row["anchor"] == "torch":
            ref = ref or {"status": "missing", "message": "no torch here"}
            ref_name = "torch " + ref.get("torch", "")
        else:
            ref, ref_name = anchors.get(row["anchor"], {"status": "missing"}), "our d2d copy"
        if "key" in row:
            anchors[row["key"]] = ours
        gemm = gemm or ours.get("gemm")
        anchor_cpu = anchor_cpu or ref.get("cpu")

        mo, mr = value(ours, row["metric"]), value(ref, row["metric"])
        ratio = mo / mr if mo is not None and mr else None
        target = row["target"]
        cmp = "<=" if row["metric"] == "ms" else ">="
        tgt = f"{cmp} {target:.2f}" if target is not None else "-"
        if mo is None:
            verdict = why(ours, "ours")
        elif ratio is None:
            verdict = f"ours alone ({why(ref, ref_name)})"
        elif target is None:
            verdict = f"vs {ref_name}"
        else:
            good = ratio <= target if cmp == "<=" else ratio >= target
            verdict = ("ok" if good else "MISSED") + f" vs {ref_name}"
            missed += not good
        if ours.get("status") == "bad_output":
            verdict = "ours left outputs unwritten (NaN)"
            missed += 1
        measured += mo is not None
        r = f"{ratio:.2f}" if ratio is not None else "-"
        load = f"  (load {os.getloadavg()[0]:.1f})" if a.suite == "cpu" else ""
        print(f"{row['name']:<42} {fmt(mo, row['metric']):>12} {fmt(mr, row['metric']):>12} "
              f"{r:>11}  {tgt:<8} {verdict}{load}", flush=True)
        if ours.get("gemm_path"):
            print(f"  our path: {ours['gemm_path']}", flush=True)
    if log:
        log.close()
    if gemm:
        print(f"our GEMMs: {gemm}"
              + ("  <- generic kernels: OpenBLAS did not recognise this CPU (try "
                 "OPENBLAS_CORETYPE=SkylakeX or Haswell)" if "Prescott" in gemm else ""))
    if anchor_cpu:
        print(f"torch's CPU kernels: {anchor_cpu}")
    print(f"{len(rows)} rows: {measured} measured, {missed} below target")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
