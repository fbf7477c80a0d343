"""Orbax checkpoints: bitwise round trip (params, Adam state, step, typed PRNG key), complete-only,
damage found and walked past (truncated or altered array file, empty metadata, no commit marker,
an unfinished save), quietly."""
import gc
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _ckpt_damage import DAMAGES, random_bytes_in_array_file, zero_byte_meta_json

from jaxcalc.checkpoint import Checkpointer, CheckpointError, describe_skipped
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


@pytest.fixture(scope="module")
def big():
    """A state with arrays above orbax's 1 KiB inline limit (stored in OCDBT data files), incompressible."""
    rng = np.random.default_rng(0)
    return {"params": {"w": jnp.asarray(rng.standard_normal((64, 64)), jnp.float32), "b": jnp.ones(3, jnp.float32)},
            "train": {"step": jnp.int32(7), "key": jax.random.key(42)}}


def _two_checkpoints(folder, state):
    """Checkpoint 1 = ``state``; checkpoint 2 = ``state`` with params + 1 and step 8."""
    later = {"params": jax.tree.map(lambda p: p + 1, state["params"]), "train": dict(state["train"], step=jnp.int32(8))}
    with Checkpointer(folder, async_save=False) as ck:
        ck.save(1, state, meta={"epoch": 1})
        ck.save(2, later, meta={"epoch": 2})
    return later


@pytest.mark.parametrize("kind", [*DAMAGES, "zero_byte_meta_json"])
def test_damaged_latest_is_named_and_walked_past(tmp_path, big, kind, capfd, monkeypatch):
    state = big
    unraisable = []  # 'Exception ignored in <coroutine ...>' reports (pytest would turn them into warnings)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    damage, reason = DAMAGES.get(kind, (zero_byte_meta_json, "meta/metadata is empty (0 bytes)"))
    _two_checkpoints(tmp_path, state)
    capfd.readouterr()
    damage(tmp_path, 2)
    ck = Checkpointer(tmp_path, read_only=True)
    try:
        found = ck.restore_newest(state)
        if kind != "leftover_tmp_folder":
            with pytest.raises(CheckpointError, match=r"checkpoint 2 in .* is damaged: ") as e:
                ck.restore(2, state)
            assert reason in str(e.value)
    finally:
        ck.close()
    assert found.step == 1 and found.meta == {"epoch": 1}
    _assert_bitwise_equal(found.trees, state)
    (step, why), = found.skipped
    assert step == 2 and reason in why and "\n" not in why and len(why) < 300
    line = describe_skipped(found.skipped, ck.directory)
    assert line.startswith(f"checkpoint 2 in {tmp_path} is damaged (") and "\n" not in line
    gc.collect()  # what the failed reads left is freed now: nothing reported later either
    assert unraisable == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # none of orbax's or TensorStore's kilobytes of output


def test_random_bytes_are_caught_by_the_checksum(tmp_path):
    """Orbax restores an array file with altered bytes without a word (zstd chunks carry no
    checksum); the CRC-32 saved beside each array catches it."""
    w = np.random.default_rng(1).standard_normal(4096).astype(np.float32)  # incompressible: stored raw
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(1, {"params": {"w": w}})
    random_bytes_in_array_file(tmp_path, 1)
    with Checkpointer(tmp_path) as ck, pytest.raises(CheckpointError, match=r"array params\['w'\] does not match"):
        ck.restore(1, {"params": {"w": w}})


def test_checkpoints_of_older_jaxcalc_without_checksums_restore(tmp_path, big):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(1, big, meta={"epoch": 1})
    shutil.rmtree(tmp_path / "1" / "checksums")  # what jaxcalc wrote before it kept CRC-32s
    with Checkpointer(tmp_path) as ck:
        found = ck.restore_newest(big)
    assert found.step == 1 and found.skipped == [] and found.meta == {"epoch": 1}
    _assert_bitwise_equal(found.trees, big)


def test_none_restores_and_none_there(tmp_path, big, capfd, monkeypatch):
    state = big
    reports = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    _two_checkpoints(tmp_path / "a", state)
    DAMAGES["missing_commit_marker"][0](tmp_path / "a", 2)
    DAMAGES["truncated_array_file"][0](tmp_path / "a", 1)
    with Checkpointer(tmp_path / "a") as ck, pytest.raises(CheckpointError) as e:
        ck.restore_newest(state)
    msg = str(e.value)
    assert msg.startswith(f"no checkpoint in {tmp_path / 'a'} restores (2: the commit marker") and "; 1: orbax" in msg
    assert "\n" not in msg
    # after a failed read, orbax's leftover coroutines (freed later by its threads) are not reported,
    # anything else still is
    import types

    from orbax.checkpoint._src.serialization import serialization

    orbax_coroutine = types.SimpleNamespace(cr_code=serialization._read_array_index_and_device_put.__code__)
    sys.unraisablehook(types.SimpleNamespace(object=orbax_coroutine))
    sys.unraisablehook(types.SimpleNamespace(object="something else"))
    assert [r.object for r in reports] == ["something else"]
    (tmp_path / "b").mkdir()
    with Checkpointer(tmp_path / "b", read_only=True) as ck, pytest.raises(FileNotFoundError, match="no complete"):
        ck.restore_newest(state)
    assert capfd.readouterr().err == ""


def test_set_aside_read_only_and_reserved_names(tmp_path, state):
    _two_checkpoints(tmp_path, state)
    DAMAGES["leftover_tmp_folder"][0](tmp_path, 2)
    names = sorted(p.name for p in tmp_path.iterdir())
    with Checkpointer(tmp_path, read_only=True) as ck:  # predict: reads, changes nothing
        assert ck.unfinished == {2: "2.orbax-checkpoint-tmp-1700000000000000"} and ck.steps() == [1]
        with pytest.raises(ValueError, match="read-only"):
            ck.set_aside(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    with Checkpointer(tmp_path, async_save=False) as ck:
        assert ck.set_aside(1) == tmp_path / "1.damaged" and ck.steps() == []
        assert ck.set_aside(7) is None
        ck.save(1, state)
        assert ck.set_aside(1) == tmp_path / "1.damaged-2"
        with pytest.raises(ValueError, match=r"\['meta'\] are reserved"):
            ck.save(3, {"meta": state["params"]})
