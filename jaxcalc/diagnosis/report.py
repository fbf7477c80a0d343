"""What a diagnosis returns: :class:`Finding` (one problem at one source line) and :class:`Report`."""
from __future__ import annotations

import dataclasses
import os

__all__ = ["KINDS", "Finding", "Report"]

# Most severe first: a broken loss, a broken gradient (the where-trap, then other NaN origins), a gradient
# silently wrong (a custom rule), digits lost.
KINDS = ("nonfinite_forward", "where_nan", "nonfinite_backward", "wrong_derivative", "precision_loss")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem, at the user's source line that made the equation.

    Attributes:
      kind: one of ``nonfinite_forward``, ``nonfinite_backward``, ``where_nan``, ``wrong_derivative``,
        ``precision_loss``.
      primitive: the JAX primitive of the equation (``exp``, ``div``, ``custom_vjp_call``, ...).
      source: ``"file:line"`` of the user's code that created the equation; for a backward-pass equation,
        the forward line whose derivative it is.
      pass_: ``"forward"`` or ``"backward"``: the pass the equation belongs to.
      number: the size of the problem, in ``unit``.
      unit: ``"count"`` (non-finite entries), ``"rel_error"`` (custom rule against finite differences) or
        ``"bits_lost"`` (mean local error of the equation, in bits of the float32 significand).
      detail: one line: what happened and a concrete fix where one is known.
      function: the Python function around ``source``.
      stack: up to 4 user frames, innermost first (``file:line (function)``).
    """

    kind: str
    primitive: str
    source: str
    pass_: str
    number: float
    unit: str
    detail: str
    function: str = ""
    stack: tuple = ()

    @property
    def file(self) -> str:
        return self.source.rsplit(":", 1)[0]

    @property
    def line(self) -> int | None:
        tail = self.source.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else None

    @property
    def rel_error(self) -> float | None:
        return self.number if self.unit == "rel_error" else None

    @property
    def bits_lost(self) -> float | None:
        return self.number if self.unit == "bits_lost" else None

    @property
    def count(self) -> int | None:
        return int(self.number) if self.unit == "count" else None

    def short(self) -> str:
        """``kind at file:line (primitive): detail`` on one line."""
        return f"{self.kind} at {self.source} ({self.primitive}, {self.pass_} pass, {_fmt_number(self)}): " \
               f"{self.detail}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "primitive": self.primitive, "source": self.source, "pass": self.pass_,
                "number": self.number, "unit": self.unit, "detail": self.detail, "function": self.function,
                "stack": list(self.stack)}


def _fmt_number(f: Finding) -> str:
    if f.unit == "count":
        return f"{int(f.number)} bad"
    if f.unit == "rel_error":
        return f"rel err {f.number:.2e}"
    return f"{f.number:.1f} bits lost"


def _short_path(source: str) -> str:
    try:
        rel = os.path.relpath(source)
    except ValueError:
        return source
    return rel if not rel.startswith("..") else source


@dataclasses.dataclass(frozen=True)
class Report:
    """The diagnosis of ``f`` at given arguments.

    Attributes:
      findings: the problems, most severe first (kinds in the order of ``KINDS``, then by size).
      value: ``f(*args)`` as computed in the arguments' precision (float32 usually).
      value_bits_lost: end-to-end error of that value against the float64 shadow, in bits:
        ``log2(1 + |f32 − f64| / ulp32(f64))``.
      grad_bits_lost: the same for the gradient, normwise: ``log2(1 + max|g32 − g64| / ulp32(max|g64|))``
        (None when the gradient was not traced).
      local_errors: per measured forward equation, ``{"index", "primitive", "source", "bits_mean",
        "bits_max"}`` in evaluation order (the data of the local-error plot).
      rules: per custom_jvp/custom_vjp call checked, ``{"rule", "source", "rel_error", "passed", "method"}``.
      equations: how many equations were evaluated, ``{"forward": n, "gradient": m}``.
      threshold_bits: the local error above which an equation is a ``precision_loss`` finding.
      notes: what could not be analysed (e.g. no float64 shadow for some primitive).
      seconds: wall time per phase (trace, value_and_grad, nonfinite, local_errors, rules), compiles included.
      dtype: the precision ``f`` ran in (its result's dtype), whose bits the precision figures count.
    """

    findings: tuple
    value: float
    value_bits_lost: float | None
    grad_bits_lost: float | None
    local_errors: tuple
    rules: tuple
    equations: dict
    threshold_bits: float
    notes: tuple = ()
    seconds: dict = dataclasses.field(default_factory=dict)
    dtype: str = "float32"

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def top(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def __str__(self) -> str:
        n_f, n_g = self.equations.get("forward", 0), self.equations.get("gradient", 0)
        bits = "n/a" if self.value_bits_lost is None else f"{self.value_bits_lost:.1f}"
        gbits = "n/a" if self.grad_bits_lost is None else f"{self.grad_bits_lost:.1f}"
        head = (f"diagnosis: {'ok' if self.ok else f'{len(self.findings)} finding(s)'} — f = {self.value:.6g}; "
                f"{self.dtype} error of f {bits} bits, of its gradient {gbits} bits; {n_f} forward and {n_g} "
                f"gradient equations, {len(self.rules)} custom rule(s) checked")
        lines = [head]
        if self.findings:
            rows = [("#", "kind", "source", "primitive", "pass", "number")]
            for i, f in enumerate(self.findings, 1):
                rows.append((str(i), f.kind, _short_path(f.source), f.primitive, f.pass_, _fmt_number(f)))
            widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
            for r in rows:
                lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
            lines.append("")
            for i, f in enumerate(self.findings, 1):
                lines.append(f"{i}. {f.detail}")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-able: plain lists, dicts, strings and floats."""
        return {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "value": self.value,
            "value_bits_lost": self.value_bits_lost,
            "grad_bits_lost": self.grad_bits_lost,
            "local_errors": [dict(e) for e in self.local_errors],
            "rules": [dict(r) for r in self.rules],
            "equations": dict(self.equations),
            "threshold_bits": self.threshold_bits,
            "notes": list(self.notes),
            "seconds": dict(self.seconds),
            "dtype": self.dtype,
        }
