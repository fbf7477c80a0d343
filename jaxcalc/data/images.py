"""Image classification data: one container, a folder-of-images loader, and layout detection.

:class:`ImageDataset` holds train and test images as ``uint8`` NHWC arrays plus integer labels;
models see ``x / max_value`` (values in ``[0, 1]``). :func:`load_image_dataset` takes the
``--data-dir`` a user gives (or ``$JAXCALC_DATA``) and detects which layout it holds:

- CIFAR-10, Python version: ``data_batch_1 .. data_batch_5`` and ``test_batch`` pickles
  (read with a restricted unpickler, see :mod:`jaxcalc.data.cifar`);
- CIFAR-10, binary version: ``data_batch_*.bin`` and ``test_batch.bin``;
- a folder of images: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (PNG, JPEG, BMP),
  class ids given by the sorted class folder names.

With no directory at all it returns scikit-learn's bundled digits (8x8x1, 10 classes), so
nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ENV_VAR = "JAXCALC_DATA"


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Train and test images for classification.

    Attributes:
      name: short description (``"digits"``, ``"cifar10-python"``, ``"folder:/path"``).
      x_train: ``(n_train, h, w, c)`` uint8 images.
      y_train: ``(n_train,)`` int32 labels in ``[0, len(class_names))``.
      x_test: ``(n_test, h, w, c)`` uint8 images.
      y_test: ``(n_test,)`` int32 labels.
      class_names: one name per class id.
      max_value: the pixel value meaning "full intensity" (255, or 16 for digits); models see
        ``x / max_value``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple
    max_value: int = 255

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4 or x.dtype != np.uint8:
                raise ValueError(f"{self.name}: x_{split} must be uint8 (n, h, w, c), got {x.dtype} {x.shape}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: y_{split} shape {y.shape} does not match x_{split} {x.shape}")
            if x.shape[0] == 0:
                raise ValueError(f"{self.name}: the {split} split holds no images")
            if y.min() < 0 or y.max() >= len(self.class_names):
                raise ValueError(
                    f"{self.name}: y_{split} holds labels outside [0, {len(self.class_names)})"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"{self.name}: train images are {self.x_train.shape[1:]} but test images are {self.x_test.shape[1:]}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``."""
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image(path: Path | str, *, mode: str | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read one image file as a uint8 ``(h, w, c)`` array with Pillow.

    Args:
      path: image file (anything Pillow opens: PNG, JPEG, BMP, ...).
      mode: ``"L"`` (grayscale, c = 1) or ``"RGB"`` (c = 3); ``None`` keeps gray as gray and
        converts everything else to RGB.
      size: ``(height, width)`` to resize to (bilinear), or ``None`` to keep the file's size.

    Raises:
      ValueError: the file is not a readable image (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if mode is None:
                mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            im = im.convert(mode)
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _image_mode(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode
    except Exception as e:  # corrupt file: reported with its name by read_image later
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def load_image_folder(root: Path | str) -> ImageDataset:
    """Load ``root/train/<class>/*`` and ``root/test/<class>/*`` images.

    Class ids are the sorted train class folder names. Images are grayscale (c = 1) if every
    file is grayscale, else RGB (c = 3). All images must have the same height and width.

    Raises:
      FileNotFoundError: ``root/train`` or ``root/test`` is missing.
      ValueError: a class folder is empty, a test class has no train folder, a file is not a
        readable image, or images differ in size (the message names the file and both sizes).
    """
    root = Path(root)
    splits = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise FileNotFoundError(f"image folder layout needs {d}/<class>/<images>, but {d} is missing")
        splits[split] = d
    class_names = _class_dirs(splits["train"])
    if not class_names:
        raise ValueError(f"{splits['train']} has no class folders (expected {splits['train']}/<class>/<images>)")
    extra = sorted(set(_class_dirs(splits["test"])) - set(class_names))
    if extra:
        raise ValueError(f"{splits['test']}: class folder(s) {extra} have no counterpart in {splits['train']}")

    files: dict[str, list[tuple[Path, int]]] = {}
    for split, d in splits.items():
        entries = []
        for label, cls in enumerate(class_names):
            folder = d / cls
            if not folder.is_dir():
                continue
            found = _image_files(folder)
            if not found:
                raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            entries += [(p, label) for p in found]
        if not entries:
            raise ValueError(f"{d}: no images found in any class folder")
        files[split] = entries

    all_files = [p for entries in files.values() for p, _ in entries]
    gray = all(_image_mode(p) in ("1", "L", "LA", "I", "I;16", "F") for p in all_files)
    mode = "L" if gray else "RGB"
    first = None
    arrays = {}
    for split, entries in files.items():
        xs = []
        for path, _ in entries:
            img = read_image(path, mode=mode)
            if first is None:
                first = (path, img.shape[:2])
            elif img.shape[:2] != first[1]:
                raise ValueError(
                    f"{path}: image is {img.shape[1]}x{img.shape[0]} (width x height) but {first[0]} is "
                    f"{first[1][1]}x{first[1][0]}; all images must have the same size (resize them first)"
                )
            xs.append(img)
        arrays[split] = (np.stack(xs), np.array([lab for _, lab in entries], np.int32))
    return ImageDataset(
        name=f"folder:{root}",
        x_train=arrays["train"][0], y_train=arrays["train"][1],
        x_test=arrays["test"][0], y_test=arrays["test"][1],
        class_names=tuple(class_names), max_value=255,
    )


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
        from jaxcalc.data.digits import load_digits_dataset

        return load_digits_dataset()
    layout, folder = detect_layout(data_dir)
    if layout == "folder":
        return load_image_folder(folder)
    from jaxcalc.data import cifar

    if layout == "cifar-python":
        return cifar.load_cifar10_python(folder)
    return cifar.load_cifar10_binary(folder)
