"""The container every image loader returns: train and test images with integer labels.

Loaders (:mod:`jaxcalc.data.images` for image folders, :mod:`jaxcalc.data.cifar`,
:mod:`jaxcalc.data.digits`) import it from here, and :mod:`jaxcalc.data.sources` picks the loader
for a data directory, so the imports run one way: ``dataset <- loaders <- sources``.
"""
from __future__ import annotations

import dataclasses

import numpy as np


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
