"""Image augmentation on device: random crop with zero padding and random horizontal flip.

The standard CIFAR-10 recipe (He et al., "Deep Residual Learning for Image Recognition", 2016,
§4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded
image or its horizontal flip"; torchvision's ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip()``). For each image, independently:

1. pad ``pad`` zero pixels on every side: ``(h, w, c) -> (h + 2 pad, w + 2 pad, c)``;
2. cut an ``(h, w)`` window at offsets ``(dy, dx)``, each uniform in ``{0, ..., 2 pad}``;
3. mirror left-right with probability 1/2.

The work is split in two pure functions: :func:`sample_crop_flip` draws the offsets and flips
from a key (one key per image, ``jax.random.split``), and :func:`crop_flip` applies given
offsets and flips (deterministic, ``vmap`` of ``lax.dynamic_slice`` over the batch).
:func:`random_crop_flip` is the two together and is what a jitted training step calls: same
key, same images, bit for bit. Padding with zeros happens on the stored pixels (``uint8``
before scaling, like torchvision on PIL images), so padded borders are black.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["crop_flip", "random_crop_flip", "sample_crop_flip"]


def _check_pad(pad) -> None:
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise ValueError(f"pad must be a non-negative int, got {pad!r}")


def _check_images(images, pad) -> None:
    if jnp.ndim(images) != 4:
        raise ValueError(f"images must be a batch (n, h, w, c), got shape {tuple(jnp.shape(images))}")
    _check_pad(pad)


def sample_crop_flip(key, n: int, *, pad: int = 4):
    """Random crop offsets and flips for ``n`` images.

    Args:
      key: a ``jax.random.key``; image ``i`` uses ``jax.random.split(key, n)[i]``.
      n: number of images.
      pad: padding on each side, in pixels (offsets range over ``0 .. 2 pad``).

    Returns:
      ``(offsets, flips)``: ``(n, 2)`` int32 ``(dy, dx)`` with ``0 <= dy, dx <= 2 pad``, and
      ``(n,)`` bool, True where the image is mirrored left-right.
    """
    _check_pad(pad)

    def one(k):
        k_crop, k_flip = jax.random.split(k)
        return (jax.random.randint(k_crop, (2,), 0, 2 * pad + 1, dtype=jnp.int32),
                jax.random.bernoulli(k_flip, 0.5))

    return jax.vmap(one)(jax.random.split(key, n))


def crop_flip(images, offsets, flips, *, pad: int = 4):
    """Zero-pad each image by ``pad``, cut the ``(h, w)`` window at ``offsets``, mirror where ``flips``.

    Output pixel ``(i, y, x)`` is ``P_i[dy_i + y, dx_i + x']`` with ``x' = w - 1 - x`` where
    ``flips[i]`` else ``x``, and ``P_i`` image ``i`` padded with ``pad`` zeros on each side.

    Args:
      images: ``(n, h, w, c)`` images, any dtype.
      offsets: ``(n, 2)`` integer ``(dy, dx)``, each in ``[0, 2 pad]``.
      flips: ``(n,)`` bool.
      pad: padding on each side, in pixels.

    Returns:
      ``(n, h, w, c)``, same dtype as ``images``.
    """
    _check_images(images, pad)
    n, h, w, c = jnp.shape(images)
    if tuple(jnp.shape(offsets)) != (n, 2) or tuple(jnp.shape(flips)) != (n,):
        raise ValueError(f"offsets must be (n, 2) and flips (n,) for {n} images, got offsets "
                         f"{tuple(jnp.shape(offsets))} and flips {tuple(jnp.shape(flips))}")
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, off, flip):
        crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
        return jnp.where(flip, crop[:, ::-1, :], crop)

    return jax.vmap(one)(padded, jnp.asarray(offsets, jnp.int32), jnp.asarray(flips, bool))


def random_crop_flip(key, images, *, pad: int = 4):
    """Random crop (``pad`` zero pixels each side) and random horizontal flip, per image.

    ``crop_flip(images, *sample_crop_flip(key, n, pad=pad), pad=pad)``: pure, jit- and
    vmap-friendly, the same output for the same key.

    Args:
      key: a ``jax.random.key``.
      images: ``(n, h, w, c)`` images, any dtype (``uint8`` pixels in jaxcalc's CNN step).
      pad: padding on each side, in pixels (4 for CIFAR-10's 32x32 images).

    Returns:
      ``(n, h, w, c)``, same dtype as ``images``.
    """
    _check_images(images, pad)
    offsets, flips = sample_crop_flip(key, jnp.shape(images)[0], pad=pad)
    return crop_flip(images, offsets, flips, pad=pad)
