"""Orbax checkpoints of a training run: pytrees (params, optimizer state, step, PRNG key) + JSON.

A checkpoint is one numbered folder ``directory/<epoch>/`` written by orbax's
``CheckpointManager``. Orbax (0.12.8) writes it under a temporary name
(``<epoch>.orbax-checkpoint-tmp-<timestamp>``), writes the commit marker ``commit_success.txt``
into it when every file is written, and renames it into place; on a local file system the rename
is atomic. A process killed mid-save therefore leaves only a temporary folder, which
:meth:`Checkpointer.latest` never lists (and which the next manager deletes).

Files can still be damaged after the fact (a full disk, a copy cut short, a bad sector). Orbax
itself notices a truncated array file or an empty metadata file only with a long storage-library
error, and random bytes inside an array file not at all (its zstd chunks carry no checksum:
the restore returns wrong numbers). So :meth:`Checkpointer.save` also stores a CRC-32 of every
array, and :meth:`Checkpointer.restore` checks, before and after orbax reads the folder:

- the commit marker ``commit_success.txt`` is there (orbax writes it last, before the rename);
- no file is empty and every JSON metadata file parses;
- orbax restores every requested item, and each array's CRC-32, dtype and shape match the
  ones saved.

A checkpoint that fails any of these raises :class:`CheckpointError` with one line naming the
checkpoint and what is wrong; :meth:`Checkpointer.restore_newest` walks back from the newest
checkpoint to the newest one that restores cleanly and reports the ones it skipped. Orbax's
and TensorStore's own log output during these attempts is held back (it is kilobytes per
damaged file).

PRNG keys (``jax.random.key``) are stored as their raw ``uint32`` key data and wrapped back on
restore, so typed keys round-trip bit for bit.

>>> ckpt = Checkpointer(out_dir / "checkpoints")                        # doctest: +SKIP
>>> ckpt.save(1, {"params": params, "train": {"key": key}}, meta={"config": {...}})
>>> ckpt.latest()                                                       # 1
>>> trees, meta = ckpt.restore(1, {"params": abstract_params, "train": {"key": key}})
>>> found = ckpt.restore_newest(lambda meta: {"params": abstract_params})
>>> found.step, found.skipped                                           # 1, []
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import sys
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_META = "meta"
_CHECKSUMS = "checksums"
_RESERVED = (_META, _CHECKSUMS)
COMMIT_MARKER = "commit_success.txt"  # orbax.checkpoint._src.path.atomicity_types.COMMIT_SUCCESS_FILE
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax.checkpoint._src.path.atomicity_types.TMP_DIR_SUFFIX
# Files orbax writes as JSON: the step's metadata, each item's tree metadata and sharding, the
# per-process array metadata, and a JsonSave item's content.
_JSON_FILES = re.compile(rf"(^|/)(_CHECKPOINT_METADATA|_METADATA|_sharding|process_\d+)$"
                         rf"|^({_META}|{_CHECKSUMS})/metadata$")


class CheckpointError(ValueError):
    """A checkpoint folder does not restore: damaged, unfinished, or none usable in a directory."""


class Restored(NamedTuple):
    """What :meth:`Checkpointer.restore_newest` found.

    Attributes:
      step: the checkpoint restored.
      trees: name -> restored pytree.
      meta: the checkpoint's JSON ``meta`` dict.
      skipped: ``(step, reason)`` for each newer checkpoint that did not restore, newest first.
    """

    step: int
    trees: dict
    meta: dict
    skipped: list


def describe_skipped(skipped, directory) -> str:
    """One line for the checkpoints :meth:`Checkpointer.restore_newest` skipped, e.g.
    ``"checkpoint 3 in runs/x/checkpoints is damaged (params/_METADATA is empty)"``."""
    if len(skipped) == 1:
        step, why = skipped[0]
        return f"checkpoint {step} in {directory} is damaged ({why})"
    listed = "; ".join(f"{step}: {why}" for step, why in skipped)
    return f"checkpoints {', '.join(str(s) for s, _ in skipped)} in {directory} are damaged ({listed})"


@contextlib.contextmanager
def _quiet():
    """Hold back orbax's log records and the 'Exception ignored in <coroutine>' reports of its
    failed reads (Python's unraisable hook): a damaged file makes kilobytes of both. A failed
    read's coroutines are reported when the garbage collector frees them, so code that caught
    an orbax exception calls ``gc.collect()`` before leaving this context."""
    absl = logging.getLogger("absl")
    disabled, hook = absl.disabled, sys.unraisablehook
    absl.disabled = True
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        absl.disabled, sys.unraisablehook = disabled, hook


def _is_orbax_coroutine(obj) -> bool:
    code = getattr(obj, "cr_code", None)
    return code is not None and "orbax" in code.co_filename.replace("\\", "/").split("/")


def _drop_orbax_coroutine_reports() -> None:
    """From now on, drop (only) the 'Exception ignored in <coroutine ...>' reports of orbax's own
    coroutines; every other report goes to the hook that was there.

    A failed orbax read can leave coroutines that a background thread frees later, at any
    moment, each printing its TensorStore error again (kilobytes). Installed once, after the
    first failed read.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_orbax_coroutines", False):
        return

    def hook(unraisable):
        if not _is_orbax_coroutine(unraisable.object):
            previous(unraisable)

    hook._drops_orbax_coroutines = True
    sys.unraisablehook = hook


def _reason(e: BaseException) -> str:
    """A short, one-line account of an orbax/TensorStore failure."""
    text = " ".join(str(e).split())
    text = text.split(" See full TensorStore details")[0]
    text = text.split(" [source locations=")[0]
    if len(text) > 160:
        text = text[:157] + "..."
    if type(e) is Exception and text:  # TensorStore read errors come as bare Exception
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path)


def _checksums(tree) -> dict:
    """``{leaf path: [dtype, shape, crc32]}`` of a pytree of arrays (keys already encoded).

    Leaves not held whole by this process (sharded over several hosts) are left out.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        a = np.asarray(leaf)
        out[_leaf_name(path)] = [a.dtype.str, list(a.shape), zlib.crc32(a.tobytes())]
    return out


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
      directory: where the numbered checkpoint folders go (created if missing, unless
        ``read_only``).
      max_to_keep: how many recent checkpoints to keep (``None``: all).
      async_save: write in a background thread (the next save, :meth:`wait` and :meth:`close`
        wait for it); the arrays are copied to host memory before :meth:`save` returns.
      read_only: only read (``jaxcalc predict``): nothing is created, deleted or moved.

    Attributes:
      unfinished: ``{step: folder name}`` of the orbax temporary folders (saves that never
        finished) found when the checkpointer was made; the manager then deletes them unless
        ``read_only``.
    """

    def __init__(self, directory: Path | str, *, max_to_keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self.unfinished = {}
        if self.directory.is_dir():
            for d in self.directory.iterdir():
                step, sep, _ = d.name.partition(TMP_SUFFIX)
                if sep and step.isdigit():
                    self.unfinished[int(step)] = d.name
        with _quiet():
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    enable_async_checkpointing=async_save and not read_only,
                    cleanup_tmp_directories=not read_only,  # delete folders of saves that never finished
                    create=not read_only,
                    read_only=read_only,
                ),
            )

    def save(self, step: int, trees: Mapping[str, Any], *, meta: Mapping[str, Any] | None = None) -> None:
        """Save ``trees`` (name -> pytree of arrays) and ``meta`` (JSON-able dict) as checkpoint ``step``.

        A CRC-32 of every array goes with them (checked by :meth:`restore`).
        """
        from jaxcalc.runio import to_jsonable

        ocp = self._ocp
        clash = sorted(set(trees) & set(_RESERVED))
        if clash:
            raise ValueError(f"tree name(s) {clash} are reserved by Checkpointer; use other names")
        encoded = {name: _encode(tree) for name, tree in trees.items()}
        items = {name: ocp.args.StandardSave(tree) for name, tree in encoded.items()}
        items[_META] = ocp.args.JsonSave(to_jsonable(dict(meta or {})))
        items[_CHECKSUMS] = ocp.args.JsonSave({name: _checksums(tree) for name, tree in encoded.items()})
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def latest(self) -> int | None:
        """The step of the latest complete checkpoint, or ``None``."""
        return max(self.steps(), default=None)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints (finished saves; damage is found by :meth:`restore`)."""
        with _quiet():
            self._manager.reload()
            return sorted(self._manager.all_steps())

    def _check_files(self, step: int) -> None:
        """Raise :class:`CheckpointError` if checkpoint ``step``'s folder is visibly incomplete."""
        folder = self.directory / str(step)
        if not (folder / COMMIT_MARKER).is_file():
            raise CheckpointError(f"the commit marker {COMMIT_MARKER} is missing: the save never finished")
        for f in sorted(folder.rglob("*")):
            if not f.is_file():
                continue
            rel = f.relative_to(folder).as_posix()
            if f.stat().st_size == 0:
                raise CheckpointError(f"{rel} is empty (0 bytes)")
            if _JSON_FILES.search(rel):
                try:
                    json.loads(f.read_bytes())
                except (ValueError, UnicodeDecodeError):
                    raise CheckpointError(f"{rel} is not valid JSON") from None

    def restore(self, step: int | None, targets: Mapping[str, Any]) -> tuple[dict, dict]:
        """Restore the named pytrees of checkpoint ``step`` (latest when ``None``), checked.

        Args:
          step: checkpoint number or ``None`` for the latest complete one.
          targets: name -> pytree with the structure, shapes and dtypes to restore into
            (concrete arrays or ``jax.ShapeDtypeStruct``; typed PRNG keys allowed). Names not
            listed are not read.

        Returns:
          ``(trees, meta)``: name -> restored pytree, and the JSON ``meta`` dict.

        Raises:
          FileNotFoundError: no complete checkpoint in the directory.
          CheckpointError: the checkpoint is damaged (the message says which file or array).
        """
        if step is None:
            step = self.latest()
            if step is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        try:
            return self._restore(int(step), targets)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} is damaged: {e}") from None

    def _restore(self, step: int, targets: Mapping[str, Any], *, files_checked: bool = False) -> tuple[dict, dict]:
        ocp = self._ocp
        if not files_checked:
            self._check_files(step)
        items = {name: ocp.args.StandardRestore(_abstract(t)) for name, t in targets.items()}
        items[_META] = ocp.args.JsonRestore()
        has_sums = (self.directory / str(step) / _CHECKSUMS).is_dir()  # absent in checkpoints of older jaxcalc
        if has_sums and targets:
            items[_CHECKSUMS] = ocp.args.JsonRestore()
        why = None
        with _quiet():
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # orbax/TensorStore raise many types for damaged files
                why = self._which_item_fails(step, items) or f"orbax cannot read it: {_reason(e)}"
            if why is not None:
                gc.collect()  # free the failed read's frames and coroutines while still quiet
        if why is not None:
            _drop_orbax_coroutine_reports()
            raise CheckpointError(why)
        if has_sums and targets:
            saved = restored[_CHECKSUMS] or {}
            for name in targets:
                got = _checksums(restored[name])
                for leaf, want in (saved.get(name) or {}).items():
                    if leaf in got and got[leaf] != want:  # (leaves sharded over hosts are not summed)
                        raise CheckpointError(f"array {name}{leaf} does not match its saved CRC-32 checksum")
        trees = {name: _decode(restored[name], targets[name]) for name in targets}
        return trees, dict(restored[_META] or {})

    def _which_item_fails(self, step: int, items: dict) -> str | None:
        """After a failed restore: restore the items one by one to name the one that fails (call quietly)."""
        for name, arg in items.items():
            try:
                self._manager.restore(step, args=self._ocp.args.Composite(**{name: arg}))
            except Exception as e:
                return f"orbax cannot read {name}/: {_reason(e)}"
        return None

    def restore_newest(self, targets: Mapping[str, Any] | Callable[[dict], Mapping[str, Any]]) -> Restored:
        """Restore the newest checkpoint that restores cleanly, walking back past damaged ones.

        Args:
          targets: as in :meth:`restore`, or a function ``meta -> targets`` (called with each
            candidate's JSON ``meta`` before its arrays are read, so the targets can depend on
            it, e.g. the model's shape). An exception the function raises (a config that does
            not match, say) propagates: it is not damage.

        Returns:
          A :class:`Restored` ``(step, trees, meta, skipped)``; ``skipped`` lists each newer
          checkpoint that did not restore, and each save that never finished (an orbax
          temporary folder), as ``(step, reason)``, newest first.

        Raises:
          FileNotFoundError: the directory holds no complete checkpoint (perhaps only unfinished
            saves): nothing to restore.
          CheckpointError: none restores (the one-line message names the directory and lists
            each checkpoint with what is wrong).
        """
        steps = self.steps()
        unfinished = {s: f"its save never finished: only orbax's temporary folder {name} is there"
                      for s, name in self.unfinished.items() if s not in steps}
        if not steps:
            left = f" (only unfinished saves: {', '.join(sorted(self.unfinished.values()))})" if unfinished else ""
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}{left}")
        skipped = sorted(((s, why) for s, why in unfinished.items() if s > min(steps)), reverse=True)
        for step in sorted(steps, reverse=True):
            try:
                if callable(targets):
                    _, meta = self._restore(step, {})
                    want = targets(meta)  # exceptions here propagate
                else:
                    want = targets
                trees, meta = self._restore(step, want, files_checked=callable(targets))
            except CheckpointError as e:
                skipped.append((step, str(e)))
                skipped.sort(reverse=True)
                continue
            return Restored(step, trees, meta, [(s, why) for s, why in skipped if s > step])
        listed = "; ".join(f"{s}: {why}" for s, why in skipped)
        raise CheckpointError(f"no checkpoint in {self.directory} restores ({listed})")

    def set_aside(self, step: int) -> Path | None:
        """Rename the folder of checkpoint ``step`` to ``<step>.damaged`` (``.damaged-2``, ... if
        taken), out of the manager's sight, so that the step can be saved again. Returns the new
        path, or ``None`` when there is no such folder."""
        if self.read_only:
            raise ValueError("a read-only Checkpointer does not move checkpoints")
        folder = self.directory / str(step)
        if not folder.is_dir():
            return None
        target, k = self.directory / f"{step}.damaged", 1
        while target.exists():
            k += 1
            target = self.directory / f"{step}.damaged-{k}"
        folder.rename(target)
        with _quiet():
            self._manager.reload()
        return target

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON ``meta`` of checkpoint ``step`` (latest when ``None``)."""
        return self.restore(step, {})[1]

    def wait(self) -> None:
        """Block until a background save has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        with _quiet():
            self._manager.wait_until_finished()
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
