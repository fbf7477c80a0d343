"""Benchmark: finite-difference gradients and gradient checks, jaxcalc against its peers.

Workloads (float64, a tanh MLP 32-16-1 with MSE on 64 examples, 545 parameters):

* ``fd-gradient``: the central-difference gradient of the loss (2·545 loss evaluations).
  jaxcalc: ``derivatives.central_difference`` (one vmapped, jitted program); peer: the textbook
  numpy loop over coordinates (same formula, same steps).
* ``check-full``: ``jaxcalc.check_grads(method="full")`` (every coordinate, fwd + rev) against
  ``jax.test_util.check_grads`` (fwd + rev along ONE random direction: less work, fewer guarantees).
* ``check-directional``: ``jaxcalc.check_grads(method="directional")`` (4 directions per leaf) against
  the same peer.

Each side runs in its own subprocess (one at a time), twice; a call's first run (trace + compile) is
reported apart, then the median and [min–max] over repeated calls. Run::

    python benchmarks/bench_gradcheck.py            # add --reps N to change the repeats
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = (32, 16, 1)
N_EXAMPLES = 64


def _numpy_problem():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_EXAMPLES, SIZES[0]))
    y = np.sin(x[:, :1])
    shapes = [(SIZES[0], SIZES[1]), (SIZES[1],), (SIZES[1], SIZES[2]), (SIZES[2],)]
    theta = rng.standard_normal(sum(int(np.prod(s)) for s in shapes)) * 0.3
    return x, y, shapes, theta


def _unflatten(theta, shapes):
    out, i = [], 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        out.append(theta[i:i + n].reshape(s))
        i += n
    return out


def _time_calls(fn, reps):
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first": first, "times": times}


def side(name: str, reps: int) -> dict:
    x, y, shapes, theta = _numpy_problem()
    if name == "numpy-fd":
        import numpy as np

        def loss(th):
            w1, b1, w2, b2 = _unflatten(th, shapes)
            return float(np.mean((np.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2))

        def grad():
            g = np.empty_like(theta)
            h = np.finfo(np.float64).eps ** (1 / 3) * np.maximum(1.0, np.abs(theta))
            for i in range(theta.size):
                e = np.zeros_like(theta)
                e[i] = h[i]
                g[i] = (loss(theta + e) - loss(theta - e)) / (2 * h[i])
            return g

        out = _time_calls(grad, reps)
        out["device"] = "numpy (CPU)"
        return out

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from jax.test_util import check_grads as jax_check_grads

    from jaxcalc import derivatives, losses
    from jaxcalc.gradcheck import check_grads
    from jaxcalc.models.mlp import mlp_apply

    xj, yj, thj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(theta)
    params = [tuple(_unflatten(thj, shapes)[i:i + 2]) for i in (0, 2)]

    def mlp_loss(params):
        return losses.mse(mlp_apply(params, xj, activation="tanh"), yj)

    if name == "jaxcalc-fd":
        flat_loss = lambda th: mlp_loss([tuple(_unflatten(th, shapes)[i:i + 2]) for i in (0, 2)])
        fn = lambda: jax.block_until_ready(derivatives.central_difference(flat_loss, thj))
    elif name == "jaxcalc-check-full":
        fn = lambda: check_grads(mlp_loss, params, method="full")
    elif name == "jaxcalc-check-directional":
        fn = lambda: check_grads(mlp_loss, params, method="directional")
    elif name == "jax-test-util-check":
        fn = lambda: jax_check_grads(mlp_loss, (params,), order=1, modes=("fwd", "rev"))
    else:
        raise ValueError(name)
    out = _time_calls(fn, reps)
    out["device"] = str(jax.devices()[0])
    return out


WORKLOADS = (
    ("fd-gradient (545 params)", "jaxcalc-fd", "numpy-fd", "same 1090 evaluations; peer = numpy loop"),
    ("check-full (fwd+rev)", "jaxcalc-check-full", "jax-test-util-check",
     "jaxcalc: all 545 coordinates; peer: 1 random direction"),
    ("check-directional (fwd+rev)", "jaxcalc-check-directional", "jax-test-util-check",
     "jaxcalc: 4 directions x 4 leaves; peer: 1 direction"),
)


def _run_side(name, reps):
    proc = subprocess.run([sys.executable, __file__, "--side", name, "--reps", str(reps)],
                          capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(times):
    ms = [t * 1e3 for t in times]
    return f"{statistics.median(ms):.1f} ms [{min(ms):.1f}–{max(ms):.1f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--runs", type=int, default=2, help="process runs per side")
    args = p.parse_args(argv)
    if args.side:
        print(json.dumps(side(args.side, args.reps)))
        return 0
    results: dict[str, dict] = {}
    for _ in range(args.runs):  # alternate sides, one process at a time
        for _, ours, peer, _ in WORKLOADS:
            for name in (ours, peer):
                r = _run_side(name, args.reps)
                agg = results.setdefault(name, {"times": [], "first": [], "device": r["device"]})
                agg["times"] += r["times"]
                agg["first"].append(r["first"])
    device = results["jaxcalc-fd"]["device"]
    print(f"device: {device}; float64; {args.runs} process runs x {args.reps} timed calls per side\n")
    print("| workload | jaxcalc | peer | ratio (peer / jaxcalc) | notes |")
    print("|---|---|---|---|---|")
    for label, ours, peer, notes in WORKLOADS:
        a, b = results[ours], results[peer]
        ratio = statistics.median(b["times"]) / statistics.median(a["times"])
        print(f"| {label} | {_fmt(a['times'])} | {_fmt(b['times'])} | {ratio:.2f}x | {notes} |")
    print("\nfirst call (trace + compile + run), median over process runs:")
    for name, r in results.items():
        print(f"  {name:<28} {statistics.median(r['first']) * 1e3:8.1f} ms")
    print("\nBoth jaxcalc sides compile one program on the first call and reuse it for the same function and"
          " shapes; jax.test_util runs op by op.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
