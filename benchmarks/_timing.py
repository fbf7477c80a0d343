"""Timing helpers shared by the benchmark scripts (each script runs its sides in subprocesses)."""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time


def cpu_name() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def timeit(fn, repeats: int) -> list[float]:
    """Seconds per call of ``fn()`` (which must block on its result), ``repeats`` times."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def fmt_times(times, unit: str = "ms") -> tuple[str, float]:
    """``("median unit [min–max]", median seconds)``."""
    f = {"ms": 1e3, "s": 1.0, "us": 1e6}[unit]
    med = statistics.median(times)
    return f"{med * f:.3g} {unit} [{min(times) * f:.3g}–{max(times) * f:.3g}]", med


def spawn_worker(script: str, name: str, *, env=None, python: str | None = None) -> dict:
    """Run ``python script --worker name`` in a fresh process; its last stdout line is JSON."""
    result = subprocess.run([python or sys.executable, script, "--worker", name], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"worker {name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def merge_runs(runs: list[dict]) -> dict:
    """Pool several process runs of one worker: timings and final losses concatenated, compile median."""
    if "skipped" in runs[0]:
        return runs[0]
    merged = dict(runs[-1])
    for key, val in runs[0].items():
        if key == "times" or key.endswith("_times") or (key == "final_loss" and isinstance(val, list)):
            merged[key] = [v for r in runs for v in r[key]]
        elif key == "compile":
            merged["compile"] = statistics.median(r["compile"] for r in runs)
            merged["compiles"] = [r["compile"] for r in runs]
        elif isinstance(val, dict) and "times" in val:
            merged[key] = merge_runs([r[key] for r in runs])
    return merged


def run_alternating(names, runs: int, spawn) -> dict:
    """``runs`` process runs of each worker in ``names``, alternating sides one process at a time; pooled."""
    results = {n: [] for n in names}
    for _ in range(runs):
        for n in names:
            results[n].append(spawn(n))
    return {n: merge_runs(v) for n, v in results.items()}
