"""MLP training and backprop speed: jaxcalc's compiled loop against a Python loop and Keras.

(a) The article's example 2 (X = [[1, 2], [3, 4]], y = [2, 6], Dense(10, relu) -> Dense(10, relu)
    -> Dense(1), Adam lr 1e-3, MSE, 1000 full-batch epochs): jaxcalc's one compiled ``lax.scan``
    (``experiments.mlp.train_article``, gradients by ``jax.grad``, and by the hand-written backward
    pass) against a Python loop of 1000 calls of one jitted step, and against Keras
    ``model.fit(X, y, epochs=1000, verbose=0)`` when TensorFlow is importable (skipped with a note
    otherwise; set ``JAXCALC_BENCH_TF_PYTHON`` to a Python interpreter that has TensorFlow to run
    that side in another environment). Target: compiled 1000 epochs <= 20 ms after compile,
    compile <= 2 s.
(b) One gradient of an MLP 784-256-256-10 (relu, softmax cross-entropy, float32) at batch 256:
    the hand-written backward pass (``jaxcalc.backprop.backprop_grads``) against ``jax.grad``, both
    jitted; GFLOP/s counts 3 matmul passes (forward, and two in the backward) of 2·n·Σ m·k flops,
    beside this machine's float32 matmul rate (a 1024² matmul, measured).

Each side runs in its own subprocess, one at a time, alternating, ``--runs`` times; times are
medians [min–max] over all timed repetitions; compile time is reported apart
(``jit(...).lower().compile()``).

    python benchmarks/bench_mlp.py [--runs 2] [--only a,b] [--keras-fits 1]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _timing import fmt_times, run_alternating, spawn_worker, timeit  # benchmarks/_timing.py (script folder)

EPOCHS = 1000
B_SIZES = (784, 256, 256, 10)
B_BATCH = 256
ROOT = Path(__file__).resolve().parents[1]


def _device():
    import jax

    return {"device": str(jax.devices()[0]), "platform": jax.devices()[0].platform}


# --------------------------------------------------------------------------- (a) example 2


def _article_setup():
    import jax
    import jax.numpy as jnp

    from experiments import mlp as exp
    from jaxcalc.models.mlp import init_mlp

    params = init_mlp(jax.random.key(0), exp.ARTICLE_SIZES, init="glorot_uniform")
    x = jnp.asarray(exp.ARTICLE_X)
    y = jnp.asarray(exp.ARTICLE_Y)[:, None]
    return exp, params, x, y


def worker_a_scan(grad="autodiff"):
    import jax
    import jax.numpy as jnp

    exp, params, x, y = _article_setup()
    lr = jnp.float32(1e-3)
    t = time.perf_counter()
    compiled = exp.train_article.lower(params, x, y, lr, epochs=EPOCHS, grad=grad).compile()
    t_compile = time.perf_counter() - t
    _, losses = jax.block_until_ready(compiled(params, x, y, lr))
    times = timeit(lambda: jax.block_until_ready(compiled(params, x, y, lr)), 50)
    return {"times": times, "compile": t_compile, "final_loss": float(losses[-1]), **_device()}


def worker_a_scan_backprop():
    return worker_a_scan("backprop")


def worker_a_pyloop():
    import jax
    import jax.numpy as jnp

    from jaxcalc import optim

    exp, params, x, y = _article_setup()
    opt = optim.adam(1e-3, eps=exp.KERAS_ADAM_EPS)
    batch = {"x": x, "y": y}

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(exp.article_loss)(p, batch)
        u, s = opt.update(g, s, p)
        return jax.tree.map(jnp.add, p, u), s, loss

    s0 = opt.init(params)
    t = time.perf_counter()
    compiled = step.lower(params, s0).compile()
    t_compile = time.perf_counter() - t

    def train():
        p, s = params, s0
        for _ in range(EPOCHS):
            p, s, loss = compiled(p, s)
        return jax.block_until_ready((p, loss))

    _, loss = train()
    times = timeit(train, 5)
    return {"times": times, "compile": t_compile, "final_loss": float(loss), **_device()}


def worker_a_keras():
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import numpy as np
        import tensorflow as tf
    except ImportError as e:
        return {"skipped": f"TensorFlow not importable ({e.__class__.__name__}); "
                           f"set JAXCALC_BENCH_TF_PYTHON to a python with tensorflow"}
    fits = int(os.environ.get("JAXCALC_BENCH_KERAS_FITS", "1"))
    X = np.array([[1, 2], [3, 4]])  # the article's code, verbatim but for input_shape -> Input
    y = np.array([2, 6])
    times, losses = [], []
    for i in range(fits):
        tf.keras.utils.set_random_seed(i)
        model = tf.keras.models.Sequential([
            tf.keras.Input(shape=(2,)),
            tf.keras.layers.Dense(10, activation="relu"),
            tf.keras.layers.Dense(10, activation="relu"),
            tf.keras.layers.Dense(1),
        ])
        model.compile(optimizer="adam", loss="mse")
        t = time.perf_counter()
        hist = model.fit(X, y, epochs=EPOCHS, verbose=0)
        times.append(time.perf_counter() - t)
        losses.append(float(hist.history["loss"][-1]))
    return {"times": times, "final_loss": losses, "tf": tf.__version__,
            "keras": getattr(tf.keras, "__version__", "?")}


# --------------------------------------------------------------------------- (b) 784-256-256-10


def _b_worker(kind):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcalc import backprop
    from jaxcalc.models.mlp import init_mlp, mlp_loss

    params = init_mlp(jax.random.key(0), B_SIZES, init="he")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B_BATCH, B_SIZES[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, B_SIZES[-1], size=B_BATCH), jnp.int32)
    if kind == "manual":
        fn = jax.jit(lambda p, x, y: backprop.backprop_grads(p, x, y, loss="cross_entropy"))
    else:
        fn = jax.jit(jax.grad(lambda p, x, y: mlp_loss(p, {"x": x, "y": y}, loss="cross_entropy")))
    t = time.perf_counter()
    compiled = fn.lower(params, x, y).compile()
    t_compile = time.perf_counter() - t
    jax.block_until_ready(compiled(params, x, y))
    times = timeit(lambda: jax.block_until_ready(compiled(params, x, y)), 200)

    a = jnp.asarray(rng.normal(size=(1024, 1024)), jnp.float32)
    mm = jax.jit(lambda a: a @ a).lower(a).compile()
    jax.block_until_ready(mm(a))
    peak = 2 * 1024**3 / statistics.median(timeit(lambda: jax.block_until_ready(mm(a)), 30)) / 1e9
    return {"times": times, "compile": t_compile, "matmul_gflops": peak, **_device()}


def worker_b_manual():
    return _b_worker("manual")


def worker_b_autodiff():
    return _b_worker("autodiff")


def _b_flops():
    return 3 * 2 * B_BATCH * sum(m * k for m, k in itertools.pairwise(B_SIZES))


# --------------------------------------------------------------------------- driver

WORKERS = {
    "a_scan": worker_a_scan,
    "a_scan_backprop": worker_a_scan_backprop,
    "a_pyloop": worker_a_pyloop,
    "a_keras": worker_a_keras,
    "b_manual": worker_b_manual,
    "b_autodiff": worker_b_autodiff,
}
GROUPS = {"a": ["a_scan", "a_scan_backprop", "a_pyloop", "a_keras"], "b": ["b_manual", "b_autodiff"]}


def _spawn(name, keras_fits):
    env = dict(os.environ, JAXCALC_BENCH_KERAS_FITS=str(keras_fits))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    python = sys.executable
    if name == "a_keras" and os.environ.get("JAXCALC_BENCH_TF_PYTHON"):
        python = os.environ["JAXCALC_BENCH_TF_PYTHON"]
    return spawn_worker(__file__, name, env=env, python=python)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="process runs per side (alternating)")
    parser.add_argument("--only", default="a,b", help="comma-separated subset of a,b")
    parser.add_argument("--keras-fits", type=int, default=1,
                        help="Keras fits per Keras process (each takes tens of seconds on 2 cores)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker]()))
        return

    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    names = [n for g in groups for n in GROUPS[g]]
    r = run_alternating(names, args.runs, lambda n: _spawn(n, args.keras_fits))

    device = next((r[n]["device"] for n in r if "device" in r[n]), "?")
    print(f"device: {device}; {os.cpu_count()} CPU cores; {args.runs} process run(s) per side, "
          f"each side in its own subprocess; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', 'unset')}")
    print()
    print("| workload | jaxcalc | peer | ratio (peer / jaxcalc) | notes |")
    print("|---|---|---|---|---|")
    if "a" in groups:
        j, jm = fmt_times(r["a_scan"]["times"])
        jb, jbm = fmt_times(r["a_scan_backprop"]["times"])
        pl, plm = fmt_times(r["a_pyloop"]["times"])
        comp = ", ".join(f"{c:.2f}" for c in r["a_scan"]["compiles"])
        print(f"| (a) article ex. 2, 1000 Adam epochs, compiled scan (jax.grad) vs Python loop of "
              f"jitted steps | {j} | {pl} | **{plm / jm:.0f}x** | compile {r['a_scan']['compile']:.2f} s "
              f"(runs: {comp}); step compile {r['a_pyloop']['compile']:.2f} s; final loss "
              f"{r['a_scan']['final_loss']:.3g} |")
        print(f"| (a) same scan, hand-written backward pass vs jax.grad scan | {jb} | {j} | "
              f"{jm / jbm:.2f}x | compile {r['a_scan_backprop']['compile']:.2f} s; final loss "
              f"{r['a_scan_backprop']['final_loss']:.3g} |")
        k = r["a_keras"]
        if "skipped" in k:
            print(f"| (a) article ex. 2 vs Keras model.fit(X, y, epochs=1000, verbose=0) | {j} | skipped | | "
                  f"{k['skipped']} |")
        else:
            kt, km = fmt_times(k["times"], "s")
            print(f"| (a) article ex. 2 vs Keras model.fit(X, y, epochs=1000, verbose=0) | {j} | {kt} | "
                  f"**{km / jm:.0f}x** | TF {k['tf']}, Keras {k['keras']}; Keras' time includes its "
                  f"tf.function tracing; Keras final losses {', '.join(f'{v:.3g}' for v in k['final_loss'])} |")
        ok_time = jm <= 0.020
        ok_compile = r["a_scan"]["compile"] <= 2.0
        print(f"| (a) targets: <= 20 ms after compile, compile <= 2 s | {jm * 1e3:.3g} ms, "
              f"{r['a_scan']['compile']:.2f} s | | | {'met' if ok_time else 'MISSED'} / "
              f"{'met' if ok_compile else 'MISSED'} |")
    if "b" in groups:
        flops = _b_flops()
        m, mm = fmt_times(r["b_manual"]["times"])
        a, am = fmt_times(r["b_autodiff"]["times"])
        peak = statistics.median([r["b_manual"]["matmul_gflops"], r["b_autodiff"]["matmul_gflops"]])
        print(f"| (b) one gradient, MLP 784-256-256-10 batch 256: hand-written backprop vs jax.grad | "
              f"{m} ({flops / mm / 1e9:.0f} GFLOP/s) | {a} ({flops / am / 1e9:.0f} GFLOP/s) | {am / mm:.2f}x | "
              f"compile {r['b_manual']['compile']:.2f} s vs {r['b_autodiff']['compile']:.2f} s; "
              f"{flops / 1e6:.0f} MFLOP per gradient; ratio of the minima "
              f"{min(r['b_autodiff']['times']) / min(r['b_manual']['times']):.2f}x; "
              f"machine float32 matmul {peak:.0f} GFLOP/s |")


if __name__ == "__main__":
    main()
