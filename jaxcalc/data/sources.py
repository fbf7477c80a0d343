"""Where image data comes from: detect the layout of a data directory and call its loader.

:func:`load_image_dataset` takes the ``--data-dir`` a user gives (or ``$JAXCALC_DATA``) and
detects which layout it holds:

- CIFAR-10, Python version: ``data_batch_1 .. data_batch_5`` and ``test_batch`` pickles
  (read with a restricted unpickler, see :mod:`jaxcalc.data.cifar`);
- CIFAR-10, binary version: ``data_batch_*.bin`` and ``test_batch.bin``;
- a folder of images: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (PNG, JPEG, BMP),
  class ids given by the sorted class folder names (:mod:`jaxcalc.data.images`).

With no directory at all it returns scikit-learn's bundled digits (8x8x1, 10 classes,
:mod:`jaxcalc.data.digits`), so nothing is downloaded. Every loader returns a
:class:`~jaxcalc.data.dataset.ImageDataset`; this module imports the loaders, none of them imports
this module.
"""
from __future__ import annotations

import os
from pathlib import Path

from jaxcalc.data import cifar, digits, images
from jaxcalc.data.dataset import ImageDataset

ENV_VAR = "JAXCALC_DATA"


def detect_layout(root: Path | str) -> tuple[str, Path]:
    """``(layout, folder)`` for a data directory: layout is ``"cifar-python"``, ``"cifar-binary"``
    or ``"folder"``; folder is where the files are (``root`` or its ``cifar-10-batches-*`` child).

    Raises:
      FileNotFoundError: ``root`` does not exist.
      ValueError: none of the three layouts is there (the message lists what was looked for).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data directory not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"--data-dir must be a directory, got a file: {root}")
    candidates = [root] + [root / n for n in ("cifar-10-batches-py", "cifar-10-batches-bin")]
    for d in candidates:
        if not d.is_dir():
            continue
        if any(d.glob("data_batch_*.bin")) or (d / "test_batch.bin").exists():
            return "cifar-binary", d
        if any(p.name.startswith("data_batch_") and p.suffix == "" for p in d.iterdir()) or (d / "test_batch").exists():
            return "cifar-python", d
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "folder", root
    raise ValueError(
        f"{root}: no known data layout; expected CIFAR-10 python batches (data_batch_1..5, test_batch), "
        f"binary batches (data_batch_1..5.bin, test_batch.bin), or image folders train/<class>/ and test/<class>/"
    )


def load_image_dataset(data_dir: Path | str | None = None) -> ImageDataset:
    """The dataset in ``data_dir`` (or ``$JAXCALC_DATA``); scikit-learn's digits when neither is set."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or None
    if data_dir is None:
        return digits.load_digits_dataset()
    layout, folder = detect_layout(data_dir)
    if layout == "folder":
        return images.load_image_folder(folder)
    if layout == "cifar-python":
        return cifar.load_cifar10_python(folder)
    return cifar.load_cifar10_binary(folder)
