"""bench/common/compare_util: what every compare.py shares: running one measurement (ours or an
anchor) for its JSON line, keeping the better of rounds, and the verdict of ours against an
anchor. Standard library only: compare.py runs with the system Python, the anchors in a venv."""
import json
import subprocess


def run_one(cmd, timeout, log):
    """Runs one measurement; returns its JSON line as a dict, or a dict saying what went wrong."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        result = {"status": "timeout", "message": f"no result within {timeout} s"}
    except OSError as e:
        result = {"status": "error", "message": str(e)}
    else:
        lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
        if lines:
            result = json.loads(lines[-1])
        else:
            tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
            result = {"status": "error", "message": f"exit {p.returncode}: {tail}"}
        if p.stderr.strip() and log:
            log.write(json.dumps({"stderr_of": cmd, "stderr": p.stderr[-4000:]}) + "\n")
    if log:
        log.write(json.dumps({"cmd": cmd, "result": result}) + "\n")
        log.flush()
    return result


def best(old, new):
    """The faster of two results of one measurement; an unwritten output in any round wins (it
    is a wrong result, not a slow one), another failure only when both rounds failed."""
    if old is None:
        return new
    for r in (old, new):
        if r.get("status") == "bad_output":
            return r
    if old.get("status") != "ok" or new.get("status") != "ok":
        return old if old.get("status") == "ok" else new
    return new if new["median_ms"] < old["median_ms"] else old


def why(result, who):
    status = result.get("status", "?")
    if status == "unavailable":
        return "no GPU" if who == "ours" else f"{who}: {result.get('message', 'unavailable')}"
    return f"{who} {status}: {result.get('message', '')}".strip().rstrip(":")


def fmt_ms(r):
    return f"{r['median_ms']:.1f} ms" if r and r.get("status") == "ok" else "-"


def alternate(ours_cmd, anchor_cmd, rounds, measure):
    """Ours and the anchor (None: ours alone) in alternating rounds, so that both see the same
    machine load; the best round of each, as best() picks it."""
    ours = ref = None
    for _ in range(rounds):
        ours = best(ours, measure(ours_cmd))
        if anchor_cmd:
            ref = best(ref, measure(anchor_cmd))
    return ours, ref or {"status": "missing", "message": "no upstream Python given"}


def verdict(ours, ref, target):
    """(ratio or None, verdict text, 1 if a measured ratio missed the target else 0)."""
    ok_o, ok_r = ours.get("status") == "ok", ref.get("status") == "ok"
    ratio = ours["median_ms"] / ref["median_ms"] if ok_o and ok_r else None
    if not ok_o:
        return ratio, why(ours, "ours"), 0
    if ratio is None:
        return ratio, f"ours alone ({why(ref, 'upstream')})", 0
    good = ratio <= target
    text = ("ok" if good else "MISSED") + f" vs upstream, torch {ref.get('torch', '?')}"
    return ratio, text, 0 if good else 1
