"""Cold vs warm wall time of `jaxcalc run all --quick` with the persistent compilation cache.

Each run is its own process (a fresh interpreter, as a user would start it). The cache folder is
new for the cold run and reused by the warm runs. Target: warm <= 60% of cold.

    python benchmarks/bench_cache.py [--runs 2] [--only name,name]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _timed_run(cache_dir: str, out_dir: str, only: str | None) -> float:
    cmd = [sys.executable, "-m", "jaxcalc", "run", "all", "--quick", "--out", out_dir]
    if only:
        cmd += ["--only", only]
    env = dict(os.environ, JAXCALC_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"run failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="cold/warm pairs, each with a new cache")
    parser.add_argument("--only", default=None, help="comma-separated experiment names")
    args = parser.parse_args()

    import jax

    cold, warm = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "cache")
            cold.append(_timed_run(cache, os.path.join(tmp, "cold"), args.only))
            warm.append(_timed_run(cache, os.path.join(tmp, "warm"), args.only))
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"device: {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); {os.cpu_count()} CPU cores; "
          f"{args.runs} cold/warm pair(s), each a fresh process and a fresh cache folder")
    print()
    print("| workload | cold (s) | warm (s) | warm / cold | notes |")
    print("|---|---|---|---|---|")
    print(f"| `jaxcalc run all --quick{' --only ' + args.only if args.only else ''}` | {c:.1f} "
          f"[{min(cold):.1f}–{max(cold):.1f}] | {w:.1f} [{min(warm):.1f}–{max(warm):.1f}] | {w / c:.2f} | "
          f"target warm <= 0.60 × cold; process start + imports included |")


if __name__ == "__main__":
    main()
