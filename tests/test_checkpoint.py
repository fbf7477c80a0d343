"""Orbax checkpoints: bitwise round trip (params, Adam state, step, typed PRNG key), complete-only."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcalc.checkpoint import Checkpointer
from jaxcalc.models.cnn import CNNSpec, abstract_params, init_cnn

SPEC = CNNSpec(height=6, width=6, channels=1, num_classes=3, filters=4, hidden=5)


@pytest.fixture(scope="module")
def state():
    _, params = init_cnn(jax.random.key(0), SPEC)
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-trivial moments and count
    return {"params": params, "train": {"opt_state": opt_state, "step": jnp.int32(7), "key": jax.random.key(42)}}


def _assert_bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def test_round_trip_is_bitwise(tmp_path, state):
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(1, state, meta={"epoch": 1, "config": {"lr": 0.001}})
        ck.wait()
        assert ck.latest() == 1
    # A fresh manager (as after a restart), restoring into abstract shapes built without data.
    _, abstract = abstract_params(SPEC)
    target = {"params": abstract, "train": {"opt_state": jax.eval_shape(optax.adam(1e-3).init, abstract),
                                            "step": jax.ShapeDtypeStruct((), jnp.int32),
                                            "key": jax.eval_shape(jax.random.key, 0)}}
    with Checkpointer(tmp_path / "ck") as ck:
        trees, meta = ck.restore(None, target)
    _assert_bitwise_equal(trees, state)
    assert meta == {"epoch": 1, "config": {"lr": 0.001}}
    # The restored key continues the same random stream.
    np.testing.assert_array_equal(jax.random.normal(trees["train"]["key"], (3,)),
                                  jax.random.normal(state["train"]["key"], (3,)))


def test_unfinished_checkpoint_is_never_taken(tmp_path, state):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(1, state, meta={"epoch": 1})
    # What a process killed during save 2 leaves: orbax's temporary folder, partly written.
    partial = tmp_path / "2.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "1", partial)
    shutil.rmtree(partial / "params")
    ck = Checkpointer(tmp_path)
    try:
        assert ck.latest() == 1 and ck.steps() == [1]
        trees, meta = ck.restore(None, state)
        assert meta["epoch"] == 1
        _assert_bitwise_equal(trees, state)
    finally:
        ck.close()
    assert not partial.exists()  # the next manager deletes it (in the background, done by close())


def test_max_to_keep_and_missing(tmp_path, state):
    with Checkpointer(tmp_path / "a", max_to_keep=2, async_save=False) as ck:
        for step in (1, 2, 3):
            ck.save(step, {"params": state["params"]}, meta={"epoch": step})
        assert ck.steps() == [2, 3]
        assert ck.read_meta() == {"epoch": 3}
        assert ck.read_meta(2) == {"epoch": 2}
    with Checkpointer(tmp_path / "b") as ck:
        assert ck.latest() is None
        with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
            ck.restore(None, {"params": state["params"]})


def test_checkpoint_saved_on_8_devices_restores_on_1(tmp_path):
    """Arrays replicated over a mesh are saved in one process and restored under another device count."""
    import subprocess
    import sys
    import textwrap

    save = textwrap.dedent(f"""
        import jax
        jax.config.update("jax_num_cpu_devices", 8)
        import jax.numpy as jnp
        from jaxcalc import parallel
        from jaxcalc.checkpoint import Checkpointer
        tree = parallel.replicate({{"w": jnp.arange(16.0).reshape(4, 4), "k": jax.random.key(3)}},
                                  parallel.make_mesh(8))
        c = Checkpointer({str(tmp_path)!r})
        c.save(1, {{"state": tree}}, meta={{"devices": 8}})
        c.close()
    """)
    subprocess.run([sys.executable, "-c", save], check=True, capture_output=True)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcalc.checkpoint import Checkpointer

    trees, meta = Checkpointer(tmp_path).restore(None, {"state": {"w": jnp.zeros((4, 4)), "k": jax.random.key(0)}})
    np.testing.assert_array_equal(trees["state"]["w"], np.arange(16.0).reshape(4, 4))
    np.testing.assert_array_equal(jax.random.key_data(trees["state"]["k"]), jax.random.key_data(jax.random.key(3)))
    assert meta == {"devices": 8}
