"""Ways a checkpoint folder gets damaged after (or while) orbax wrote it, for the checkpoint tests.

Each function takes ``(checkpoints_dir, step)`` and damages checkpoint ``step`` in place; the
file layout is orbax 0.12.8's (``<step>/commit_success.txt``, ``<step>/<item>/_METADATA``, array
chunks under ``<step>/<item>/ocdbt.process_0/d/``).
"""
from pathlib import Path

import numpy as np


def _array_file(item: Path) -> Path:
    """The biggest OCDBT data file of a saved tree (``item/ocdbt.process_0/d/*``): array chunks."""
    return max((p for p in (item / "ocdbt.process_0" / "d").iterdir() if p.is_file()), key=lambda p: p.stat().st_size)


def truncated_array_file(ckpt: Path, step: int) -> None:
    """A copy or write cut short: the array data file loses its second half."""
    f = _array_file(ckpt / str(step) / "params")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def random_bytes_in_array_file(ckpt: Path, step: int) -> None:
    """Bit rot: 256 bytes in the middle of the array data file replaced by random ones."""
    f = _array_file(ckpt / str(step) / "params")
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid - 128: mid + 128] = np.random.default_rng(0).bytes(256)
    f.write_bytes(bytes(data))


def zero_byte_metadata(ckpt: Path, step: int) -> None:
    """A crash before the file system flushed: the params tree's metadata file is empty."""
    (ckpt / str(step) / "params" / "_METADATA").write_bytes(b"")


def zero_byte_meta_json(ckpt: Path, step: int) -> None:
    """The run's own JSON meta (config, history) is empty."""
    (ckpt / str(step) / "meta" / "metadata").write_bytes(b"")


def missing_commit_marker(ckpt: Path, step: int) -> None:
    """The folder is there but orbax's commit marker, written last, is not."""
    (ckpt / str(step) / "commit_success.txt").unlink()


def leftover_tmp_folder(ckpt: Path, step: int) -> None:
    """A process killed while saving: only orbax's temporary folder, without marker, half written."""
    tmp = ckpt / f"{step}.orbax-checkpoint-tmp-1700000000000000"
    (ckpt / str(step)).rename(tmp)
    (tmp / "commit_success.txt").unlink()
    f = _array_file(tmp / "params")
    f.write_bytes(f.read_bytes()[:10])


# damage -> a piece of the one-line reason the fallback gives
DAMAGES = {
    "truncated_array_file": (truncated_array_file, "orbax cannot read params/"),
    "random_bytes_in_array_file": (random_bytes_in_array_file, ""),  # orbax error or CRC-32 mismatch
    "zero_byte_metadata": (zero_byte_metadata, "params/_METADATA is empty (0 bytes)"),
    "missing_commit_marker": (missing_commit_marker, "commit marker commit_success.txt is missing"),
    "leftover_tmp_folder": (leftover_tmp_folder, "its save never finished"),
}
