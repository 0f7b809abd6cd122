#!/usr/bin/env python3
"""Load on diffsynth-http (stdlib only): 32 concurrent HTTP clients x 4 image requests each.

Every answer must be a whole, correct PNG of the asked size (200) or a 429 with Retry-After
when the gateway's job limit is reached; nothing else. The gateway's and the daemon's resident
memory must stay bounded (read from /proc with the pids the driver exports as
DS_GATEWAY_PID and DS_DAEMON_PID).

Run by tests/http/test_http_gateway.c --load against the keyed gateway (--max-jobs 16):
usage: load_test.py load OPEN_URL KEYED_URL KEY [CLIENTS REQUESTS]
"""
import base64
import collections
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gateway_test import png_size, request  # noqa: E402

# Bounds with room for a busy machine: the gateway holds at most --max-jobs results of a few
# KiB; the daemon's anonymous memory, measured after one warm-up run, may grow by what
# concurrently admitted jobs' activations leave in malloc's arenas.
GATEWAY_RSS_MAX = 256 << 20
DAEMON_GROWTH_MAX = 512 << 20


def rss(pid_var, field="VmRSS"):
    """Resident bytes; RssAnon leaves out the mapped model files, whose pages count once touched."""
    pid = os.environ.get(pid_var)
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def main():
    _, _, keyed, key = sys.argv[1:5]
    clients = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    per_client = int(sys.argv[6]) if len(sys.argv) > 6 else 4
    headers = {"Authorization": "Bearer " + key}
    status, _, raw = request(keyed, "POST", "/v1/images/generations",
                             {"prompt": "warm-up", "size": "16x32", "steps": 2, "cfg_scale": 1}, headers)
    if status != 200:
        sys.exit(f"the warm-up request failed: {status} {raw[:300]!r}")
    daemon_before = rss("DS_DAEMON_PID", "RssAnon")
    outcomes = collections.Counter()
    problems = []
    lock = threading.Lock()
    latencies = []

    def client(c):
        for r in range(per_client):
            seed = c * 100 + r
            size = (16, 32) if (c + r) % 2 else (32, 16)
            body = {"prompt": f"load {c} {r}", "size": f"{size[0]}x{size[1]}", "steps": 2,
                    "cfg_scale": 1, "seed": seed, "response_format": "b64_json"}
            started = time.time()
            status, hdrs, raw = request(keyed, "POST", "/v1/images/generations", body, headers, timeout=600)
            took = time.time() - started
            problem = None
            if status == 200:
                try:
                    doc = json.loads(raw)
                    got = png_size(base64.b64decode(doc["data"][0]["b64_json"]))
                    if got != size or doc["data"][0].get("seed") != seed:
                        problem = f"client {c} request {r}: PNG {got} seed {doc['data'][0].get('seed')}, expected {size} {seed}"
                except (ValueError, KeyError, IndexError) as e:
                    problem = f"client {c} request {r}: a broken 200 reply ({e}): {raw[:200]!r}"
            elif status == 429:
                if not hdrs.get("Retry-After", "").isdigit():
                    problem = f"client {c} request {r}: 429 without Retry-After"
            else:
                problem = f"client {c} request {r}: status {status}: {raw[:300]!r}"
            with lock:
                outcomes[status] += 1
                latencies.append(took)
                if problem:
                    problems.append(problem)

    started = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    wall = time.time() - started
    latencies.sort()
    print(f"{clients} clients x {per_client} requests in {wall:.1f} s: {dict(outcomes)}; "
          f"latency median {latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.2f} s", flush=True)
    gateway_rss, daemon_after = rss("DS_GATEWAY_PID"), rss("DS_DAEMON_PID", "RssAnon")
    print(f"RSS: gateway {gateway_rss and gateway_rss >> 20} MiB; daemon anonymous {daemon_before and daemon_before >> 20}"
          f" -> {daemon_after and daemon_after >> 20} MiB", flush=True)
    if sum(outcomes.values()) != clients * per_client:
        problems.append(f"{clients * per_client - sum(outcomes.values())} requests got no answer")
    if outcomes[200] == 0:
        problems.append("no request succeeded")
    if gateway_rss is not None and gateway_rss > GATEWAY_RSS_MAX:
        problems.append(f"gateway RSS {gateway_rss >> 20} MiB over {GATEWAY_RSS_MAX >> 20} MiB")
    if daemon_before and daemon_after and daemon_after - daemon_before > DAEMON_GROWTH_MAX:
        problems.append(f"daemon anonymous RSS grew {(daemon_after - daemon_before) >> 20} MiB")
    status, _, _ = request(keyed, "GET", "/healthz")
    if status != 200:
        problems.append(f"/healthz after the load: {status}")
    for p in problems[:20]:
        print("FAIL:", p, flush=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
