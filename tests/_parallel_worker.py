"""Data-parallel checks on simulated CPU devices, run in a subprocess by tests/test_parallel.py.

    python3 tests/_parallel_worker.py single               # 8 devices in one process
    python3 tests/_parallel_worker.py host PROCESS_ID      # one of 2 processes x 4 devices
                                                           # (JAX_COORDINATOR_ADDRESS etc. set)

The device count has to be fixed before JAX starts, so this cannot run inside pytest's process.
Prints one JSON object (the last line of stdout): measured differences between the sharded
runs and a plain single-device ``jax.jit`` of the same step, sharding facts, and error messages.
"""
from __future__ import annotations

import json
import sys

import jax

MODE = sys.argv[1] if len(sys.argv) > 1 else "single"
jax.config.update("jax_num_cpu_devices", 8 if MODE == "single" else 4)
jax.config.update("jax_numpy_rank_promotion", "raise")

from jaxcalc import parallel  # noqa: E402  (after the device count is fixed)

DISTRIBUTED = parallel.initialize_distributed()  # True only in "host" mode (env set by the test)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxcalc import losses  # noqa: E402
from jaxcalc.models.mlp import init_mlp, mlp_apply  # noqa: E402

STEPS = 3
BATCH = 32


def rel_diff(a, b) -> float:
    """max |a - b| / max |b| over all leaves (0 when both are 0)."""
    num = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    den = max(float(np.max(np.abs(np.asarray(y, np.float64)))) for y in jax.tree.leaves(b))
    return num / den if den else num


def make_step(loss_fn, optimizer):
    """The ordinary single-device step: loss_fn(params, batch, key) -> scalar mean loss."""

    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def run_steps(step_fn, params, opt_state, batches, keys):
    out_losses = []
    for batch, key in zip(batches, keys, strict=True):
        params, opt_state, loss = step_fn(params, opt_state, batch, key)
        out_losses.append(loss)
    return params, opt_state, out_losses


def fetch(tree):
    """Host copy of a (possibly multi-host) replicated or sharded tree."""
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))  # a global array

    return jax.tree.map(one, tree)


def compare(name, loss_fn, params, batches, meshes):
    """Run STEPS Adam steps plainly and data-parallel on each mesh; report the differences."""
    optimizer = optax.adam(1e-2)
    step = make_step(loss_fn, optimizer)
    keys = list(jax.random.split(jax.random.key(7), STEPS))
    ref_p, _ref_s, ref_l = run_steps(jax.jit(step), params, optimizer.init(params), batches, keys)
    ref_p, ref_l = fetch(ref_p), [float(v) for v in ref_l]
    res = {"ref_loss": ref_l, "bytes": parallel.allreduce_bytes_per_step(params)}
    for label, mesh, fsdp in meshes:
        dp = parallel.data_parallel(step, mesh, shard_params=fsdp)
        opt_state = optimizer.init(params)
        p, s, ls = run_steps(dp, params, opt_state, batches, keys)
        leaves = jax.tree.leaves(p)
        res[label] = {
            "param_rel_diff": rel_diff(fetch(p), ref_p),
            "loss_diff": max(abs(float(fetch(a)) - b) for a, b in zip(ls, ref_l, strict=True)),
            "n_devices": mesh.size,
            "params_replicated": all(x.sharding.is_fully_replicated for x in leaves),
            "params_sharded": sum(not x.sharding.is_fully_replicated for x in leaves),
            "opt_state_sharded": sum(not x.sharding.is_fully_replicated
                                     for x in jax.tree.leaves(s) if x.ndim),
            "n_leaves": len(leaves),
        }
        if name == "mlp" and label == "dp8" and MODE == "single":
            # the gradient all-reduce XLA inserted (costs one more compile)
            res[label]["all_reduce"] = "all-reduce" in dp.lower(
                params, opt_state, batches[0], keys[0]).compile().as_text()
    return name, res


RNG = np.random.default_rng(0)  # data from numpy: no eager JAX ops to compile


def mlp_case():
    params = jax.jit(init_mlp, static_argnums=1)(jax.random.key(0), (6, 16, 3))
    x = RNG.normal(size=(STEPS, BATCH, 6)).astype(np.float32)
    y = RNG.integers(0, 3, size=(STEPS, BATCH)).astype(np.int32)
    batches = [{"x": x[i], "y": y[i]} for i in range(STEPS)]

    def loss_fn(p, batch, key):
        del key
        return losses.cross_entropy(mlp_apply(p, batch["x"]), batch["y"])

    return loss_fn, params, batches


def cnn_case():
    from jaxcalc.models import cnn

    spec = cnn.CNNSpec(height=8, width=8, channels=1, num_classes=4, filters=4, hidden=8)
    apply, _ = cnn.abstract_params(spec)
    params = jax.jit(lambda k: cnn.init_cnn(k, spec)[1])(jax.random.key(2))  # one compile, not ~20
    loss = cnn.make_loss(apply)
    x = RNG.uniform(size=(STEPS, BATCH, 8, 8, 1)).astype(np.float32)
    y = RNG.integers(0, 4, size=(STEPS, BATCH)).astype(np.int32)
    batches = [{"x": x[i], "y": y[i]} for i in range(STEPS)]

    def loss_fn(p, batch, key):  # dropout on: its mask must not depend on the device count
        return loss(p, batch, key, train=True)[0]

    return loss_fn, params, batches


def recommender_case():
    from jaxcalc.models import recommender

    users, items = 24, 16  # FSDP splits the (24, k) / (16, k) tables and the biases 8 ways
    params = recommender.init(jax.random.key(4), users, items, factors=4, global_mean=3.5)
    batches = [{"user": RNG.integers(0, users, BATCH).astype(np.int32),
                "item": RNG.integers(0, items, BATCH).astype(np.int32),
                "rating": RNG.integers(1, 6, BATCH).astype(np.float32)} for _ in range(STEPS)]

    def loss_fn(p, batch, key):
        del key
        return recommender.loss(p, batch, reg=0.05)

    return loss_fn, params, batches


def scan_epoch_case(meshes):
    """A fit-style epoch: shuffle inside jit, reshape to (steps, B, ...), constrain, lax.scan."""
    n, b = 4 * BATCH, BATCH
    params = jax.jit(init_mlp, static_argnums=1)(jax.random.key(5), (6, 16, 1))
    x = RNG.normal(size=(n, 6)).astype(np.float32)
    data = {"x": x, "y": np.sin(x[:, 0])}
    optimizer = optax.sgd(0.1)

    def loss_fn(p, batch):
        return losses.mse(mlp_apply(p, batch["x"])[:, 0], batch["y"])

    def make_epoch(mesh):
        def epoch(params, opt_state, data, key):
            perm = jax.random.permutation(key, n).reshape(n // b, b)
            batches = jax.tree.map(lambda v: v[perm], data)  # (steps, b, ...)
            if mesh is not None:
                batches = parallel.constrain_batch(batches, mesh, axis=1)

            def body(carry, batch):
                p, s = carry
                loss, g = jax.value_and_grad(loss_fn)(p, batch)
                u, s = optimizer.update(g, s, p)
                return (optax.apply_updates(p, u), s), loss

            (params, opt_state), ls = jax.lax.scan(body, (params, opt_state), batches)
            return params, opt_state, ls
        return epoch

    key = jax.random.key(8)
    ref = jax.jit(make_epoch(None))(params, optimizer.init(params), data, key)
    out = {}
    for label, mesh, _ in meshes:
        rep = parallel.replicate((params, optimizer.init(params), data, key), mesh)
        step = jax.jit(make_epoch(mesh), out_shardings=parallel.replicated(mesh))
        got = step(*rep)
        hlo = step.lower(*rep).compile().as_text()
        out[label] = {"param_rel_diff": rel_diff(fetch(got[0]), fetch(ref[0])),
                      "loss_rel_diff": rel_diff(fetch(got[2]), fetch(ref[2])),
                      "collective": "all-reduce" in hlo}
    return out


def padding_case(mesh):
    """60 examples padded to 64 with a mask on 8 devices vs the plain mean over the 60."""
    params = jax.jit(init_mlp, static_argnums=1)(jax.random.key(9), (6, 8, 1))
    x = RNG.normal(size=(60, 6)).astype(np.float32)
    batch = {"x": x, "y": np.cos(x[:, 1])}

    def plain(p, b):
        return losses.mse(mlp_apply(p, b["x"])[:, 0], b["y"])

    def masked(p, b, mask):
        return parallel.masked_mean(losses.squared_error(mlp_apply(p, b["x"])[:, 0], b["y"]), mask)

    ref_l, ref_g = jax.jit(jax.value_and_grad(plain))(params, batch)
    padded, mask = parallel.pad_batch(batch, mesh.size)
    grad_step = parallel.data_parallel(jax.value_and_grad(masked), mesh, batch_argnums=(1, 2))
    got_l, got_g = grad_step(params, padded, mask)
    return {"padded_size": int(mask.shape[0]), "n_real": int(np.sum(mask)),
            "loss_rel_diff": abs(float(got_l) - float(ref_l)) / abs(float(ref_l)),
            "grad_rel_diff": rel_diff(fetch(got_g), fetch(ref_g))}


def fit_case(mesh):
    """jaxcalc.train.fit(..., mesh=mesh) vs fit without a mesh (once fit takes a mesh)."""
    import inspect

    from jaxcalc import train

    if "mesh" not in inspect.signature(train.fit).parameters:
        return {"missing": "jaxcalc.train.fit has no mesh= parameter yet"}
    x = RNG.normal(size=(100, 6)).astype(np.float32)  # 100 = 3 batches of 32 + a last one of 4
    data = {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}
    params = jax.jit(init_mlp, static_argnums=1)(jax.random.key(11), (6, 8, 2))

    def loss_fn(p, b):
        return losses.cross_entropy(mlp_apply(p, b["x"]), b["y"])

    kw = dict(optimizer=optax.adam(1e-2), method="minibatch", batch_size=32, epochs=2,
              key=jax.random.key(12))
    ref, ref_hist = train.fit(loss_fn, params, data, **kw)
    got, hist = train.fit(loss_fn, params, data, mesh=mesh, **kw)
    try:
        train.fit(loss_fn, params, data, **dict(kw, batch_size=30), mesh=mesh)
        bad = None
    except ValueError as e:
        bad = str(e)
    return {"param_rel_diff": rel_diff(fetch(got), fetch(ref)),
            "loss_rel_diff": rel_diff(np.asarray(hist["loss"]), np.asarray(ref_hist["loss"])),
            "params_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(got)),
            "batch_30_error": bad}


def errors(mesh):
    out = {}
    x = np.zeros((60, 3), np.float32)
    try:
        parallel.shard_batch({"x": x, "y": np.zeros((60,), np.float32)}, mesh)
        out["shard_batch_60"] = None
    except ValueError as e:
        out["shard_batch_60"] = str(e)
    try:
        step = parallel.data_parallel(lambda p, s, b: (p, s, jnp.sum(b)), mesh)
        step(np.float32(0), np.float32(0), x)
        out["step_60"] = None
    except ValueError as e:
        out["step_60"] = str(e)
    try:
        parallel.make_mesh(len(jax.devices()) + 1)
        out["mesh_too_many"] = None
    except ValueError as e:
        out["mesh_too_many"] = str(e)
    sharded = parallel.shard_batch({"x": np.zeros((64, 3), np.float32)}, mesh)["x"]
    out["shard_shape_64"] = list(sharded.sharding.shard_shape(sharded.shape))
    return out


def main():
    n = len(jax.devices())
    result = {"devices": n, "processes": jax.process_count(), "distributed": DISTRIBUTED,
              "platform": jax.devices()[0].platform, "cases": {}, "missing": {}}
    mesh_all = parallel.make_mesh(n)
    dp8, fsdp8 = ("dp8", mesh_all, False), ("fsdp8", mesh_all, True)
    # every compile costs ~0.5 s on a busy 2-core CI machine: test each mode once or twice
    if MODE == "single":
        cases = [("mlp", mlp_case, [dp8, fsdp8, ("dp1", parallel.make_mesh(1), False)]),
                 ("cnn", cnn_case, [dp8]),
                 ("recommender", recommender_case, [dp8, fsdp8])]
    else:  # multi-host: the mesh spans both processes' devices
        cases = [("mlp", mlp_case, [dp8])]
    for name, make, meshes in cases:
        try:
            loss_fn, params, batches = make()
        except (ImportError, AttributeError) as e:  # a model module not there yet
            result["missing"][name] = f"{type(e).__name__}: {e}"
            continue
        result["cases"].update([compare(name, loss_fn, params, batches, meshes)])
    if MODE == "single":
        result["scan_epoch"] = scan_epoch_case([dp8])
        result["padding"] = padding_case(mesh_all)
        result["errors"] = errors(mesh_all)
        result["fit"] = fit_case(mesh_all)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
