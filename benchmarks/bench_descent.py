"""Gradient descent speed: jaxcalc's compiled loops against numpy (and PyTorch when importable).

(a) The article's example 1 (3 points, lr 0.01, 1000 GD iterations, summed gradients): one jitted
    ``lax.scan`` of ``jaxcalc.optim.gd`` on ``0.5·Σ losses.squared_error`` against the numpy loop with
    correct shapes (X flattened to (3,)); the loop as the article writes it (X (3, 1) broadcast against
    y (3,) to (3, 3)) is timed too and its wrong answer shown. Target >= 100x numpy.
(b) n = 100,000, d = 16 float32, mean-squared-error GD, 1000 iterations, in one compiled scan, against
    the numpy loop (and torch). GB/s = bytes of X (n·d·4) × iterations / time; X (6.4 MB) fits in
    this machine's L3 cache, so it can exceed DRAM bandwidth. Target >= 1.3x numpy.
(c) Per-example gradients of an MLP 784-256-10 (softmax cross-entropy) at batch 256 and 1024: the plain
    batch gradient, the ghost-norm clipped step (``per_example.mlp_clipped_mean_grad``), naive vmap
    (``per_example.clipped_mean_grad``: materialises every example's gradient) and a Python loop of a
    jitted one-example gradient (timed on 32 examples and scaled to the batch). Target: clipped step
    within 3x of the plain batch gradient.

Each side runs in its own subprocess, one at a time, alternating, ``--runs`` times; times are medians
[min–max] over all timed repetitions; compile time is reported apart (``jit(...).lower().compile()``).

    python benchmarks/bench_descent.py [--runs 2] [--only a,b,c]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from _timing import fmt_times, run_alternating, spawn_worker, timeit  # benchmarks/_timing.py (script folder)

N_ITER = 1000
B_N, B_D, B_LR = 100_000, 16, 0.1
MLP_SIZES = (784, 256, 10)
LOOP_SUBSET = 32


def _compile(jitted, *args, **kwargs):
    t = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t


# --------------------------------------------------------------------------- (a) article example 1


def worker_a_jax():
    import jax
    import jax.numpy as jnp
    import optax

    from jaxcalc import losses, optim

    x = jnp.array([1.0, 2.0, 3.0])
    y = jnp.array([2.0, 4.0, 6.0])
    opt = optim.gd(0.01)

    def loss(p):
        # 0.5·Σ(ŷ − y)²: its gradient is the article's summed dw = Σ(ŷ − y)x, db = Σ(ŷ − y)
        return 0.5 * jnp.sum(losses.squared_error(p["w"] * x + p["b"], y))

    @jax.jit
    def train(params):
        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=N_ITER)
        return p

    p0 = {"w": jnp.float32(0.0), "b": jnp.float32(0.0)}
    compiled, t_compile = _compile(train, p0)
    out = jax.block_until_ready(compiled(p0))
    times = timeit(lambda: jax.block_until_ready(compiled(p0)), 300)
    return {"times": times, "compile": t_compile, "w": float(out["w"]), "b": float(out["b"]),
            "device": str(jax.devices()[0]), "platform": jax.devices()[0].platform}


def _article_numpy(x, y):
    import numpy as np

    w, b = 0.0, 0.0
    for _ in range(N_ITER):
        y_pred = w * x + b
        dw = np.sum((y_pred - y) * x)
        db = np.sum(y_pred - y)
        w -= 0.01 * dw
        b -= 0.01 * db
    return w, b


def worker_a_numpy():
    import numpy as np

    x = np.array([1.0, 2.0, 3.0])  # correct shape (3,)
    y = np.array([2.0, 4.0, 6.0])
    w, b = _article_numpy(x, y)
    times = timeit(lambda: _article_numpy(x, y), 15)
    return {"times": times, "w": float(w), "b": float(b)}


def worker_a_numpy_as_written():
    import numpy as np

    x = np.array([[1], [2], [3]])  # the article's X, shape (3, 1): (3, 1) − (3,) broadcasts to (3, 3)
    y = np.array([2, 4, 6])
    w, b = _article_numpy(x, y)
    times = timeit(lambda: _article_numpy(x, y), 15)
    return {"times": times, "w": float(np.asarray(w).ravel()[0]), "b": float(np.asarray(b).ravel()[0])}


# --------------------------------------------------------------------------- (b) n=100k, d=16


def _b_data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(B_N, B_D)).astype(np.float32)
    w_true = np.linspace(-1, 1, B_D).astype(np.float32)
    y = (x @ w_true + 0.5 + 0.1 * rng.normal(size=B_N)).astype(np.float32)
    return x, y, w_true


def worker_b_jax(variant):
    import jax
    import jax.numpy as jnp
    import optax

    from jaxcalc import losses, optim

    x_np, y_np, w_true = _b_data()
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    opt = optim.gd(B_LR)

    if variant == "autodiff":
        def grad_fn(p, x, y):
            return jax.grad(lambda p: losses.mse(x @ p["w"] + p["b"], y))(p)
    elif variant == "blocked":  # same loss and autodiff; X stored as (100, 1000, 16) row blocks
        x = x.reshape(100, B_N // 100, B_D)
        y = y.reshape(100, B_N // 100)

        def grad_fn(p, x, y):
            return jax.grad(lambda p: losses.mse(jnp.einsum("kbd,d->kb", x, p["w"]) + p["b"], y))(p)
    elif variant == "gram":  # sufficient statistics: XᵀX, Xᵀy, Σx once; then O(d²) per iteration
        def grad_fn(p, stats, _):
            xtx, xty, xsum, ysum = stats
            gw = (2.0 / B_N) * (xtx @ p["w"] + xsum * p["b"] - xty)
            gb = (2.0 / B_N) * (jnp.dot(xsum, p["w"]) + B_N * p["b"] - ysum)
            return {"w": gw, "b": gb}
    else:  # "matmul": the same gradient written out, (2/n)·Xᵀ(Xw + b − y) as (n, 16) @ (16, 1) matmuls
        def grad_fn(p, x, y):
            r = x @ p["w"][:, None] + (p["b"] - y)[:, None]  # (n, 1)
            return {"w": (2.0 / B_N) * (x.T @ r)[:, 0], "b": (2.0 / B_N) * jnp.sum(r)}

    @jax.jit
    def train(params, x, y):
        if variant == "gram":  # one pass over X, inside the timed program
            x = (x.T @ x, x.T @ y, jnp.sum(x, axis=0), jnp.sum(y))

        def step(carry, _):
            p, s = carry
            u, s = opt.update(grad_fn(p, x, y), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=N_ITER)
        return p

    p0 = {"w": jnp.zeros(B_D, jnp.float32), "b": jnp.float32(0.0)}
    compiled, t_compile = _compile(train, p0, x, y)
    out = jax.block_until_ready(compiled(p0, x, y))
    times = timeit(lambda: jax.block_until_ready(compiled(p0, x, y)), 4)
    err = float(jnp.max(jnp.abs(out["w"] - w_true)))
    return {"times": times, "compile": t_compile, "w_err": err, "b": float(out["b"]),
            "device": str(jax.devices()[0])}


def worker_b_numpy():
    import numpy as np

    x, y, w_true = _b_data()

    def train():
        w = np.zeros(B_D, np.float32)
        b = np.float32(0.0)
        scale = np.float32(2.0 / B_N)
        lr = np.float32(B_LR)
        for _ in range(N_ITER):
            r = x @ w + (b - y)  # (n,)
            w = w - lr * (scale * (x.T @ r))
            b = b - lr * (scale * r.sum())
        return w, b

    res = []
    reps = 2 if os.environ.get("OPENBLAS_NUM_THREADS") == "1" else 1  # default threads: pathologically slow here
    times = timeit(lambda: res.append(train()), reps)  # no compile to warm up; results kept
    w, b = res[-1]
    # this machine's read bandwidth: sum of a 256 MB float32 array (beyond L2, not beyond L3)
    big = np.ones(64 * 2**20, np.float32)
    big.sum()
    bw = [big.nbytes / t / 1e9 for t in timeit(big.sum, 5)]
    return {"times": times, "w_err": float(np.max(np.abs(w - w_true))), "b": float(b),
            "read_gbps": statistics.median(bw)}


def worker_b_torch(threads=None):
    try:
        import torch
    except ImportError:
        return {"skipped": "torch not importable"}
    if threads:
        torch.set_num_threads(threads)
    x_np, y_np, w_true = _b_data()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def train():
        w = torch.zeros(B_D)
        b = torch.zeros(())
        with torch.no_grad():
            for _ in range(N_ITER):
                r = x @ w + (b - y)
                w = w - B_LR * (2.0 / B_N) * (x.T @ r)
                b = b - B_LR * (2.0 / B_N) * r.sum()
        return w, b

    res = []
    times = timeit(lambda: res.append(train()), 2 if threads == 1 else 1)
    w, _ = res[-1]
    return {"times": times, "w_err": float((w - torch.from_numpy(w_true)).abs().max()),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- (c) per-example MLP


def worker_c_jax(batch_size):
    import jax
    import jax.numpy as jnp

    from jaxcalc import losses, per_example
    from jaxcalc.models.mlp import init_mlp, mlp_apply

    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    params = init_mlp(kp, MLP_SIZES)
    batch = {"x": jax.random.normal(kx, (batch_size, MLP_SIZES[0])),
             "y": jax.random.randint(ky, (batch_size,), 0, MLP_SIZES[-1])}
    ce = losses.softmax_cross_entropy_with_integer_labels

    def loss_fn(p, b):
        return losses.cross_entropy(mlp_apply(p, b["x"]), b["y"])

    plain = jax.jit(jax.grad(loss_fn))
    ghost = jax.jit(per_example.mlp_clipped_mean_grad, static_argnames=("per_example_loss",))
    vmap = jax.jit(per_example.clipped_mean_grad, static_argnums=0)
    norms = per_example.mlp_ghost_norms(params, batch, per_example_loss=ce)
    clip = float(jnp.median(norms))  # about half of the examples get clipped

    out = {}
    plain_c, t_plain = _compile(plain, params, batch)
    ghost_c, t_ghost = _compile(ghost, params, batch, per_example_loss=ce, clip_norm=clip)
    vmap_c, t_vmap = _compile(vmap, loss_fn, params, batch, clip_norm=clip)
    calls = {"plain": lambda: plain_c(params, batch), "ghost": lambda: ghost_c(params, batch, clip_norm=clip),
             "vmap": lambda: vmap_c(params, batch, clip_norm=clip)}
    for f in calls.values():
        jax.block_until_ready(f())
    # plain and ghost alternate call by call, so that load from other processes hits both alike
    times = {"plain": [], "ghost": []}
    for _ in range(30):
        for name in times:
            times[name] += timeit(lambda f=calls[name]: jax.block_until_ready(f()), 1)
    times["vmap"] = timeit(lambda: jax.block_until_ready(calls["vmap"]()), 5)
    for name, t_c in (("plain", t_plain), ("ghost", t_ghost), ("vmap", t_vmap)):
        out[name] = {"times": times[name], "compile": t_c}
    # a Python loop of a jitted one-example gradient, on LOOP_SUBSET examples, scaled to the batch
    g1 = plain
    sub = [{"x": batch["x"][i : i + 1], "y": batch["y"][i : i + 1]} for i in range(LOOP_SUBSET)]
    jax.block_until_ready(g1(params, sub[0]))

    def loop():
        for b in sub:
            jax.block_until_ready(g1(params, b))

    out["loop"] = {"times": [t * batch_size / LOOP_SUBSET for t in timeit(loop, 5)]}
    # the clipped step is right: ghost == vmap on this batch
    ghost_g, aux = calls["ghost"]()
    ref, _ = calls["vmap"]()
    out["max_diff_ghost_vmap"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                     zip(jax.tree.leaves(ghost_g), jax.tree.leaves(ref), strict=True))
    out["clipped_fraction"] = float(aux["clipped_fraction"])
    return out


# --------------------------------------------------------------------------- driver

WORKERS = {
    "a_jax": worker_a_jax,
    "a_numpy": worker_a_numpy,
    "a_numpy_as_written": worker_a_numpy_as_written,
    "b_jax_autodiff": lambda: worker_b_jax("autodiff"),
    "b_jax_blocked": lambda: worker_b_jax("blocked"),
    "b_jax_matmul": lambda: worker_b_jax("matmul"),
    "b_jax_1thread": lambda: worker_b_jax("autodiff"),  # spawned with XLA on 1 thread
    "b_jax_gram": lambda: worker_b_jax("gram"),
    "b_numpy": worker_b_numpy,
    "b_numpy_1thread": worker_b_numpy,  # spawned with OPENBLAS_NUM_THREADS=1
    "b_torch": worker_b_torch,
    "b_torch_1thread": lambda: worker_b_torch(1),
    "c_jax_256": lambda: worker_c_jax(256),
    "c_jax_1024": lambda: worker_c_jax(1024),
}
GROUPS = {
    "a": ["a_jax", "a_numpy", "a_numpy_as_written"],
    "b": ["b_jax_autodiff", "b_jax_blocked", "b_jax_matmul", "b_jax_1thread", "b_jax_gram", "b_numpy",
          "b_numpy_1thread", "b_torch", "b_torch_1thread"],
    "c": ["c_jax_256", "c_jax_1024"],
}


WORKER_ENV = {
    "b_numpy_1thread": {"OPENBLAS_NUM_THREADS": "1"},
    "b_jax_1thread": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
}


def _spawn(name):
    return spawn_worker(__file__, name, env=dict(os.environ, **WORKER_ENV.get(name, {})))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="process runs per side (alternating)")
    parser.add_argument("--only", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker]()))
        return

    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    names = [n for g in groups for n in GROUPS[g]]
    r = run_alternating(names, args.runs, _spawn)

    device = next((r[n]["device"] for n in r if "device" in r[n]), None)
    if device is None:
        device = _spawn("a_jax")["device"]
    print(f"device: {device}; {os.cpu_count()} CPU cores; {args.runs} process run(s) per side, "
          f"each side in its own subprocess; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', 'unset')}")
    print()
    print("| workload | jaxcalc | peer | ratio (peer / jaxcalc) | notes |")
    print("|---|---|---|---|---|")
    compile_lines = []

    if "a" in groups:
        j, jm = fmt_times(r["a_jax"]["times"], "us")
        n, nm = fmt_times(r["a_numpy"]["times"])
        aw, awm = fmt_times(r["a_numpy_as_written"]["times"])
        print(f"| (a) article ex. 1, 1000 GD iters | {j} | numpy loop {n} | **{nm / jm:.0f}x** | "
              f"target >= 100x; jaxcalc w={r['a_jax']['w']:.4f} b={r['a_jax']['b']:.4f}, "
              f"numpy w={r['a_numpy']['w']:.4f} b={r['a_numpy']['b']:.4f} |")
        print(f"| (a') same, numpy as the article writes it | {j} | numpy loop {aw} | {awm / jm:.0f}x | "
              f"X (3,1) − y (3,) broadcasts to (3,3): w={r['a_numpy_as_written']['w']:.3f} "
              f"b={r['a_numpy_as_written']['b']:.3f} (wrong; jaxcalc's losses raise on it) |")
        compile_lines.append(f"(a) jaxcalc scan: {r['a_jax']['compile'] * 1e3:.0f} ms")

    if "b" in groups:
        gb = B_N * B_D * 4 * N_ITER / 1e9
        peers = {k: fmt_times(r[k]["times"], "s") for k in ("b_numpy", "b_numpy_1thread")}
        best_np = min(peers, key=lambda k: peers[k][1])
        n, nm = peers[best_np]
        np_label = "numpy, 1 BLAS thread" if best_np == "b_numpy_1thread" else "numpy, default threads"
        jax_rows = (("b_jax_autodiff", "jax.grad of losses.mse"),
                    ("b_jax_blocked", "jax.grad of losses.mse, X in (100, 1000, 16) blocks"),
                    ("b_jax_matmul", "hand-written Xᵀ(Xw+b−y) matmuls"),
                    ("b_jax_1thread", "jax.grad of losses.mse, XLA on 1 thread"))
        for key, label in jax_rows:
            j, jm = fmt_times(r[key]["times"], "s")
            print(f"| (b) n=100k d=16 GD, 1000 iters, {label} | {j} ({gb / jm:.1f} GB/s) | {np_label} {n} "
                  f"({gb / nm:.1f} GB/s) | **{nm / jm:.2f}x** | target >= 1.3x vs the faster numpy; "
                  f"max abs(w − w_true) jax {r[key]['w_err']:.1e}, numpy {r[best_np]['w_err']:.1e} |")
            compile_lines.append(f"(b) {label}: {r[key]['compile'] * 1e3:.0f} ms")
        j, jm = fmt_times(r["b_jax_gram"]["times"], "ms")
        print(f"| (b) same GD iterates via XᵀX, Xᵀy (one pass over X, then O(d²) per iteration) | {j} | "
              f"{np_label} {n} | {nm / jm:.0f}x | a different algorithm: not a per-iteration pass over X, "
              f"numpy could do it too; not counted for the target; max abs(w − w_true) "
              f"{r['b_jax_gram']['w_err']:.1e} |")
        compile_lines.append(f"(b) Gram: {r['b_jax_gram']['compile'] * 1e3:.0f} ms")
        best_jax = min(statistics.median(r[k]["times"]) for k, _ in jax_rows)
        for key, label in (("b_numpy", "numpy, default BLAS threads"), ("b_numpy_1thread", "numpy, 1 BLAS thread"),
                           ("b_torch", "PyTorch, default threads"), ("b_torch_1thread", "PyTorch, 1 thread")):
            if "skipped" in r[key]:
                print(f"| (b) {label} | | skipped | | {r[key]['skipped']} |")
                continue
            t, tm = fmt_times(r[key]["times"], "s")
            extra = f"torch {r[key]['torch']}, {r[key]['threads']} threads" if "torch" in r[key] else ""
            print(f"| (b) {label} | {best_jax:.3g} s (fastest jax row) | {t} ({gb / tm:.1f} GB/s) | "
                  f"{tm / best_jax:.2f}x | {extra} |")
        print(f"| (b) machine read bandwidth (numpy sum of 256 MB) | | {r['b_numpy']['read_gbps']:.1f} GB/s | | "
              f"X is 6.4 MB and stays in the 300 MB L3, so GD can beat DRAM bandwidth |")

    if "c" in groups:
        for bs in (256, 1024):
            c = r[f"c_jax_{bs}"]
            p, pm = fmt_times(c["plain"]["times"])
            g, gm = fmt_times(c["ghost"]["times"])
            v, vm = fmt_times(c["vmap"]["times"])
            lp, lm = fmt_times(c["loop"]["times"])
            print(f"| (c) MLP 784-256-10 batch {bs}: ghost-norm clipped step vs plain batch grad | {g} | "
                  f"plain {p} | **{gm / pm:.2f}x slower** | target <= 3x; clipped fraction "
                  f"{c['clipped_fraction']:.2f}; max abs(ghost − vmap) {c['max_diff_ghost_vmap']:.1e} |")
            print(f"| (c) batch {bs}: naive vmap clipped step | {v} | plain {p} | {vm / pm:.1f}x slower | "
                  f"materialises {bs} × 203,530 floats |")
            print(f"| (c) batch {bs}: Python loop of jitted grads | {lp} | plain {p} | {lm / pm:.0f}x slower | "
                  f"timed on {LOOP_SUBSET} examples, scaled × {bs // LOOP_SUBSET} |")
            compile_lines.append(f"(c) batch {bs}: plain {c['plain']['compile'] * 1e3:.0f} ms, ghost "
                                 f"{c['ghost']['compile'] * 1e3:.0f} ms, vmap {c['vmap']['compile'] * 1e3:.0f} ms")
    print()
    print("compile times (apart, median over runs): " + "; ".join(compile_lines))


if __name__ == "__main__":
    main()
