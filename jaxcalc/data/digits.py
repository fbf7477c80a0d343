"""scikit-learn's bundled handwritten digits (1,797 images, 8x8 grayscale, values 0..16) as images,
plus a stratified train/test split. Ships with a dependency, so nothing is downloaded.
"""
from __future__ import annotations

import numpy as np

from jaxcalc.data.dataset import ImageDataset

DIGITS_MAX_VALUE = 16  # sklearn's digits are 4-bit counts: 0..16 ink pixels per 4x4 block


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: ``(images (1797, 8, 8, 1) uint8 in [0, 16], labels (1797,) int32)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[..., None]
    return images, d.target.astype(np.int32)


def stratified_split(labels, *, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, test_idx)`` with each class split in the same proportion.

    Per class with ``m`` examples, ``round(m * test_fraction)`` random ones go to the test set
    (at least one when ``m >= 2``, at most ``m - 1``). Both index arrays are sorted.

    Args:
      labels: ``(n,)`` integer class labels.
      test_fraction: in ``(0, 1)``.
      seed: seed of the numpy generator that picks the test examples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        k = round(idx.size * test_fraction)
        if idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(labels.size, bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def load_digits_dataset(*, test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """The digits as an :class:`ImageDataset` (stratified split; ``max_value=16``)."""
    x, y = load_digits_images()
    tr, te = stratified_split(y, test_fraction=test_fraction, seed=seed)
    return ImageDataset(
        name="digits", x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te],
        class_names=tuple(str(i) for i in range(10)), max_value=DIGITS_MAX_VALUE,
    )
