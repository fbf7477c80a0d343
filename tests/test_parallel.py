"""jaxcalc.parallel: data-parallel training on 8 simulated CPU devices and on 2 processes.

The device count must be fixed before JAX starts, so the multi-device checks run in
subprocesses (tests/_parallel_worker.py, with ``jax.config.update("jax_num_cpu_devices", N)``)
started once per module; each prints its measurements as JSON and the tests below judge them.
The reference for "same parameters" is a plain single-device ``jax.jit`` of the same Adam
step: data-parallel training may only differ from it by float32 summation order.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcalc import losses, parallel
from jaxcalc.models.mlp import init_mlp

WORKER = Path(__file__).with_name("_parallel_worker.py")
ROOT = WORKER.parent.parent
# float32: one summation-order rounding (~6e-8 relative) per reduction, a few Adam steps.
RTOL = 2e-5


_CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS",
                 "JAXCALC_DISTRIBUTED", "XLA_FLAGS")


def _env(**extra):
    """The workers' environment: CPU devices only, no cluster (nor proxy) variables of ours."""
    env = {k: v for k, v in os.environ.items()
           if "proxy" not in k.lower() and k not in _CLUSTER_VARS and not k.startswith(("SLURM_", "OMPI_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"  # simulated devices, also on a GPU machine
    env["XLA_FLAGS"] = os.environ.get("JAXCALC_TEST_XLA_FLAGS", "")
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_json(out: str, err: str, what: str) -> dict:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"{what} printed no result\nstdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}")


@pytest.fixture(scope="module")
def runs():
    """Start the 8-device worker and the two 4-device 'hosts' together; collect their JSON."""
    coord = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
    cmds = {"single": ([sys.executable, str(WORKER), "single"], _env())}
    for pid in (0, 1):
        cmds[f"host{pid}"] = ([sys.executable, str(WORKER), "host"], _env(JAX_PROCESS_ID=str(pid), **coord))
    procs = {k: subprocess.Popen(c, env=e, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) for k, (c, e) in cmds.items()}
    results = {}
    try:
        for name, p in procs.items():
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, f"{name} worker failed ({p.returncode}):\n{err[-4000:]}"
            results[name] = _last_json(out, err, name)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


@pytest.fixture(scope="module")
def single(runs):
    assert runs["single"]["devices"] == 8 and runs["single"]["platform"] == "cpu"
    return runs["single"]


# ----------------------------------------------------------------------------- 8 devices


@pytest.mark.parametrize("model", ["mlp", "cnn", "recommender"])
def test_8_devices_match_1_device(single, model):
    assert model in single["cases"], f"{model} not run: {single['missing'].get(model)}"
    res = single["cases"][model]
    dp = res["dp8"]
    assert dp["n_devices"] == 8
    assert dp["params_replicated"], "data-parallel params must come back replicated"
    assert dp["param_rel_diff"] <= RTOL, dp
    assert dp["loss_diff"] <= RTOL * max(abs(v) for v in res["ref_loss"]), dp
    assert res["bytes"] > 0


def test_gradients_are_all_reduced_by_xla(single):
    # The compiled 8-device program contains the all-reduce GSPMD inserted for the gradients.
    assert single["cases"]["mlp"]["dp8"]["all_reduce"] is True


def test_one_device_changes_nothing(single):
    dp1 = single["cases"]["mlp"]["dp1"]
    assert dp1["n_devices"] == 1
    assert dp1["param_rel_diff"] == 0.0 and dp1["loss_diff"] == 0.0


@pytest.mark.parametrize("model", ["mlp", "recommender"])
def test_fsdp_sharded_params_match(single, model):
    assert model in single["cases"], f"{model} not run: {single['missing'].get(model)}"
    fs = single["cases"][model]["fsdp8"]
    assert fs["params_sharded"] >= 1, "FSDP must split at least one parameter across devices"
    assert fs["opt_state_sharded"] >= 2 * fs["params_sharded"], "Adam's mu and nu follow the params"
    assert fs["param_rel_diff"] <= RTOL, fs


def test_scanned_epoch_with_constrained_batches(single):
    # The fit-style epoch (shuffle inside jit, reshape to (steps, B), lax.scan) on 8 devices.
    r = single["scan_epoch"]["dp8"]
    assert r["collective"]
    assert r["param_rel_diff"] <= RTOL and r["loss_rel_diff"] <= RTOL, r


def test_fit_with_mesh_matches_fit_without(single):
    r = single["fit"]
    if "missing" in r:
        pytest.skip(r["missing"])
    assert r["params_replicated"]
    assert r["param_rel_diff"] <= RTOL and r["loss_rel_diff"] <= RTOL, r
    assert r["batch_30_error"] is not None and "8 devices" in r["batch_30_error"]


def test_padding_with_mask_equals_unpadded_batch(single):
    r = single["padding"]
    assert (r["padded_size"], r["n_real"]) == (64, 60)
    assert r["loss_rel_diff"] <= RTOL and r["grad_rel_diff"] <= RTOL, r


def test_indivisible_batch_and_too_many_devices_raise(single):
    e = single["errors"]
    for key in ("shard_batch_60", "step_60"):
        assert e[key] is not None, f"{key}: no ValueError"
        assert "60 examples" in e[key] and "8 devices" in e[key] and "pad_batch" in e[key]
    assert e["mesh_too_many"] is not None and "9 devices" in e["mesh_too_many"]
    assert "only 8" in e["mesh_too_many"]
    assert e["shard_shape_64"] == [8, 3]  # each device holds 64 / 8 examples


# ----------------------------------------------------------------------------- 2 hosts


def test_two_processes_match_one_device(runs):
    for name in ("host0", "host1"):
        r = runs[name]
        assert r["distributed"] is True and r["processes"] == 2 and r["devices"] == 8
        dp = r["cases"]["mlp"]["dp8"]
        assert dp["params_replicated"]
        assert dp["param_rel_diff"] <= RTOL, (name, dp)
    # every host holds the same model
    assert runs["host0"]["cases"] == runs["host1"]["cases"]


# ----------------------------------------------------------------------------- in process (1 device)


def test_make_mesh_errors():
    n = len(jax.devices())
    with pytest.raises(ValueError, match=rf"asked for {n + 1} devices but only {n}"):
        parallel.make_mesh(n + 1)
    with pytest.raises(ValueError, match=">= 1"):
        parallel.make_mesh(0)
    with pytest.raises(TypeError):
        parallel.make_mesh(1.0)
    mesh = parallel.make_mesh(1, axis_name="batch")
    assert mesh.axis_names == ("batch",) and mesh.size == 1


def test_shard_batch_checks_leaves():
    mesh = parallel.make_mesh(1)
    with pytest.raises(ValueError, match=r"disagree.*\['x'\].*\['y'\]"):
        parallel.shard_batch({"x": np.zeros((4, 2)), "y": np.zeros((5,))}, mesh)
    with pytest.raises(ValueError, match="no example axis"):
        parallel.shard_batch({"x": np.zeros(())}, mesh)
    out = parallel.shard_batch({"x": np.ones((4, 2), np.float32)}, mesh)
    np.testing.assert_array_equal(out["x"], np.ones((4, 2)))


def test_pad_batch_and_masked_mean():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    y = np.arange(5, dtype=np.int32)
    (px, py), mask = parallel.pad_batch((x, y), 4)
    assert px.shape == (8, 2) and py.shape == (8,) and mask.shape == (8,)
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(px[5:], np.repeat(x[-1:], 3, axis=0))  # repeats the last example
    (same,), mask2 = parallel.pad_batch((x,), 5)
    assert same is x and mask2.all()
    # masked mean == numpy mean of the real entries; padded entries get zero gradient
    v = jnp.asarray(np.concatenate([[1.0, 2.0, 6.0], [1e6, -3.0]]), jnp.float32)
    m = np.array([True, True, True, False, False])
    assert float(parallel.masked_mean(v, m)) == pytest.approx(3.0)  # (1 + 2 + 6) / 3
    g = jax.grad(lambda v: parallel.masked_mean(v, m))(v)
    np.testing.assert_allclose(g, [1 / 3, 1 / 3, 1 / 3, 0, 0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"values \(5,\) vs mask \(4,\)"):
        parallel.masked_mean(v, m[:4])


def test_masked_loss_of_padded_batch_equals_loss(x64):
    # a regression loss from jaxcalc.losses, averaged with the mask, ignores the padding
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=7), rng.normal(size=7)
    (pp, pt), mask = parallel.pad_batch((pred, target), 8)
    got = parallel.masked_mean(losses.squared_error(jnp.asarray(pp), jnp.asarray(pt)), mask)
    np.testing.assert_allclose(got, np.mean((pred - target) ** 2), rtol=1e-12)  # numpy reference


def test_allreduce_bytes_per_step():
    params = jax.eval_shape(lambda k: init_mlp(k, (6, 16, 3)), jax.random.key(0))  # shapes only
    # (6*16 + 16) + (16*3 + 3) = 163 float32 gradients, 4 bytes each (by hand)
    assert parallel.allreduce_bytes_per_step(params) == 652
    assert parallel.allreduce_bytes_per_step(params, dtype=jnp.bfloat16) == 326
    abstract = [jax.ShapeDtypeStruct((1000, 10), jnp.float16)]
    assert parallel.allreduce_bytes_per_step(abstract, dtype=None) == 20000


def test_data_parallel_rejects_keyword_arguments():
    step = parallel.data_parallel(lambda p, s, b: (p, s, b.sum()), parallel.make_mesh(1))
    with pytest.raises(TypeError, match="positional"):
        step(np.float32(0), np.float32(0), batch=np.zeros(4, np.float32))


_SLURM = {"SLURM_JOB_ID": "12", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"HOME": "/root"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {"coordinator_address": "h0:1234", "num_processes": 2, "process_id": 1}),
    ({"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
      "JAXCALC_DISTRIBUTED": "0"}, None),
    ({**_SLURM, "SLURM_NTASKS": "4"}, {}),        # jax reads Slurm's variables itself
    ({**_SLURM, "SLURM_NTASKS": "1"}, None),      # a one-task Slurm job is a single process
    ({"OMPI_MCA_orte_hnp_uri": "x;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"OMPI_MCA_orte_hnp_uri": "x;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"JAXCALC_DISTRIBUTED": "1"}, {}),           # jax's own detection (Cloud TPU, k8s)
    ({**_SLURM, "SLURM_NTASKS": "4", "JAX_COORDINATOR_ADDRESS": "h0:1"}, {}),
])
def test_distributed_detection(env, expected):
    assert parallel._distributed_args(env) == expected


def test_distributed_detection_errors():
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID are not"):
        parallel._distributed_args({"JAX_COORDINATOR_ADDRESS": "h0:1234"})
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='a'"):
        parallel._distributed_args({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                    "JAX_PROCESS_ID": "a"})


def test_initialize_distributed_is_a_no_op_without_a_cluster():
    assert parallel.initialize_distributed({}) is False
    assert not jax.distributed.is_initialized()
