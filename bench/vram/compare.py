"""bench/vram GPU driver: runs vram_bench (ours) with fp8 and with bf16 slow-tier storage under
one vram_limit, and upstream_anchor.py (upstream DiffSynth-Studio's dynamic VRAM mode at the
same limit), one after the other on the same GPU, and prints one table whose ratios are the
results (DESIGN §7).

usage: compare.py --bench BUILD/bench/vram_bench [--python PY_WITH_DIFFSYNTH] [--layers N]
                  [--budget-gib G] [--repeats N] [--timeout S] [--log FILE]

Rows: ours all-resident (the unlimited manager) and under the budget, each with fp8 storage
(vram_config offload / onload / preparing float8_e4m3fn on the cpu, computation bf16 on cuda)
and with the weights' own bf16; upstream under the same budget with fp8 storage. Columns: the
fastest step; budget / all-resident; the manager's streaming rate as a fraction of the pinned
copy bandwidth measured in the same process (target >= 0.8); the share of copy time hidden
behind compute (target >= 0.9); upstream / ours at the same budget and storage (target >= 2).
The runs go one after the other: each holds the GPU and 40 GB or more of host memory.
Standard library only; every row prints even where the upstream package or the GPU is missing.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FP8 = json.dumps({"offload_dtype": "float8_e4m3fn", "offload_device": "cpu",
                  "onload_dtype": "float8_e4m3fn", "onload_device": "cpu",
                  "preparing_dtype": "float8_e4m3fn", "preparing_device": "cuda",
                  "computation_dtype": "bfloat16", "computation_device": "cuda"})
TARGET_STREAM, TARGET_HIDDEN, TARGET_UPSTREAM = 0.8, 0.9, 2.0


def run(cmd, timeout, log):
    """Every JSON line of one run, and a status: ok, unavailable (exit 77), or what failed."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], f"timeout: no result within {timeout} s"
    except OSError as e:
        return [], f"error: {e}"
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    if log:
        log.write(json.dumps({"cmd": cmd, "rc": p.returncode, "lines": lines,
                              "stderr": p.stderr[-4000:]}) + "\n")
        log.flush()
    if p.returncode == 77:
        msg = lines[-1].get("message", "unavailable") if lines else "unavailable"
        return lines, f"unavailable: {msg}"
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return lines, f"exit {p.returncode}: {tail}"
    return lines, "ok"


def fmt(v, spec, unit=""):
    return "-" if v is None else f"{v:{spec}}{unit}"


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", required=True)
    p.add_argument("--python", default=None, help="a Python with diffsynth; none: ours alone")
    p.add_argument("--layers", type=int, default=60)
    p.add_argument("--budget-gib", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--log", default=None, help="append every JSON result here")
    a = p.parse_args(argv)
    log = open(a.log, "a") if a.log else None
    shape = ["--layers", str(a.layers), "--height", "1024", "--width", "1024",
             "--text-tokens", "32", "--repeats", str(a.repeats)]
    budget = f"{a.budget_gib:g}GiB"
    ours_cmd = [a.bench, "--backend", "cuda", "--budget-gib", f"{a.budget_gib:g}"] + shape

    print(f"bench/vram GPU: QwenImageDiT {a.layers} blocks, random bf16 weights, 1024x1024 "
          f"(4096 image tokens) + 32 text tokens, vram_limit {a.budget_gib:g} GiB; fastest of "
          f"{a.repeats} steps after a warm-up", flush=True)
    runs = {}
    for storage, extra in (("fp8", ["--vram-config", FP8]), ("bf16", [])):
        lines, status = run(ours_cmd + extra, a.timeout, log)
        rows = {r["budget"]: r for r in lines if "budget" in r}
        summary = next((r for r in lines if r.get("summary")), {})
        runs[storage] = (rows, summary, status)
    up, up_status = None, "no upstream Python given"
    if a.python:
        lines, up_status = run([a.python, os.path.join(HERE, "upstream_anchor.py"),
                                "--backend", "cuda", "--storage", "fp8", "--vram-limit",
                                f"{a.budget_gib:g}"] + shape, a.timeout, log)
        up = lines[-1] if lines and up_status == "ok" else None

    print(f"{'configuration':<30} {'step':>11} {'vs resident':>12} {'stream/pinned':>14} "
          f"{'hidden':>7} {'upstream/ours':>14}")
    verdicts = []
    for storage in ("fp8", "bf16"):
        rows, summary, status = runs[storage]
        if status != "ok" and not rows:
            print(f"{'ours, ' + storage + ' storage':<30} not measured ({status})")
            continue
        resident = rows.get("unlimited")
        pinned = summary.get("pinned_gbps")
        for name, r in (("all-resident", resident), (budget, rows.get(budget))):
            if not r:
                continue
            ratio = r["min_ms"] / resident["min_ms"] if resident and r is not resident else None
            frac = r.get("stream_fraction_of_pinned")
            hidden = r.get("hidden_share")
            vs_up = (up["min_ms"] / r["min_ms"] if up and storage == "fp8" and r is not resident
                     else None)
            print(f"{'ours ' + name + ', ' + storage:<30} {fmt(r['min_ms'], '.1f', ' ms'):>11} "
                  f"{fmt(ratio, '.2f', 'x'):>12} {fmt(frac, '.2f'):>14} {fmt(hidden, '.2f'):>7} "
                  f"{fmt(vs_up, '.2f', 'x'):>14}")
            if r is not resident:
                if frac is not None:
                    verdicts.append(f"{storage}: stream {frac:.2f} of pinned "
                                    f"({r.get('stream_gbps', 0):.1f} of {pinned or 0:.1f} GB/s) "
                                    + ("ok" if frac >= TARGET_STREAM else "MISSED")
                                    + f" (>= {TARGET_STREAM})")
                if hidden is not None:
                    verdicts.append(f"{storage}: hidden share {hidden:.2f} "
                                    + ("ok" if hidden >= TARGET_HIDDEN else "MISSED")
                                    + f" (>= {TARGET_HIDDEN})")
                if vs_up is not None:
                    verdicts.append(f"{storage}: upstream / ours {vs_up:.2f}x "
                                    + ("ok" if vs_up >= TARGET_UPSTREAM else "MISSED")
                                    + f" (>= {TARGET_UPSTREAM}x)")
                if r.get("bit_identical") is False:
                    verdicts.append(f"{storage}: the budgeted output differs from all-resident")
        if status != "ok":
            verdicts.append(f"ours, {storage} storage: {status}")
    if up:
        print(f"{'upstream ' + budget + ', fp8':<30} {fmt(up['min_ms'], '.1f', ' ms'):>11} "
              f"{'':>12} {'':>14} {'':>7} {'1.00x':>14}   ({up.get('modules_on_device')} of "
              f"{up.get('modules_wrapped')} modules kept on the GPU, torch {up.get('torch')})")
    else:
        print(f"{'upstream ' + budget + ', fp8':<30} not measured ({up_status})")
    for v in verdicts:
        print("  " + v)
    if log:
        log.close()
    fp8_status = runs["fp8"][2]
    return 77 if fp8_status.startswith("unavailable") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
