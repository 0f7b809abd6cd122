"""Anchor for bench/identify: upstream DiffSynth-Studio's own hash_model_file, timed in-process.

Run with a Python that has the upstream package installed (`pip install diffsynth` into a private
venv; never in CI). Prints one JSON line: the hash and the median / min seconds per call.
"""
import json
import statistics
import sys
import time

from diffsynth.core.loader.file import hash_model_file


def main():
    repeats = int(sys.argv[1])
    paths = sys.argv[2:]
    target = paths if len(paths) > 1 else paths[0]
    model_hash = hash_model_file(target)  # warm-up: imports, page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        hash_model_file(target)
        times.append(time.perf_counter() - start)
    print(json.dumps({"model_hash": model_hash, "median_s": statistics.median(times),
                      "min_s": min(times), "repeats": repeats}))


if __name__ == "__main__":
    main()
