"""Synthetic data sets with known ground truth (key-driven: same key, same data)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["blobs", "linear_regression"]


def linear_regression(key, n: int, d: int, *, noise: float = 0.1, w=None, b=None,
                      dtype=jnp.float32):
    """Data from ``y = x·w + b + ε``, ``x ~ N(0, I_d)``, ``ε ~ N(0, noise²)``.

    Args:
      key: ``jax.random.key``.
      n, d: examples and features (both >= 1).
      noise: standard deviation of ε (>= 0).
      w: ``(d,)`` true weights; drawn ``N(0, 1)`` when ``None``.
      b: scalar true bias; drawn ``N(0, 1)`` when ``None``.

    Returns:
      ``(data, truth)``: ``data = {"x": (n, d), "y": (n,)}``, ``truth = {"w": (d,), "b": ()}``.
    """
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 and d >= 1, got n={n}, d={d}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    return _linear_regression(key, n, d, noise, w, b, dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 6))
def _linear_regression(key, n, d, noise, w, b, dtype):
    kx, kw, kb, ke = jax.random.split(key, 4)
    w = jax.random.normal(kw, (d,), dtype) if w is None else jnp.asarray(w, dtype)
    b = jax.random.normal(kb, (), dtype) if b is None else jnp.asarray(b, dtype)
    if w.shape != (d,) or b.shape != ():
        raise ValueError(f"w must have shape ({d},) and b shape (), got {w.shape} and {b.shape}")
    x = jax.random.normal(kx, (n, d), dtype)
    y = x @ w + b + noise * jax.random.normal(ke, (n,), dtype)
    return {"x": x, "y": y}, {"w": w, "b": b}


def blobs(key, n: int, num_classes: int = 2, d: int = 2, *, spread: float = 1.0,
          separation: float = 4.0, centers: jax.Array | None = None, dtype=jnp.float32):
    """Gaussian blobs for classification: class ``c`` is ``N(center_c, spread² I)``.

    Args:
      key: ``jax.random.key``.
      n: examples (labels are drawn uniformly).
      num_classes: classes (>= 2).
      d: features.
      spread: standard deviation within a blob.
      separation: scale of the random centers (``separation · N(0, I)``) when ``centers``
        is ``None``.
      centers: optional ``(num_classes, d)`` centers.

    Returns:
      ``(data, centers)`` with ``data = {"x": (n, d) float, "y": (n,) int32}``.
    """
    if num_classes < 2 or n < 1 or d < 1:
        raise ValueError(f"need n >= 1, d >= 1, num_classes >= 2; got {n}, {d}, {num_classes}")
    return _blobs(key, n, num_classes, d, spread, separation, centers, dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 7))
def _blobs(key, n, num_classes, d, spread, separation, centers, dtype):
    kc, ky, kx = jax.random.split(key, 3)
    centers = (separation * jax.random.normal(kc, (num_classes, d), dtype) if centers is None
               else jnp.asarray(centers, dtype))
    if centers.shape != (num_classes, d):
        raise ValueError(f"centers must have shape ({num_classes}, {d}), got {centers.shape}")
    y = jax.random.randint(ky, (n,), 0, num_classes, dtype=jnp.int32)
    x = centers[y] + spread * jax.random.normal(kx, (n, d), dtype)
    return {"x": x, "y": y}, centers
