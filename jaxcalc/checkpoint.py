"""Orbax checkpoints of a training run: pytrees (params, optimizer state, step, PRNG key) + JSON.

A checkpoint is one numbered folder ``directory/<epoch>/`` written by orbax's
``CheckpointManager``. Orbax writes it under a temporary name
(``<epoch>.orbax-checkpoint-tmp-<timestamp>``) and renames it into place only when every file
is written; on a local file system the rename is atomic. A process killed mid-save therefore
leaves only a temporary folder, which :meth:`Checkpointer.latest` never lists (and which the
next manager deletes), so resuming always starts from the latest *complete* checkpoint.

PRNG keys (``jax.random.key``) are stored as their raw ``uint32`` key data and wrapped back on
restore, so typed keys round-trip bit for bit.

>>> ckpt = Checkpointer(out_dir / "checkpoints")                        # doctest: +SKIP
>>> ckpt.save(1, {"params": params, "train": {"key": key}}, meta={"config": {...}})
>>> ckpt.latest()                                                       # 1
>>> trees, meta = ckpt.restore(1, {"params": abstract_params, "train": {"key": key}})
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

_META = "meta"


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode(tree):
    """Replace typed PRNG keys by their uint32 key data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree):
    """Abstract restore target: shapes/dtypes of ``tree`` (concrete or ``ShapeDtypeStruct``), keys as data.

    Targets are placed on this process's first device, so a checkpoint saved from arrays
    replicated or sharded over N devices restores under any device count (orbax otherwise
    refuses a topology it did not save).
    """
    single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        if _is_key(x):
            shape = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=single)
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=single)

    return jax.tree.map(leaf, tree)


def _key_impl(t):
    return jax.random.key_impl(t) if isinstance(t, jax.Array) else t.dtype._impl  # ShapeDtypeStruct


def _decode(restored, target):
    """Wrap uint32 key data back into typed keys wherever ``target`` holds a key."""
    return jax.tree.map(
        lambda r, t: jax.random.wrap_key_data(r, impl=_key_impl(t)) if _is_key(t) else r,
        restored, target,
    )


class Checkpointer:
    """Numbered checkpoints of named pytrees plus a JSON ``meta`` dict, in one directory.

    Args:
      directory: where the numbered checkpoint folders go (created if missing).
      max_to_keep: how many recent checkpoints to keep (``None``: all).
      async_save: write in a background thread (the next save, :meth:`wait` and :meth:`close`
        wait for it); the arrays are copied to host memory before :meth:`save` returns.
    """

    def __init__(self, directory: Path | str, *, max_to_keep: int | None = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,  # delete folders of saves that never finished
                create=True,
            ),
        )

    def save(self, step: int, trees: Mapping[str, Any], *, meta: Mapping[str, Any] | None = None) -> None:
        """Save ``trees`` (name -> pytree of arrays) and ``meta`` (JSON-able dict) as checkpoint ``step``."""
        from jaxcalc.runio import to_jsonable

        ocp = self._ocp
        items = {name: ocp.args.StandardSave(_encode(tree)) for name, tree in trees.items()}
        items[_META] = ocp.args.JsonSave(to_jsonable(dict(meta or {})))
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def latest(self) -> int | None:
        """The step of the latest complete checkpoint, or ``None``."""
        self._manager.reload()
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def restore(self, step: int | None, targets: Mapping[str, Any]) -> tuple[dict, dict]:
        """Restore the named pytrees of checkpoint ``step`` (latest when ``None``).

        Args:
          step: checkpoint number or ``None`` for the latest complete one.
          targets: name -> pytree with the structure, shapes and dtypes to restore into
            (concrete arrays or ``jax.ShapeDtypeStruct``; typed PRNG keys allowed). Names not
            listed are not read.

        Returns:
          ``(trees, meta)``: name -> restored pytree, and the JSON ``meta`` dict.

        Raises:
          FileNotFoundError: no complete checkpoint in the directory.
        """
        ocp = self._ocp
        if step is None:
            step = self.latest()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        items = {name: ocp.args.StandardRestore(_abstract(t)) for name, t in targets.items()}
        items[_META] = ocp.args.JsonRestore()
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        trees = {name: _decode(restored[name], targets[name]) for name in targets}
        return trees, dict(restored[_META] or {})

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON ``meta`` of checkpoint ``step`` (latest when ``None``)."""
        return self.restore(step, {})[1]

    def wait(self) -> None:
        """Block until a background save has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
