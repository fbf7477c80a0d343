"""Benchmark: what jaxcalc.diagnose costs, and what it finds beside ``jax_debug_nans``.

Cost (the issue's target: at most 10x one ``jax.grad`` call plus compile). Workload: the MLP 784-256-10
(relu, He init) with softmax cross-entropy on a batch of 256 random float32 images, 203,530 parameters.

* ``jax.grad``: the first call of ``jax.jit(jax.grad(loss))`` (trace + compile + run); the steady call apart.
* ``diagnose`` (healthy loss): value and gradient with their float64 shadow, and the relu rule check.
* ``diagnose, local_errors="always"``: plus every equation's local error (the precision program).
* ``diagnose`` of a broken loss (the where-trap below: gradient NaN): plus the non-finite origin program.

Each ``diagnose`` call traces and compiles its programs afresh (nothing cached between calls).

What each tool finds, on the same MLP: (1) a naive softmax, ``exp(z)/sum(exp(z))``, at logits of order 100
(forward overflow); (2) the where-trap: a ``jnp.where(a > 0, sqrt(a), 0)`` activation (sqrt of the negative
pre-activations is computed and discarded: the loss is fine, its gradient NaN); (3) the where-trap with no
NaN in the forward pass: an entropy term ``where(p > 0, log(p), 0)`` where softmax probabilities underflow to 0
(``log(0) = -inf`` discarded; backward ``0/0``); (4) a NaN in an untaken ``jnp.where`` branch that never reaches
the loss or its gradient (``sqrt`` of negative data). ``jax_debug_nans`` runs ``jax.value_and_grad`` under
``jax.jit`` and eagerly (op by op); the reported line is the innermost frame of this file in its traceback.

Every side runs in its own subprocess, one at a time, ``--runs`` times. Run::

    python benchmarks/bench_diagnose.py            # --runs N --reps N
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

from _timing import cpu_name, run_alternating  # benchmarks/_timing.py (script folder)

SIZES = (784, 256, 10)
BATCH = 256
HERE = os.path.abspath(__file__)


def _problem():
    import jax
    import jax.numpy as jnp

    from jaxcalc.models import mlp

    k = jax.random.split(jax.random.key(0), 3)
    params = mlp.init_mlp(k[0], SIZES)
    x = jax.random.normal(k[1], (BATCH, SIZES[0]))
    y = jax.random.randint(k[2], (BATCH,), 0, SIZES[-1])
    return params, x, y, jnp


def _losses():
    import jax
    import jax.numpy as jnp

    from jaxcalc import losses
    from jaxcalc.models.mlp import mlp_apply

    def healthy(params, x, y):
        return losses.cross_entropy(mlp_apply(params, x), y)

    def naive_softmax(params, x, y):
        z = 100.0 * mlp_apply(params, x)
        e = jnp.exp(z)  # naive-softmax
        p = e / jnp.sum(e, axis=1, keepdims=True)
        return -jnp.mean(jnp.log(jnp.take_along_axis(p, y[:, None], axis=1)))

    def where_trap(params, x, y):
        (w1, b1), (w2, b2) = params
        a = x @ w1 + b1[None, :]
        soft = jnp.where(a > 0, jnp.sqrt(a), 0.0)  # where-trap
        return losses.cross_entropy(soft @ w2 + b2[None, :], y)

    def where_log0(params, x, y):
        logits = mlp_apply(params, x)
        p = jax.nn.softmax(30.0 * logits)                            # some probabilities underflow to exactly 0
        log_p = jnp.where(p > 0, jnp.log(p), 0.0)  # where-log0
        return losses.cross_entropy(logits, y) - 1e-3 * jnp.mean(jnp.sum(p * log_p, axis=1))

    def harmless(params, x, y):
        data = x[:, 0]
        weight = jnp.where(data > 0, jnp.sqrt(data), 0.0)  # harmless-nan
        return losses.cross_entropy(mlp_apply(params, x), y) + 1e-3 * jnp.mean(weight)

    return {"healthy": healthy, "naive softmax": naive_softmax, "where-trap": where_trap,
            "where-trap, log(0)": where_log0, "harmless NaN": harmless}


def _marked(marker: str) -> int:
    with open(HERE) as f:
        return next(i + 1 for i, text in enumerate(f) if text.rstrip().endswith(f"# {marker}"))


MARKERS = {"naive softmax": "naive-softmax", "where-trap": "where-trap", "where-trap, log(0)": "where-log0",
           "harmless NaN": "harmless-nan"}


def side(name: str, reps: int) -> dict:
    import jax

    params, x, y, _ = _problem()
    fns = _losses()
    out = {"device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}"}
    if name == "grad":
        t0 = time.perf_counter()
        g = jax.jit(jax.grad(fns["healthy"]))
        jax.block_until_ready(g(params, x, y))
        out["first_times"] = [time.perf_counter() - t0]
        times = []
        for _ in range(max(reps, 5)):
            t0 = time.perf_counter()
            jax.block_until_ready(g(params, x, y))
            times.append(time.perf_counter() - t0)
        out["times"] = times
        return out
    if name.startswith("diagnose"):
        from jaxcalc.diagnosis import diagnose

        fn = fns["where-trap"] if name == "diagnose-broken" else fns["healthy"]
        mode = "always" if name == "diagnose-always" else "auto"
        times, phases, reports = [], [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = diagnose(fn, params, x, y, local_errors=mode)
            times.append(time.perf_counter() - t0)
            phases.append(r.seconds)
            reports.append(r)
        out.update(times=times, phases=phases[-1], findings=len(reports[-1].findings),
                   top=reports[-1].top.short() if reports[-1].top else "")
        return out
    # what each tool finds: "find:<tool>:<case>"
    _, tool, case = name.split(":")
    fn = fns[case]
    t0 = time.perf_counter()
    if tool == "diagnose":
        from jaxcalc.diagnosis import diagnose

        r = diagnose(fn, params, x, y)
        top = r.top
        out.update(found=top is not None, kind=top.kind if top else "clean (ok)",
                   line=top.line if top and top.file == HERE else None,
                   what=f"{top.primitive}, {top.pass_} pass" if top else "")
    else:
        jax.config.update("jax_debug_nans", True)
        g = jax.value_and_grad(fn)
        if tool == "debug_nans-jit":
            g = jax.jit(g)
        try:
            jax.block_until_ready(g(params, x, y))
            out.update(found=False, kind="no error", line=None, what="")
        except FloatingPointError as e:
            frames = [fr.lineno for fr in traceback.extract_tb(e.__traceback__) if os.path.abspath(fr.filename) == HERE]
            inner = [ln for ln in frames if ln > _marked("naive-softmax") - 40]
            line = inner[-1] if inner else None
            out.update(found=True, kind="FloatingPointError", line=line,
                       what=str(e).splitlines()[0].replace("invalid value (nan) encountered in ", "NaN in "))
    out["seconds"] = time.perf_counter() - t0
    return out


def _run_side(name, reps):
    proc = subprocess.run([sys.executable, HERE, "--side", name, "--reps", str(reps)], capture_output=True, text=True,
                          env=dict(os.environ))
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])



def _fmt(times, unit=1.0, suffix="s"):
    v = [t * unit for t in times]
    return f"{statistics.median(v):.3g} {suffix} [{min(v):.3g}–{max(v):.3g}]"


COST = (("grad", "jax.jit(jax.grad(loss)): first call (trace + compile + run)"),
        ("diagnose", "jaxcalc.diagnose, healthy loss"),
        ("diagnose-always", 'jaxcalc.diagnose, local_errors="always"'),
        ("diagnose-broken", "jaxcalc.diagnose, broken loss (where-trap: gradient NaN)"))
CASES = ("naive softmax", "where-trap", "where-trap, log(0)", "harmless NaN")
TOOLS = ("diagnose", "debug_nans-jit", "debug_nans-eager")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, default=3, help="timed diagnose calls per process")
    p.add_argument("--runs", type=int, default=2, help="process runs per side")
    args = p.parse_args(argv)
    if args.side:
        print(json.dumps(side(args.side, args.reps)))
        return 0
    results = run_alternating([name for name, _ in COST], args.runs, lambda name: _run_side(name, args.reps))
    grad = results["grad"]
    base = statistics.median(grad["first_times"])
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"device: {grad['device']} ({cpu_name()}, {os.cpu_count()} cores, load average {load} at the end); float32; "
          f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}; {args.runs} process runs x {args.reps} calls per side\n")
    print("| workload | time | ratio to jax.grad + compile | target | notes |")
    print("|---|---|---|---|---|")
    print(f"| {COST[0][1]} | {_fmt(grad['first_times'])} | 1.0x | | steady call {_fmt(grad['times'], 1e3, 'ms')} |")
    for name, label in COST[1:]:
        r = results[name]
        ratio = statistics.median(r["times"]) / base
        phases = ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
        print(f"| {label} | {_fmt(r['times'])} | {ratio:.1f}x | <= 10x | phases (s, last call): {phases}; "
              f"findings: {r['findings']} |")

    print("\nWhat each tool finds (same MLP; line = this file's line it names):\n")
    print("| case | planted at line | tool | finds | reported line | kind / message | seconds |")
    print("|---|---|---|---|---|---|---|")
    for case in CASES:
        for tool in TOOLS:
            r = _run_side(f"find:{tool}:{case}", 1)
            print(f"| {case} | {_marked(MARKERS[case])} | {tool} | {'yes' if r['found'] else 'no'} | "
                  f"{r['line'] or '—'} | {r['kind']}{': ' + r['what'] if r['what'] else ''} | {r['seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
