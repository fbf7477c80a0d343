"""Training-step throughput of the article's CNN: jaxcalc vs PyTorch eager vs Keras/TensorFlow.

The model (all sides): Conv(32, 3x3, VALID) + relu -> MaxPool 2x2 -> Flatten -> Dense(64) + relu
-> Dropout(0.5) -> Dense(10) logits; 32x32x3 float32 images; Adam(1e-3); softmax cross-entropy on
the logits with integer labels. One "step" = forward + backward + Adam update on one batch.

Sides, each in its own subprocess, run one after another and alternated over ``--runs`` rounds
(BENCHMARKING.md):

- ``jax-xla``: a pure-JAX step with ``lax.conv_general_dilated`` + ``reduce_window`` max pooling
  (what flax's ``nnx.Conv`` + ``nnx.max_pool`` compile to), i.e. ``jaxcalc.ops`` with ``impl="xla"``.
- ``jax-ops``: the same step with ``ops.conv2d`` (im2col + one matmul) and ``ops.max_pool``
  (reshape + max, mask backward): ``impl="auto"`` on this device.
- ``jax-fused``: the same step with ``ops.conv2d_relu_max_pool`` (chunked conv+relu+pool).
- ``jaxcalc-model``: the real ``jaxcalc.models.cnn`` step (flax NNX module split once, its own
  loss, optax Adam), whatever ops it calls.
- ``torch`` / ``torch-cl``: PyTorch eager, NCHW default / ``channels_last``, default threads;
  ``torch-cl-1t``: ``channels_last`` on one thread (on a loaded 2-core VM PyTorch's OpenMP
  pool can be several times slower with 2 threads than with 1, so its best setting is shown).
- ``keras-xla`` / ``keras``: Keras 3 on TensorFlow, ``jit_compile=True`` / ``False`` (oneDNN).
- ``peak``: a 2048x2048 float32 matmul in JAX: the machine's matmul peak, for the %-of-peak column.

FLOPs per image (forward): conv 30*30*32*27*2 = 1,555,200; dense 7200*64*2 = 921,600; out 64*10*2
= 1,280; total 2,478,080. Training counts 3x forward (forward + two backward matmuls per layer):
7.43 MFLOP/image (the first conv's input gradient is not needed, so the real work is ~5.9 MFLOP).

Environment: if ``--hugepages`` (default on), every side runs with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for malloc: fewer first-touch
page faults on large fresh buffers; BENCHMARKING.md), the same for all frameworks. No XLA flags are set.

Usage::

    python3 benchmarks/bench_cnn.py                     # batch 32, 128, 512; all sides found
    python3 benchmarks/bench_cnn.py --batch 128 --runs 2 --steps 20
    python3 benchmarks/bench_cnn.py --tf-python /path/to/venv/bin/python   # Keras from another env
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _timing import timeit  # benchmarks/_timing.py (script folder)

FWD_FLOPS = 30 * 30 * 32 * 27 * 2 + 7200 * 64 * 2 + 64 * 10 * 2
TRAIN_FLOPS = 3 * FWD_FLOPS
JAX_SIDES = ("jax-xla", "jax-ops", "jax-fused", "jaxcalc-model")
PEER_SIDES = ("torch", "torch-cl", "torch-cl-1t", "keras-xla", "keras")


# ============================================================================ workers


def worker_jax(side, batch, steps):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxcalc import losses, ops

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, 32, 32, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    opt = optax.adam(1e-3)

    if side == "jaxcalc-model":
        from jaxcalc.models import cnn

        apply, params = cnn.init_cnn(jax.random.key(0))
        model_loss = cnn.make_loss(apply)

        def loss(params, x, y, key):
            return model_loss(params, {"x": x, "y": y}, key, train=True)[0]
    else:
        k = jax.random.split(jax.random.key(0), 3)
        params = {  # same shapes and initialisers' scale as the flax model (LeCun normal)
            "conv": {"w": jax.random.normal(k[0], (3, 3, 3, 32)) / np.sqrt(27), "b": jnp.zeros(32)},
            "d1": {"w": jax.random.normal(k[1], (7200, 64)) / np.sqrt(7200), "b": jnp.zeros(64)},
            "d2": {"w": jax.random.normal(k[2], (64, 10)) / np.sqrt(64), "b": jnp.zeros(10)},
        }

        def block(p, x):
            if side == "jax-fused":
                return ops.conv2d_relu_max_pool(x, p["conv"]["w"], p["conv"]["b"])
            impl_c, impl_p = ("xla", "xla") if side == "jax-xla" else ("auto", "auto")
            h = jax.nn.relu(ops.conv2d(x, p["conv"]["w"], p["conv"]["b"], impl=impl_c))
            return ops.max_pool(h, 2, impl=impl_p)

        def loss(p, x, y, key):
            h = block(p, x).reshape(x.shape[0], -1)
            h = jax.nn.relu(h @ p["d1"]["w"] + p["d1"]["b"][None, :])
            keep = jax.random.bernoulli(key, 0.5, h.shape)
            h = jnp.where(keep, h / 0.5, 0.0)
            return losses.cross_entropy(h @ p["d2"]["w"] + p["d2"]["b"][None, :], y)

    @jax.jit
    def train_step(params, state, x, y, key):
        key, sub = jax.random.split(key)
        value, grads = jax.value_and_grad(loss)(params, x, y, sub)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, key, value

    carry = [params, opt.init(params), jax.random.key(1)]

    def step():
        p, s, k, v = train_step(*carry[:2], x, y, carry[2])
        jax.block_until_ready((p, v))
        carry[:] = [p, s, k]

    t = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t
    step()  # one more warm-up (allocator, thread pool)
    times = timeit(step, steps)
    resolved = {"jax-xla": "xla", "jax-fused": f"fused/{ops.resolve_impl('auto', 'conv')}",
                "jax-ops": f"{ops.resolve_impl('auto', 'conv')}+{ops.resolve_impl('auto', 'pool')}",
                "jaxcalc-model": "model"}[side]
    return {"times": times, "compile_s": compile_s, "device": str(jax.devices()[0]), "impl": resolved}


def worker_peak(steps):
    import jax
    import jax.numpy as jnp

    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, a).block_until_ready()
    times = timeit(lambda: f(a, a).block_until_ready(), max(steps, 10))
    return {"times": times, "flops": 2 * 2048 ** 3, "device": str(jax.devices()[0]),
            "threads": os.cpu_count()}


def worker_torch(side, batch, steps):
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    if side.endswith("-1t"):
        torch.set_num_threads(1)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(7200, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((batch, 3, 32, 32), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch).astype(np.int64))
    if side.startswith("torch-cl"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossf = nn.CrossEntropyLoss()  # softmax cross-entropy on logits
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    t = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t
    step()
    times = timeit(step, steps)
    return {"times": times, "compile_s": compile_s, "device": f"cpu, {torch.get_num_threads()} threads",
            "impl": f"torch {torch.__version__}"}


def worker_keras(side, batch, steps):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dropout(0.5),
        keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=(side == "keras-xla"))
    rng = np.random.default_rng(0)
    x = rng.random((batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)

    def step():
        model.train_on_batch(x, y)

    t = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t
    step()
    times = timeit(step, steps)
    return {"times": times, "compile_s": compile_s, "device": "cpu",
            "impl": f"keras {keras.__version__} / tf {tf.__version__}, jit_compile={side == 'keras-xla'}"}


def run_worker(side, batch, steps):
    try:
        if side == "peak":
            res = worker_peak(steps)
        elif side in JAX_SIDES:
            res = worker_jax(side, batch, steps)
        elif side.startswith("torch"):
            res = worker_torch(side, batch, steps)
        else:
            res = worker_keras(side, batch, steps)
    except ImportError as e:
        res = {"skip": f"not importable ({e.name or e})"}
    print("RESULT " + json.dumps(res), flush=True)


# ============================================================================ driver
def launch(side, batch, steps, args):
    env = dict(os.environ)
    if args.hugepages:
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    python = args.tf_python if side.startswith("keras") and args.tf_python else sys.executable
    cmd = [python, os.path.abspath(__file__), "--worker", side, "--batch", str(batch), "--steps", str(steps)]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"skip": f"timed out after {args.timeout}s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"skip": f"failed: {tail[:120]}"}


def _fmt(v):
    return f"{v:,.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per process (after 2 warm-up steps)")
    ap.add_argument("--runs", type=int, default=2, help="process runs per side and batch, alternated")
    ap.add_argument("--sides", nargs="+", default=list(JAX_SIDES + PEER_SIDES))
    ap.add_argument("--tf-python", default=os.environ.get("JAXCALC_BENCH_TF_PYTHON"),
                    help="python interpreter that has tensorflow (optional; default $JAXCALC_BENCH_TF_PYTHON)")
    ap.add_argument("--no-hugepages", dest="hugepages", action="store_false")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.batch[0], args.steps)
        return 0

    peaks = []  # the matmul peak, measured before each batch size: the best of these is the peak

    def measure_peak():
        res = launch("peak", 0, args.steps, args)
        if "times" in res:
            peaks.append(res)

    results = {}  # (side, batch) -> {"times": [...], "compile": [...], ...}
    skipped = {}
    for batch in args.batch:
        measure_peak()
        for r in range(args.runs):
            order = args.sides if r % 2 == 0 else list(reversed(args.sides))  # alternate the order
            for side in order:
                if side in skipped:
                    continue
                res = launch(side, batch, args.steps, args)
                if "skip" in res:
                    skipped[side] = res["skip"]
                    continue
                acc = results.setdefault((side, batch), {"times": [], "compile": [], "impl": res["impl"],
                                                         "device": res["device"]})
                acc["times"] += res["times"]
                acc["compile"].append(res["compile_s"])
                print(f"  {side:14s} batch {batch:4d} run {r + 1}: "
                      f"{batch / statistics.median(res['times']):8,.0f} img/s", file=sys.stderr, flush=True)

    measure_peak()
    peak = peaks[0] if peaks else {}
    peak_gflops = max((p["flops"] / min(p["times"]) / 1e9 for p in peaks), default=float("nan"))
    print(f"\nDevice: {peak.get('device', '?')} ({peak.get('threads', '?')} CPUs visible); float32 matmul "
          f"peak (jax 2048x2048, best of {len(peaks)} runs): {peak_gflops:,.0f} GFLOP/s; "
          f"GLIBC_TUNABLES={'glibc.malloc.hugetlb=1' if args.hugepages else '(unset)'} for every side.")
    print(f"Step = forward + backward + Adam, float32, 32x32x3, {args.runs} processes x {args.steps} steps "
          f"per cell; images/s median [min-max]; GFLOP/s at {TRAIN_FLOPS / 1e6:.2f} MFLOP/image.\n")
    print("| batch | side | images/s median [min-max] | GFLOP/s | % of matmul peak | compile s | impl |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        for side in args.sides:
            acc = results.get((side, batch))
            if acc is None:
                continue
            ips = [batch / t for t in acc["times"]]
            med = statistics.median(ips)
            gf = med * TRAIN_FLOPS / 1e9
            print(f"| {batch} | {side} | {_fmt(med)} [{_fmt(min(ips))}-{_fmt(max(ips))}] | {gf:.1f} | "
                  f"{100 * gf / peak_gflops:.1f}% | {statistics.median(acc['compile']):.2f} | {acc['impl']} |")
    for side, why in skipped.items():
        print(f"\n{side}: skipped, {why}")

    def best(sides, batch):
        cands = [(statistics.median([batch / t for t in results[(s, batch)]["times"]]), s)
                 for s in sides if (s, batch) in results]
        return max(cands) if cands else None

    print("\n| workload | jaxcalc | peer | ratio | notes |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        jx = best([s for s in JAX_SIDES if s != "jax-xla"], batch)
        if jx is None:
            continue
        for label, sides in (("PyTorch eager (best layout/threads)", ("torch", "torch-cl", "torch-cl-1t")),
                             ("Keras/TF (best of jit on/off)", ("keras", "keras-xla")),
                             ("JAX lax.conv + reduce_window", ("jax-xla",))):
            pr = best(sides, batch)
            if pr is None:
                continue
            print(f"| train step, batch {batch} | {_fmt(jx[0])} img/s ({jx[1]}) | {_fmt(pr[0])} img/s ({pr[1]}) | "
                  f"{jx[0] / pr[0]:.2f}x | {label} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
