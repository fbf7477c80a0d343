"""Input checks shared by every module.

Static properties (shape, rank, dtype) are checked in Python at trace time, so they
work under ``jax.jit`` too. Value checks on arrays a loss computes with (label range,
probability targets) live in :mod:`jaxcalc.checks`, which also holds under ``jit``; the
finiteness check here runs on concrete data only (``fit`` checks its data once before compiling).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (not an abstract tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def shape_of(x):
    return tuple(np.shape(x))


def check_same_shape(a, b, names=("predictions", "targets")) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have identical shapes (no broadcasting)."""
    sa, sb = shape_of(a), shape_of(b)
    if sa != sb:
        raise ValueError(
            f"shape mismatch: {names[0]} {sa} vs {names[1]} {sb}; jaxcalc never broadcasts "
            f"these (e.g. (3, 1) - (3,) would silently become (3, 3)). Reshape one of them explicitly."
        )


def check_floating(x, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a floating (or complex) dtype."""
    dtype = jnp.result_type(x)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)):
        raise TypeError(f"{name} must be a floating-point array, got dtype {dtype}")


def check_integer(x, name: str) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {dtype}")


def check_nonempty(x, name: str) -> None:
    """Raise ``ValueError`` on an empty batch (a size-0 array)."""
    if np.size(x) == 0:
        raise ValueError(f"{name} is empty (shape {shape_of(x)}): a loss over no examples is undefined")


def check_finite_tree(tree, what: str = "data") -> None:
    """On concrete inputs, raise ``ValueError`` naming the first leaf holding NaN/inf and how many."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not is_concrete(leaf):
            continue
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc":
            bad = int(np.size(arr) - np.isfinite(arr).sum())
            if bad:
                raise ValueError(
                    f"{what} leaf {jax.tree_util.keystr(path) or '<root>'} holds {bad} non-finite "
                    f"value(s) (NaN or inf) out of {arr.size}"
                )


def check_fields_at_least(config, names, minimum=1) -> None:
    """Raise ``ValueError("<name> must be >= <minimum>, got <value>")`` for the first field below ``minimum``.

    Fields set to ``None`` (optional, "use the default") are skipped. Used by the experiments'
    ``Config.__post_init__`` so a bad CLI option exits with one line naming the option.
    """
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
