"""The one place where jaxcalc.diagnosis reads JAX internals, and why.

JAX's public API gives us jaxprs (``jax.make_jaxpr``) and their parts (``jax.extend.core``: ``Jaxpr``,
``ClosedJaxpr``, ``JaxprEqn``, ``Literal``, ``Var``). Four things the diagnosis needs have no public form in
jax 0.10, so they live here, each in a few lines, to adapt in one place when JAX changes:

1. *Which user line made an equation.* ``eqn.source_info.traceback`` holds the Python stack at trace time;
   ``jax.extend.source_info_util.summarize`` only returns it as text, so we read the frames with
   ``jax._src.source_info_util.user_frames`` (JAX's own filter of jax/stdlib frames) and drop installed
   packages (flax, optax, numpy in ``site-packages``) too, so that a flax layer's matmul points at the user's
   ``__call__`` line. Backward-pass equations keep the forward equation's traceback (JAX's AD copies it),
   which is how a gradient equation is named by "the forward line whose derivative it is".
2. *Forward or backward pass.* Equations that reverse-mode AD emits carry ``transpose(...)`` in their name
   stack (``eqn.source_info.name_stack``).
3. *How to call a primitive from its equation*: ``primitive.get_bind_params(params)`` (what
   ``jax.core.eval_jaxpr`` does) turns the stored parameters of ``custom_jvp_call`` / ``custom_vjp_call``
   back into callables, so JAX's own AD applies the user's rule.
4. *Where nested jaxprs sit* in the parameters of ``jit``, ``scan``, ``while``, ``cond``, ``remat2``
   (``jax.checkpoint``), ``closed_call``, ``custom_jvp_call`` and ``custom_vjp_call``.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from jax._src import source_info_util as _siu  # (1): user frames of a traceback
from jax.extend import core as jex

__all__ = ["Frame", "api_name", "bind_fn", "call_body", "is_backward", "literal_value", "user_frame"]

CALL_PRIMS = {"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint", "custom_jvp_call",
              "custom_vjp_call"}
CUSTOM_PRIMS = {"custom_jvp_call", "custom_vjp_call"}

_HERE = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclasses.dataclass(frozen=True)
class Frame:
    """A user source position: ``file:line`` (column and function for display and matching)."""

    file: str
    line: int
    column: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _is_user_file(path: str) -> bool:
    return not (path.startswith(_HERE) or f"{os.sep}site-packages{os.sep}" in path
                or f"{os.sep}dist-packages{os.sep}" in path or path.startswith("<frozen"))


def _frames(eqn):
    """``(user_frames, all raw code objects innermost first)`` of an equation's trace-time stack."""
    tb = eqn.source_info.traceback
    if tb is None:
        return [], []
    return list(_siu.user_frames(tb)), list(tb.raw_frames()[0])


def user_frame(eqn) -> Frame | None:
    """The innermost frame of the user's code that created ``eqn`` (None if the stack holds none)."""
    for f in _frames(eqn)[0]:
        if _is_user_file(f.file_name):
            return Frame(f.file_name, int(f.start_line), int(f.start_column), f.function_name)
    return None


def user_stack(eqn, limit: int = 4) -> tuple[str, ...]:
    """Up to ``limit`` user frames, innermost first, as ``file:line (function)``."""
    out = []
    for f in _frames(eqn)[0]:
        if _is_user_file(f.file_name):
            out.append(f"{f.file_name}:{f.start_line} ({f.function_name})")
            if len(out) == limit:
                break
    return tuple(out)


_WRAPPERS = {"reraise_with_filtered_traceback", "cache_miss", "_run_python_pjit", "__call__", "op", "wrapper",
             "bind", "bind_with_trace", "_cpp_pjit", "call_wrapped", "deferring_binary_op"}


_API_DIRS = tuple(os.sep.join(("jax", "_src", d, "")) for d in ("numpy", "nn", "scipy", "lax"))


def api_name(eqn) -> str | None:
    """The library function the user's line called to make ``eqn`` (``norm`` for ``jnp.linalg.norm``), if known."""
    if eqn.primitive.name in ("jit", "pjit"):
        return eqn.params.get("name")
    users, codes = _frames(eqn)
    for f in users:
        if not _is_user_file(f.file_name):
            continue
        for i, code in enumerate(codes):
            qual = getattr(code, "co_qualname", code.co_name)
            if code.co_filename == f.file_name and qual == f.function_name:
                for inner in reversed(codes[:i]):  # the first public-API function called from the user's line
                    if any(part in inner.co_filename for part in _API_DIRS) and inner.co_name not in _WRAPPERS \
                            and not inner.co_name.startswith("_"):
                        return inner.co_name
                return None
        return None
    return None


def is_backward(eqn) -> bool:
    """True for equations reverse-mode AD emitted (their name stack reads ``transpose(...)``)."""
    return "transpose(" in str(eqn.source_info.name_stack)


def literal_value(atom):
    """A literal's value as a numpy array of its declared dtype (jaxprs may store Python scalars)."""
    return np.asarray(atom.val, dtype=atom.aval.dtype) if hasattr(atom.aval, "dtype") else atom.val


def is_literal(atom) -> bool:
    return isinstance(atom, jex.Literal)


def bind_fn(eqn):
    """``(*invals) -> list of outvals``: the equation's primitive applied as ``jax.core.eval_jaxpr`` does (3)."""
    params = eqn.primitive.get_bind_params(eqn.params)
    prim = eqn.primitive

    def apply(*args, **overrides):
        out = prim.bind(*args, **{**params, **overrides})
        return list(out) if prim.multiple_results else [out]

    return apply


def call_body(eqn):
    """For a call-like equation (jit, remat, closed_call, custom_jvp/vjp): ``(jaxpr, consts)`` of its body (4)."""
    p = eqn.params
    body = p.get("jaxpr", p.get("call_jaxpr"))
    if isinstance(body, jex.ClosedJaxpr):
        return body.jaxpr, list(body.consts)
    return body, []


def closed(cj):
    """``(jaxpr, consts)`` of a ClosedJaxpr or open Jaxpr."""
    if isinstance(cj, jex.ClosedJaxpr):
        return cj.jaxpr, list(cj.consts)
    return cj, []


def rule_name(eqn) -> str:
    """The user's rule function of a custom_jvp/custom_vjp call and where it is defined, for messages."""
    p = eqn.params
    for key in ("bwd", "jvp_jaxpr_fun"):
        fun = p.get(key)
        info = getattr(getattr(fun, "debug_info", None), "func_src_info", None)
        if info:
            return info
    return eqn.primitive.name


def primal_name(eqn) -> str:
    body = eqn.params.get("call_jaxpr")
    info = getattr(getattr(getattr(body, "jaxpr", None), "debug_info", None), "func_name", None)
    return info or eqn.primitive.name


def eqn_context(eqn):
    """The context manager JAX enters to bind ``eqn`` (compute_on / xla metadata); a no-op for most."""
    return eqn.ctx.manager

