"""Gradient descent speed: jaxcalc's ``train.fit`` (as a user calls it) and compiled loops against numpy and PyTorch.

(a) The article's example 1 (3 points, lr 0.01, 1000 GD iterations, summed gradients): the whole warm
    ``train.fit(...)`` call, its compiled program alone, and a bare jitted ``lax.scan`` of
    ``jaxcalc.optim.gd`` on ``0.5·Σ losses.squared_error``, against the numpy loop with correct shapes
    (X flattened to (3,)); the loop as the article writes it (X (3, 1) broadcast against y (3,) to
    (3, 3)) is timed too and its wrong answer shown. fit's fixed cost = whole call − compiled program,
    the median of call-by-call paired differences. Targets: fit >= 100x numpy, fixed cost <= 10 us.
(b) n = 100,000, d = 16 float32, ``losses.mse`` GD (lr 0.1), 1000 iterations: ``train.fit`` (``jax.grad``
    of ``models.linear.mse_loss``; ``layout="auto"`` stores X feature-major, see ``jaxcalc.batchstep``),
    fit with the data as given (the previous step), fit forced into chunked accumulation, a bare scan
    of ``jax.grad(mse)``, and the same GD written by hand, against numpy (1 BLAS thread and default, each
    with ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` as set and unset when they are set; the kernel
    threadpoolctl reports is shown) and PyTorch (1 thread and default; ``--torch-python`` or
    ``JAXCALC_BENCH_TORCH_PYTHON`` names a python with torch when jaxcalc's venv has none).
    GB/s = bytes of X (n·d·4) × iterations / time, beside the machine's measured read bandwidth at
    the size of X (it stays in L3) and from DRAM. Target >= 1.5x the faster numpy.
(c) Per-example gradients of an MLP 784-256-10 (softmax cross-entropy) at batch 256 and 1024: the plain
    batch gradient, the ghost-norm clipped step (``per_example.mlp_clipped_mean_grad``), naive vmap
    (``per_example.clipped_mean_grad``: materialises every example's gradient) and a Python loop of a
    jitted one-example gradient (timed on 32 examples and scaled to the batch). Target: clipped step
    within 3x of the plain batch gradient.
(d) Where ``fit``'s large-batch rewrites pay: per workload, ``fit`` with its defaults against
    ``chunked=False, layout="as_given"`` (the plain whole-batch step) and ``chunked=True`` (gradient
    accumulation forced): mini-batches of 25,000 of the (b) data; a full-batch MLP 64-256-10 on
    16,384 examples; a full-batch CNN (``models.cnn``, 8x8x1 digits size) on 2,048 examples; the
    article's MLP (example 2). Each row says what ``fit`` chose.
(e) What value checks cost inside ``fit``: the article's MLP (example 2, MSE: no value check, so only
    the checkified program's machinery) as ``fit`` compiles it against the same run jitted without
    ``checkify``; and the CNN (digits size, mini-batches of 128) and a digits MLP 64-128-10
    (mini-batches of 64) with a cross-entropy that checks its labels (``checks.check_entries``, as
    ``jaxcalc.losses`` do) against the same loss without the check. Target: <= 5%.

Each side runs in its own subprocess, one at a time, alternating, ``--runs`` times; times are medians
[min–max] over all timed repetitions; compile time is reported apart. The CPU model, its caches and
the measured read bandwidth head the output.

    python benchmarks/bench_descent.py [--runs 2] [--only a,b,c,d,e] [--torch-python PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time

from _timing import cpu_name, fmt_times, run_alternating, spawn_worker, timeit  # benchmarks/_timing.py (script folder)

N_ITER = 1000
B_N, B_D, B_LR = 100_000, 16, 0.1
MLP_SIZES = (784, 256, 10)
LOOP_SUBSET = 32
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo (plus AVX-512 and core count), else platform's."""
    name, avx512 = cpu_name(), False
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = any(line.startswith("flags") and "avx512f" in line.split() for line in f)
    except OSError:
        pass
    caches = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            if kind == "Instruction":
                continue
            with open(os.path.join(path, "level")) as f, open(os.path.join(path, "size")) as g:
                caches.append(f"L{f.read().strip()} {g.read().strip()}")
    except OSError:
        pass
    return (f"{name}{', AVX-512' if avx512 else ''}, {os.cpu_count()} cores"
            + (f", caches {' / '.join(caches)} (per core up to L2)" if caches else ""))


def _blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    infos = [f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')}, {i.get('num_threads')} "
             f"thread(s)" for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(infos) or "no BLAS found"


def _read_gbps(nbytes: int, reps: int) -> float:
    """Read bandwidth: median over ``reps`` of BLAS ``sdot`` of the two halves of a float32 array of
    ``nbytes`` (every byte read once, by OpenBLAS's vectorised kernel)."""
    import numpy as np

    a = np.ones(nbytes // 4, np.float32)
    half = a.size // 2
    x, y = a[:half], a[half: 2 * half]
    np.dot(x, y)
    return statistics.median(a.nbytes / t / 1e9 for t in timeit(lambda: np.dot(x, y), reps))


def _compile(jitted, *args, **kwargs):
    t = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t


# --------------------------------------------------------------------------- (a) article example 1


def worker_a_jax():
    import jax
    import jax.numpy as jnp
    import optax

    from experiments.linear import summed_squared_error
    from jaxcalc import losses, optim, train

    x = jnp.array([1.0, 2.0, 3.0])
    y = jnp.array([2.0, 4.0, 6.0])
    opt = optim.gd(0.01)

    def loss(p):
        # 0.5·Σ(ŷ − y)²: its gradient is the article's summed dw = Σ(ŷ − y)x, db = Σ(ŷ − y)
        return 0.5 * jnp.sum(losses.squared_error(p["w"] * x + p["b"], y))

    @jax.jit
    def raw(params):
        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=N_ITER)
        return p

    p0 = {"w": jnp.float32(0.0), "b": jnp.float32(0.0)}
    data = {"x": x, "y": y}
    compiled, t_compile = _compile(raw, p0)
    jax.block_until_ready(compiled(p0))

    def fit():
        return train.fit(summed_squared_error, p0, data, optimizer=opt, epochs=N_ITER)

    t = time.perf_counter()
    out, _ = fit()
    t_fit_first = time.perf_counter() - t
    program = next(v[2] for k, v in train._FIT_CACHE.items() if k[0] is summed_squared_error)
    key = train._default_key()
    calls = {"raw": lambda: jax.block_until_ready(compiled(p0)),
             "program": lambda: jax.block_until_ready(program(p0, data, key)),
             "fit": lambda: jax.block_until_ready(fit()[0])}
    times = {k: [] for k in calls}
    for _ in range(400):  # call by call, alternating, so that load hits all three alike
        for k, f in calls.items():
            times[k] += timeit(f, 1)
    fixed = [a - b for a, b in zip(times["fit"], times["program"], strict=True)]
    return {"times": times["raw"], "fit_times": times["fit"], "program_times": times["program"],
            "fixed_us": statistics.median(fixed) * 1e6, "compile": t_compile, "fit_first": t_fit_first,
            "w": float(out["w"]), "b": float(out["b"]), "device": str(jax.devices()[0]),
            "platform": jax.devices()[0].platform}


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
    return {"times": times, "w": float(w), "b": float(b), "cpu": cpu_model()}


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


def worker_b_fit(variant):
    """``train.fit`` as a user calls it: the whole warm call, 1000 epochs of batch GD."""
    import jax
    import jax.numpy as jnp

    from jaxcalc import optim, train
    from jaxcalc.models.linear import init_linear, mse_loss

    x_np, y_np, w_true = _b_data()
    data = {"x": jnp.asarray(x_np), "y": jnp.asarray(y_np)}
    p0 = init_linear(None, B_D)
    kw = {"fit": {}, "fit_as_given": {"layout": "as_given", "chunked": False},
          "fit_chunked": {"chunked": True, "layout": "as_given"}}[variant.removesuffix("_1thread")]
    opt = optim.gd(B_LR)

    def fit():
        return train.fit(mse_loss, p0, data, optimizer=opt, epochs=N_ITER, **kw)

    t = time.perf_counter()
    out, hist = fit()
    t_first = time.perf_counter() - t
    times = timeit(lambda: jax.block_until_ready(fit()[0]), 4)
    return {"times": times, "compile": t_first, "w_err": float(jnp.max(jnp.abs(out["w"] - w_true))),
            "w": [float(v) for v in out["w"]], "b": float(out["b"]), "final_loss": float(hist["loss"][-1]),
            "layout": _chose(mse_loss, p0, data, kw.get("chunked", "auto"), kw.get("layout", "auto")),
            "device": str(jax.devices()[0])}


def _chose(loss, params, data, chunked="auto", layout="auto") -> str:
    """What ``fit`` (its cached run of ``loss`` with these options) decided about reading the data."""
    from jaxcalc import train

    loop = next(v[1] for k, v in train._FIT_CACHE.items() if k[0] is loss and k[16] == chunked and k[18] == layout)
    how = loop.prepare(params, data, allow_fold=True)
    parts = ["X feature-major" if how.fold and how.fold[0] else "X as given"]
    if how.split:
        parts.append(f"cut into {len(how.split)} chunks of {how.split[0]:,} once per run")
    if how.chunks:
        parts.append("chunks of " + ", ".join(f"{c:,}" for c in how.chunks.values()) + " inside the step")
    return ", ".join(parts)


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
    return {"times": times, "compile": t_compile, "w_err": err, "w": [float(v) for v in out["w"]],
            "b": float(out["b"]), "device": str(jax.devices()[0])}


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
    return {"times": times, "w_err": float(np.max(np.abs(w - w_true))), "w": [float(v) for v in w], "b": float(b),
            "blas": _blas_info(), "blas_env": {k: os.environ.get(k, "unset") for k in BLAS_VARS},
            # read bandwidth at the size of X (6.4 MB, cache-resident) and from DRAM (256 MB)
            "read_gbps_x": _read_gbps(B_N * B_D * 4, 200), "read_gbps_dram": _read_gbps(256 * 2**20, 5)}


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


# --------------------------------------------------------------------------- (d) where fit's rewrites pay

D_CONFIGS = {"fit": {}, "plain": {"chunked": False, "layout": "as_given"}, "chunked": {"chunked": True}}


def _cnn_problem(n, key_seed=0):
    """A digits-size CNN (8x8x1 inputs, models.cnn) and ``n`` random images with labels."""
    import jax

    from jaxcalc.models.cnn import CNNSpec, init_cnn, make_loss

    apply, params = init_cnn(jax.random.key(key_seed), CNNSpec(height=8, width=8, channels=1))
    loss3 = make_loss(apply)
    kx, ky = jax.random.split(jax.random.key(key_seed + 1))
    data = {"x": jax.random.uniform(kx, (n, 8, 8, 1)), "y": jax.random.randint(ky, (n,), 0, 10)}

    def loss(p, b):
        return loss3(p, b, None, train=False)[0]

    return loss, params, data


def _problem(workload):
    """``(loss, params, data, fit keyword arguments, label)`` of a (d) workload."""
    import jax
    import jax.numpy as jnp

    from jaxcalc import losses, optim

    if workload == "minibatch":
        from jaxcalc.models.linear import init_linear, mse_loss

        x, y, _ = _b_data()
        return (mse_loss, init_linear(None, B_D), {"x": jnp.asarray(x), "y": jnp.asarray(y)},
                dict(optimizer=optim.gd(B_LR), method="minibatch", batch_size=25_000, epochs=40,
                     key=jax.random.key(0)), "linear n=100k d=16, mini-batches of 25,000, 160 steps")
    if workload == "mlp":
        from jaxcalc.models.mlp import init_mlp, mlp_apply

        kx, ky, kp = jax.random.split(jax.random.key(0), 3)
        data = {"x": jax.random.normal(kx, (16_384, 64)), "y": jax.random.randint(ky, (16_384,), 0, 10)}

        def loss(p, b):
            return losses.cross_entropy(mlp_apply(p, b["x"]), b["y"])

        return (loss, init_mlp(kp, (64, 256, 10)), data, dict(optimizer=optim.gd(0.1), epochs=10),
                "MLP 64-256-10 cross-entropy, full batch of 16,384, 10 steps")
    if workload == "cnn":
        loss, params, data = _cnn_problem(2048)
        return (loss, params, data, dict(optimizer=optim.gd(0.05), epochs=5),
                "CNN (models.cnn, 8x8x1), full batch of 2,048, 5 steps")
    from experiments.mlp import ARTICLE_SIZES, ARTICLE_X, ARTICLE_Y, article_loss
    from jaxcalc.models.mlp import init_mlp

    data = {"x": jnp.asarray(ARTICLE_X), "y": jnp.asarray(ARTICLE_Y)[:, None]}
    return (article_loss, init_mlp(jax.random.key(0), ARTICLE_SIZES, init="glorot_uniform"), data,
            dict(optimizer=optim.adam(0.01), epochs=1000), "article's MLP (example 2), 1000 Adam steps")


def worker_d(workload):
    import jax

    from jaxcalc import batchstep, train

    loss, params, data, kw, label = _problem(workload)
    fits = {name: (lambda extra=extra: train.fit(loss, params, data, **kw, **extra)) for name, extra in
            D_CONFIGS.items()}
    compile_s, outs = {}, {}
    for name, f in fits.items():
        t = time.perf_counter()
        outs[name] = f()
        compile_s[name] = time.perf_counter() - t
    times = {name: [] for name in fits}
    for _ in range(3):
        for name, f in fits.items():
            times[name] += timeit(lambda f=f: jax.block_until_ready(f()[0]), 1)
    times = {"times": times["fit"], "plain_times": times["plain"], "chunked_times": times["chunked"]}
    loop = next(v[1] for k, v in train._FIT_CACHE.items() if k[0] is loss and k[16] == "auto")
    b = loop.plan.batch_size
    if b >= 3:
        proof = batchstep.prove_mean_over_examples(loss, params, batchstep.abstract_batch(data, b), max(2, b // 3))
        proof_note = "proved a mean" if proof.ok else f"not proved: {proof.reason}"
    else:
        proof_note = f"batches of {b}: nothing to chunk"
    chose = _chose(loss, params, data)
    diff = {name: max(float(abs(a - c).max()) for a, c in zip(jax.tree.leaves(outs[name][0]),
                                                                jax.tree.leaves(outs["plain"][0]), strict=True))
            for name in fits}
    return {"label": label, **times, "compile_s": compile_s, "chose": chose,
            "proof": proof_note, "max_diff": diff}


# --------------------------------------------------------------------------- (e) value checks' cost


def _ce(logits, labels, check):
    """Mean softmax cross-entropy; with ``check``, the label check jaxcalc.losses make."""
    import jax
    import jax.numpy as jnp

    from jaxcalc import checks

    k = logits.shape[-1]
    bad = (labels < 0) | (labels >= k)
    if check:
        checks.check_entries(bad, labels, name="labels", condition=f"is outside the valid class range [0, {k})",
                             noun="label(s)")
    picked = jnp.take_along_axis(logits, jnp.clip(labels, 0, k - 1)[:, None], axis=-1)[:, 0]
    return jnp.mean(checks.poison(jax.nn.logsumexp(logits, axis=-1) - picked, bad))


def worker_e(workload):
    import jax
    import jax.numpy as jnp

    from jaxcalc import optim, train

    if workload == "article":  # MSE: no value check; the cost of the checkified program itself
        from experiments.mlp import ARTICLE_SIZES, ARTICLE_X, ARTICLE_Y, article_loss
        from jaxcalc.models.mlp import init_mlp

        data = {"x": jnp.asarray(ARTICLE_X), "y": jnp.asarray(ARTICLE_Y)[:, None]}
        params = init_mlp(jax.random.key(0), ARTICLE_SIZES, init="glorot_uniform")
        opt = optim.adam(0.01)
        train.fit(article_loss, params, data, optimizer=opt, epochs=1000)
        entry = next(v for k, v in train._FIT_CACHE.items() if k[0] is article_loss)
        loop, checked_program = entry[1], entry[2]

        @jax.jit
        def unchecked_program(params, data, key):
            state, recs = loop.run(params, data, key, None, 1000)
            return state.params, *train._pack(loop, state, recs)

        key = train._default_key()
        ops = [sorted(re.findall(r"= \S+ (\w[\w-]*)\(", prog.lower(params, data, key).compile().as_text()))
               for prog in (checked_program, unchecked_program)]
        note = ("same optimized HLO (op for op) with and without checkify" if ops[0] == ops[1]
                else f"HLO ops {len(ops[0])} with checkify, {len(ops[1])} without")
        calls = {"checked": lambda: jax.block_until_ready(checked_program(params, data, key)),
                 "unchecked": lambda: jax.block_until_ready(unchecked_program(params, data, key))}
        label = "article's MLP (example 2, MSE), fit's program with and without checkify, 1000 Adam steps"
        reps = 200
    else:
        if workload == "cnn":
            from jaxcalc.data.digits import load_digits_images
            from jaxcalc.models.cnn import CNNSpec, init_cnn

            apply, params = init_cnn(jax.random.key(0), CNNSpec(height=8, width=8, channels=1))
            images, labels = load_digits_images()
            data = {"x": jnp.asarray(images, jnp.float32) / 16.0, "y": jnp.asarray(labels)}

            def logits_fn(p, x):
                return apply(p, x, train=False)

            kw = dict(method="minibatch", batch_size=128, epochs=2)
            label = "CNN (models.cnn) on the 1,797 digits, mini-batches of 128, 2 epochs"
            note = "cross-entropy with its label check vs the same loss without it"
        else:
            from sklearn.datasets import load_digits

            from jaxcalc.models.mlp import init_mlp, mlp_apply

            d = load_digits()
            data = {"x": jnp.asarray(d.data / 16.0, jnp.float32), "y": jnp.asarray(d.target, jnp.int32)}
            params = init_mlp(jax.random.key(0), (64, 128, 10))
            logits_fn = mlp_apply
            kw = dict(method="minibatch", batch_size=64, epochs=5)
            label = "digits MLP 64-128-10, mini-batches of 64, 5 epochs"
            note = "cross-entropy with its label check vs the same loss without it"

        def checked(p, b):
            return _ce(logits_fn(p, b["x"]), b["y"], True)

        def unchecked(p, b):
            return _ce(logits_fn(p, b["x"]), b["y"], False)

        opt = optim.adam(1e-3)
        calls = {name: (lambda fn=fn: jax.block_until_ready(
            train.fit(fn, params, data, optimizer=opt, key=jax.random.key(0), **kw)[0]))
            for name, fn in (("checked", checked), ("unchecked", unchecked))}
        reps = 15
    for f in calls.values():
        f()
    times = {k: [] for k in calls}
    for _ in range(reps):
        for k, f in calls.items():
            times[k] += timeit(f, 1)
    return {"label": label, "times": times["checked"], "unchecked_times": times["unchecked"], "note": note}


# --------------------------------------------------------------------------- driver

WORKERS = {
    "a_jax": worker_a_jax,
    "a_numpy": worker_a_numpy,
    "a_numpy_as_written": worker_a_numpy_as_written,
    "b_fit": lambda: worker_b_fit("fit"),
    "b_fit_as_given": lambda: worker_b_fit("fit_as_given"),
    "b_fit_chunked": lambda: worker_b_fit("fit_chunked"),
    "b_fit_1thread": lambda: worker_b_fit("fit_1thread"),  # spawned with XLA on 1 thread
    "b_jax_autodiff": lambda: worker_b_jax("autodiff"),
    "b_jax_matmul": lambda: worker_b_jax("matmul"),
    "b_jax_gram": lambda: worker_b_jax("gram"),
    "b_numpy": worker_b_numpy,
    "b_numpy_1thread": worker_b_numpy,  # spawned with OPENBLAS_NUM_THREADS=1
    "b_numpy_unset": worker_b_numpy,  # spawned without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
    "b_numpy_1thread_unset": worker_b_numpy,
    "b_torch": worker_b_torch,
    "b_torch_1thread": lambda: worker_b_torch(1),
    "c_jax_256": lambda: worker_c_jax(256),
    "c_jax_1024": lambda: worker_c_jax(1024),
    "d_minibatch": lambda: worker_d("minibatch"),
    "d_mlp": lambda: worker_d("mlp"),
    "d_cnn": lambda: worker_d("cnn"),
    "d_article": lambda: worker_d("article"),
    "e_article": lambda: worker_e("article"),
    "e_cnn": lambda: worker_e("cnn"),
    "e_mlp": lambda: worker_e("mlp"),
}
GROUPS = {
    "a": ["a_jax", "a_numpy", "a_numpy_as_written"],
    "b": ["b_fit", "b_fit_as_given", "b_fit_chunked", "b_fit_1thread", "b_jax_autodiff", "b_jax_matmul", "b_jax_gram",
          "b_numpy", "b_numpy_1thread", "b_numpy_unset", "b_numpy_1thread_unset", "b_torch", "b_torch_1thread"],
    "c": ["c_jax_256", "c_jax_1024"],
    "d": ["d_minibatch", "d_mlp", "d_cnn", "d_article"],
    "e": ["e_article", "e_cnn", "e_mlp"],
}
BLAS_SET = any(v in os.environ for v in BLAS_VARS)
if not BLAS_SET:  # nothing to unset: one numpy variant per thread setting
    GROUPS["b"] = [n for n in GROUPS["b"] if not n.endswith("_unset")]

WORKER_ENV = {
    "b_numpy_1thread": {"OPENBLAS_NUM_THREADS": "1"},
    "b_numpy_1thread_unset": {"OPENBLAS_NUM_THREADS": "1"},
    "b_fit_1thread": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
}
TORCH_PYTHON = os.environ.get("JAXCALC_BENCH_TORCH_PYTHON")


def _spawn(name):
    env = dict(os.environ, **WORKER_ENV.get(name, {}))
    if name.endswith("_unset"):
        for var in BLAS_VARS:
            env.pop(var, None)
    python = TORCH_PYTHON if name.startswith("b_torch") else None
    return spawn_worker(__file__, name, env=env, python=python)


def _ratio_row(label, mine, peer, peer_label, notes, unit="s"):
    j, jm = fmt_times(mine, unit)
    p, pm = fmt_times(peer, unit)
    return f"| {label} | {j} | {peer_label} {p} | **{pm / jm:.2f}x** | {notes} |"


def main():
    global TORCH_PYTHON
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="process runs per side (alternating)")
    parser.add_argument("--only", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    parser.add_argument("--torch-python", default=TORCH_PYTHON,
                        help="python with torch for the PyTorch rows (default: $JAXCALC_BENCH_TORCH_PYTHON, "
                             "else this python)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker]()))
        return
    TORCH_PYTHON = args.torch_python

    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    names = [n for g in groups for n in GROUPS[g]]
    r = run_alternating(names, args.runs, _spawn)

    device = next((r[n]["device"] for n in r if "device" in r[n]), None)
    if device is None:
        device = _spawn("a_jax")["device"]
    print(f"CPU: {cpu_model()}")
    print(f"device: {device}; {args.runs} process run(s) per side, each side in its own subprocess; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', 'unset')}; "
          + ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in BLAS_VARS))
    print()
    print("| workload | jaxcalc | peer | ratio (peer / jaxcalc) | notes |")
    print("|---|---|---|---|---|")
    compile_lines = []

    if "a" in groups:
        ra = r["a_jax"]
        n = r["a_numpy"]["times"]
        note = (f"target >= 100x; fit's fixed cost (whole call − its compiled program, paired) "
                f"**{ra['fixed_us']:.1f} us** (target <= 10 us); w={ra['w']:.4f} b={ra['b']:.4f}, numpy "
                f"w={r['a_numpy']['w']:.4f} b={r['a_numpy']['b']:.4f}")
        print(_ratio_row("(a) article ex. 1, 1000 GD iters: `train.fit(...)`, whole warm call", ra["fit_times"],
                         n, "numpy loop", note, "us"))
        print(_ratio_row("(a) same, fit's compiled program alone", ra["program_times"], n, "numpy loop",
                         "what fit runs: the scan with the divergence guard, history and checks", "us"))
        print(_ratio_row("(a) same, a bare jitted scan of optim.gd", ra["times"], n, "numpy loop",
                         "no history, no guard", "us"))
        aw = r["a_numpy_as_written"]
        print(_ratio_row("(a') numpy as the article writes it, vs fit", ra["fit_times"], aw["times"], "numpy loop",
                         f"X (3,1) − y (3,) broadcasts to (3,3): w={aw['w']:.3f} b={aw['b']:.3f} (wrong; "
                         f"jaxcalc's losses raise on it)", "us"))
        compile_lines.append(f"(a) bare scan {ra['compile'] * 1e3:.0f} ms, first fit call (trace + compile) "
                             f"{ra['fit_first'] * 1e3:.0f} ms")

    if "b" in groups:
        gb = B_N * B_D * 4 * N_ITER / 1e9
        np_keys = [k for k in GROUPS["b"] if k.startswith("b_numpy")]
        best_np = min(np_keys, key=lambda k: statistics.median(r[k]["times"]))
        n = r[best_np]["times"]
        nm = statistics.median(n)

        def np_label(k):
            threads = "1 BLAS thread" if "1thread" in k else "default threads"
            env = ", OPENBLAS_CORETYPE/L2_SIZE unset" if k.endswith("_unset") else ""
            return f"numpy ({threads}{env})"

        fit_ref = r["b_fit"]
        jax_rows = (("b_fit", "**`train.fit(mse_loss, ...)`**, whole warm call"),
                    ("b_fit_as_given", "`train.fit`, `layout=\"as_given\"` (X row-major: the previous step)"),
                    ("b_fit_chunked", "`train.fit`, `chunked=True` (gradient accumulation forced)"),
                    ("b_fit_1thread", "`train.fit`, XLA on 1 thread"),
                    ("b_jax_autodiff", "bare scan of `jax.grad(losses.mse)`, X row-major"),
                    ("b_jax_matmul", "bare scan, hand-written Xᵀ(Xw+b−y) matmuls"))
        for key, label in jax_rows:
            jm = statistics.median(r[key]["times"])
            same = max(abs(a - c) for a, c in zip(r[key]["w"], fit_ref["w"], strict=True))
            extra = f"; {r[key]['layout']}" if "layout" in r[key] else ""
            print(_ratio_row(f"(b) n=100k d=16 GD, 1000 iters, {label}", r[key]["times"], n, np_label(best_np),
                             f"{gb / jm:.1f} GB/s vs numpy {gb / nm:.1f}; target >= 1.5x the faster numpy; "
                             f"max abs(w − fit's w) {same:.1e}, abs(w − w_true) {r[key]['w_err']:.1e}{extra}"))
            compile_lines.append(f"(b) {r[key].get('layout', key)} {key}: {r[key]['compile'] * 1e3:.0f} ms")
        print(_ratio_row("(b) same GD iterates via XᵀX, Xᵀy (one pass over X, then O(d²) per iteration)",
                         r["b_jax_gram"]["times"], n, np_label(best_np),
                         "a different algorithm (numpy could do it too): not counted for the target"))
        fm = statistics.median(fit_ref["times"])
        for key in [*np_keys, "b_torch", "b_torch_1thread"]:
            label = np_label(key) if key.startswith("b_numpy") else (
                "PyTorch, 1 thread" if key.endswith("1thread") else "PyTorch, default threads")
            if "skipped" in r[key]:
                print(f"| (b) {label} | | skipped | | {r[key]['skipped']} |")
                continue
            t, tm = fmt_times(r[key]["times"], "s")
            if "torch" in r[key]:
                extra = f"torch {r[key]['torch']}, {r[key]['threads']} threads"
            else:
                extra = f"{r[key]['blas']}; max abs(w − fit's w) " + \
                    f"{max(abs(a - c) for a, c in zip(r[key]['w'], fit_ref['w'], strict=True)):.1e}"
            print(f"| (b) {label} | fit {fm:.3g} s | {t} ({gb / tm:.1f} GB/s) | {tm / fm:.2f}x | {extra} |")
        rb = r[best_np]
        print(f"| (b) read bandwidth, numpy `dot` ({np_label(best_np)}) | | {rb['read_gbps_x']:.1f} GB/s at 6.4 MB "
              f"(X's size, cache-resident); {rb['read_gbps_dram']:.1f} GB/s at 256 MB (DRAM) | | GB/s above count "
              f"one pass over X per iteration ({gb:.1f} GB per run); numpy's loop and a whole-batch step "
              f"read X twice per iteration |")

    if "d" in groups:
        for key in GROUPS["d"]:
            d = r[key]
            fm, pm, cm = (statistics.median(d[k]) for k in ("times", "plain_times", "chunked_times"))
            f, _ = fmt_times(d["times"], "ms")
            p, _ = fmt_times(d["plain_times"], "ms")
            c, _ = fmt_times(d["chunked_times"], "ms")
            print(f"| (d) {d['label']}: `fit` (defaults) | {f} | whole batch as given {p}; chunked=True {c} "
                  f"({pm / cm:.2f}x the whole batch) | **{pm / fm:.2f}x** | fit chose: {d['chose']}; "
                  f"{d['proof']}; max abs diff vs whole batch: fit {d['max_diff']['fit']:.1e}, chunked "
                  f"{d['max_diff']['chunked']:.1e} |")

    if "e" in groups:
        for key in GROUPS["e"]:
            e = r[key]
            c, cm = fmt_times(e["times"], "ms")
            u, um = fmt_times(e["unchecked_times"], "ms")
            best = min(e["times"]) / min(e["unchecked_times"]) - 1
            print(f"| (e) value checks: {e['label']} | with {c} | without {u} | **{(cm / um - 1) * 100:+.1f}%** "
                  f"(of the minima {best * 100:+.1f}%) | target <= 5%; {e['note']} |")

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
