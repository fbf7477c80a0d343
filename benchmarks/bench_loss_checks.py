"""Benchmark: what jaxcalc's value checks cost on valid inputs, against optax's unchecked losses.

Each workload is a training step's loss work, ``jax.value_and_grad`` of a mean loss over a batch, compiled
with ``jax.jit`` three ways on the same inputs:

* **jaxcalc, plain jit**: the checks compile to ``debug_check``s (dropped) plus a NaN ``where`` on the
  result (and a safe label index);
* **optax**: the same loss without checks (``optax.losses``, same formula);
* **jaxcalc, checkified**: ``jax.jit(checks.checkify_fn(step))``, the checks reported as an error value
  (what ``jaxcalc.train.fit`` runs).

It prints the compiled HLO's instruction count (all computations, fusions included) and the median
[min–max] time per call, the sides interleaved call by call in one process (all three are JAX; a
framework per process is not needed). A second table shows why ``checks.check_entries`` emits nothing
outside ``checks.checkify_fn``: a ``checkify.debug_check`` left in a plain ``jit`` compiles to nothing
but marks the function effectful, which takes each call off jax's C++ fast dispatch path. Run::

    python benchmarks/bench_loss_checks.py            # --reps N, --sizes 256,65536
"""
from __future__ import annotations

import argparse
import re
import time

from _timing import cpu_name  # benchmarks/_timing.py (script folder)


def _hlo_ops(compiled) -> int:
    return sum(1 for line in compiled.as_text().splitlines() if re.match(r"\s+(ROOT )?%?[\w.-]+ = ", line))


def _workloads(n: int):
    import jax
    import jax.numpy as jnp
    import optax

    from jaxcalc import losses

    k = 10
    keys = jax.random.split(jax.random.key(0), 3)
    logits = jax.random.normal(keys[0], (n, k))
    labels = jax.random.randint(keys[1], (n,), 0, k)
    probs = jax.nn.softmax(jax.random.normal(keys[2], (n, k)))
    bits = (labels % 2).astype(jnp.float32)
    z1 = logits[:, 0]
    targets = logits[:, 1] * 2.0
    delta = jnp.asarray(0.5)
    ol = optax.losses
    return [
        (f"cross_entropy, ({n}, {k}) logits, int labels",
         losses.cross_entropy, lambda z, y: jnp.mean(ol.softmax_cross_entropy_with_integer_labels(z, y)),
         (logits, labels)),
        (f"softmax_cross_entropy (mean), ({n}, {k}) probabilities",
         lambda z, p: jnp.mean(losses.softmax_cross_entropy(z, p)),
         lambda z, p: jnp.mean(ol.softmax_cross_entropy(z, p)), (logits, probs)),
        (f"binary_cross_entropy, ({n},)",
         losses.binary_cross_entropy, lambda z, y: jnp.mean(ol.sigmoid_binary_cross_entropy(z, y)), (z1, bits)),
        (f"mean_huber, ({n},), traced delta",
         lambda p, t, d: losses.mean_huber(p, t, delta=d), lambda p, t, d: jnp.mean(ol.huber_loss(p, t, delta=d)),
         (z1, targets, delta)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--sizes", default="256,65536")
    args = parser.parse_args()

    import jax

    from jaxcalc import checks

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for name, ours, theirs, inputs in _workloads(n):
            programs = {
                "jaxcalc": jax.jit(jax.value_and_grad(ours)),
                "optax": jax.jit(jax.value_and_grad(theirs)),
                "checkified": jax.jit(checks.checkify_fn(jax.value_and_grad(ours))),
            }
            ops, times = {}, {key: [] for key in programs}
            for key, fn in programs.items():
                ops[key] = _hlo_ops(fn.lower(*inputs).compile())
                jax.block_until_ready(fn(*inputs))  # compile and warm up
            for _ in range(args.reps):  # interleaved, call by call
                for key, fn in programs.items():
                    t = time.perf_counter()
                    jax.block_until_ready(fn(*inputs))
                    times[key].append(time.perf_counter() - t)
            rows.append((name, ops, times))

    def fmt(ts):
        ts = sorted(ts)
        return f"{ts[len(ts) // 2] * 1e6:.0f} µs [{ts[0] * 1e6:.0f}–{ts[-1] * 1e6:.0f}]"

    def med(ts):
        return sorted(ts)[len(ts) // 2]

    print(f"\nvalue_and_grad of a mean loss, jit-compiled; median [min–max] of {args.reps} interleaved calls; "
          f"device {jax.devices()[0].device_kind}; CPU {cpu_name()}\n")
    print("| workload | jaxcalc (plain jit) | optax (no checks) | jaxcalc / optax | jaxcalc checkified "
          "| checkified / optax | HLO ops jaxcalc / optax / checkified |")
    print("|---|---|---|---|---|---|---|")
    for name, ops, t in rows:
        print(f"| {name} | {fmt(t['jaxcalc'])} | {fmt(t['optax'])} | {med(t['jaxcalc']) / med(t['optax']):.2f}x "
              f"| {fmt(t['checkified'])} | {med(t['checkified']) / med(t['optax']):.2f}x "
              f"| {ops['jaxcalc']} / {ops['optax']} / {ops['checkified']} |")
    dispatch_table(args.reps)


def dispatch_table(reps: int) -> None:
    import jax
    import jax.numpy as jnp
    from jax.experimental import checkify

    from jaxcalc import checks

    def plain(x):
        return jnp.sum(x * x)

    def jaxcalc_check(x):  # what the losses do: check_entries + poison
        bad = x < -10
        checks.check_entries(bad, x, name="x", condition="is below -10")
        return jnp.sum(checks.poison(x * x, bad))

    def debug_check(x):  # a debug_check that a plain jit drops
        checkify.debug_check(jnp.all(x > -10), "x[0] = {}", x[0])
        return jnp.sum(jnp.where(x < -10, jnp.nan, x * x))

    x = jnp.ones(100)
    programs = {name: jax.jit(f) for name, f in
                [("no check", plain), ("check_entries + poison", jaxcalc_check), ("raw debug_check", debug_check)]}
    times = {name: [] for name in programs}
    for fn in programs.values():
        jax.block_until_ready(fn(x))
    for _ in range(reps * 10):
        for name, fn in programs.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(x))
            times[name].append(time.perf_counter() - t)
    print(f"\ndispatch of a tiny jitted function (100 floats); median [min–max] of {reps * 10} interleaved calls\n")
    print("| function | per call | effects in its jaxpr |")
    print("|---|---|---|")
    for name, ts in times.items():
        ts = sorted(ts)
        effects = bool(jax.make_jaxpr({"no check": plain, "check_entries + poison": jaxcalc_check,
                                       "raw debug_check": debug_check}[name])(x).effects)
        print(f"| {name} | {ts[len(ts) // 2] * 1e6:.1f} µs [{ts[0] * 1e6:.1f}–{ts[-1] * 1e6:.1f}] | {effects} |")


if __name__ == "__main__":
    main()
