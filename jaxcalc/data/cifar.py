"""CIFAR-10 readers for both published layouts, from a folder the user already has.

Python version (``cifar-10-batches-py``): ``data_batch_1 .. data_batch_5`` and ``test_batch``
are pickles of ``{b"data": uint8 (10000, 3072), b"labels": [int] * 10000, ...}``; each row is
1024 red, 1024 green, then 1024 blue values of a 32x32 image in row-major order.
``batches.meta`` holds ``b"label_names"``.

Pickles can run arbitrary code when loaded, so they are read with :class:`RestrictedUnpickler`,
which resolves only the globals the real files need (numpy's array reconstruction and
``dtype``, ``_codecs.encode`` for protocol-2 bytes, and plain builtin containers) and refuses
everything else with an error naming the global.

Binary version (``cifar-10-batches-bin``): ``data_batch_1.bin .. data_batch_5.bin`` and
``test_batch.bin`` are 10000 records of 1 label byte followed by the same 3072 pixel bytes;
``batches.meta.txt`` lists the class names, one per line.

Nothing here downloads anything.
"""
from __future__ import annotations

import builtins
import codecs
import io
import pickle
import re
from pathlib import Path

import numpy as np

from jaxcalc.data.dataset import ImageDataset

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_BYTES = 32 * 32 * 3
RECORD_BYTES = 1 + IMAGE_BYTES

_numpy_reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
_numpy_frombuffer = np._core.numeric._frombuffer if hasattr(np, "_core") else np.core.numeric._frombuffer

# Every global a genuine CIFAR-10 pickle (Python 2 cPickle, protocol 2) or a re-pickled copy
# (Python 3, protocols 2-5) refers to. Resolved to objects here: nothing is imported by name.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _mod in ("builtins", "__builtin__"):
    for _name in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "bool"):
        _ALLOWED_GLOBALS[(_mod, _name)] = getattr(builtins, _name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, bytes, str, numbers and numpy arrays.

    ``find_class`` is the only way a pickle can reach code; here it returns objects from a
    fixed allow-list and raises :class:`pickle.UnpicklingError` for anything else, naming the
    refused global (e.g. ``posix.system``).
    """

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: CIFAR-10 batches only hold dicts, lists, "
                f"bytes, numbers and numpy arrays"
            ) from None


def restricted_load(path: Path | str):
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"``, as the Python 2
    files need).

    Raises:
      FileNotFoundError: the file is missing.
      ValueError: the pickle is truncated, corrupt, or refers to a global outside the allow-list
        (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}")
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if "refused to load global" in str(e):
            raise ValueError(f"{path}: {e}; this is not a genuine CIFAR-10 batch and was not loaded") from None
        raise ValueError(f"{path}: corrupt or truncated pickle ({e})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as e:
        raise ValueError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from None


def _to_nhwc(rows: np.ndarray) -> np.ndarray:
    """``(n, 3072)`` channel-planar rows -> ``(n, 32, 32, 3)`` uint8."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_python_batch(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """One Python-version batch -> ``(images (n, 32, 32, 3) uint8, labels (n,) int32)``."""
    path = Path(path)
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {type(obj).__name__}")
    obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise ValueError(f"{path}: batch dict lacks 'data' or 'labels' (keys: {sorted(map(str, obj))})")
    data, labels = obj["data"], obj["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (n, {IMAGE_BYTES}), got {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: 'labels' must be a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but 'labels' has shape {labels.shape}")
    _check_labels(path, labels)
    return _to_nhwc(data), labels.astype(np.int32)


def read_binary_batch(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """One binary-version batch -> ``(images (n, 32, 32, 3) uint8, labels (n,) int32)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"{path}: truncated or corrupt: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte "
            f"records (1 label byte + {IMAGE_BYTES} pixel bytes)"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_labels(path, labels)
    return _to_nhwc(records[:, 1:]), labels.astype(np.int32)


def _check_labels(path: Path, labels: np.ndarray) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:
        raise ValueError(
            f"{path}: corrupt: label {int(labels[bad[0]])} at record {int(bad[0])} is outside [0, 10) "
            f"({bad.size} bad label(s))"
        )


def _train_files(folder: Path, suffix: str) -> list[Path]:
    pattern = re.compile(r"data_batch_(\d+)" + re.escape(suffix) + "$")
    numbers = sorted(int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if not numbers:
        raise FileNotFoundError(f"{folder}: no training batches data_batch_1{suffix} .. data_batch_5{suffix}")
    expected = list(range(1, max(max(numbers), 5) + 1))
    missing = [n for n in expected if n not in numbers]
    if missing and numbers != list(range(1, len(numbers) + 1)):
        raise FileNotFoundError(f"{folder}: missing {folder / f'data_batch_{missing[0]}{suffix}'}")
    return [folder / f"data_batch_{n}{suffix}" for n in numbers]


def _load(folder: Path | str, suffix: str, reader, name: str) -> ImageDataset:
    folder = Path(folder)
    train = [reader(p) for p in _train_files(folder, suffix)]
    test_path = folder / f"test_batch{suffix}"
    if not test_path.is_file():
        raise FileNotFoundError(f"CIFAR-10 test batch not found: {test_path}")
    x_test, y_test = reader(test_path)
    return ImageDataset(
        name=name,
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test, y_test=y_test,
        class_names=CIFAR10_CLASSES, max_value=255,
    )


def load_cifar10_python(folder: Path | str) -> ImageDataset:
    """CIFAR-10, Python version: ``folder/data_batch_1..5`` + ``folder/test_batch``.

    A folder with fewer training batches (``data_batch_1 .. data_batch_k``, no gaps) loads too.
    """
    return _load(folder, "", read_python_batch, "cifar10")


def load_cifar10_binary(folder: Path | str) -> ImageDataset:
    """CIFAR-10, binary version: ``folder/data_batch_1..5.bin`` + ``folder/test_batch.bin``."""
    return _load(folder, ".bin", read_binary_batch, "cifar10")
