"""Image files: :func:`read_image` (one file with Pillow) and :func:`load_image_folder`
(``DIR/train/<class>/*`` and ``DIR/test/<class>/*``, PNG, JPEG, BMP; class ids given by the sorted
class folder names) into an :class:`~jaxcalc.data.dataset.ImageDataset`.

Which loader a ``--data-dir`` needs (image folders or CIFAR-10 batches) is decided by
:func:`jaxcalc.data.sources.load_image_dataset`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxcalc.data.dataset import ImageDataset

__all__ = ["IMAGE_SUFFIXES", "ImageDataset", "load_image_folder", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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
