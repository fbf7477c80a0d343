"""Diagnose: plant the classic defects in small losses; jaxcalc.diagnose must name each one's line.

Each defect below sits on a line marked ``# <- defect``; the experiment reads that line number from the
source, diagnoses the loss with :func:`jaxcalc.diagnose` and checks that the top finding has the expected
kind at exactly that line. Each defect's textbook fix is diagnosed too (it must come out clean), and so are
jaxcalc's own losses and models at ordinary inputs (no false alarms).

The precision figure is Herbie's *local error*: for an equation ``y = op(x)`` with exact (float64) inputs
``x``, ``bits = log2(1 + |op32(round32(x)) − op64(x)| / ulp32(op64(x)))``, the float32 digits this one
operation loses (0 for a correctly rounded op; 24 = all of float32's significand). The plot shows it per
equation for ``log(1 + x)`` and ``(1 − cos x)/x²`` at small ``x`` beside their fixes.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc.runio import RunWriter, figure

NAME = "diagnose"
MARK = "# <- defect"


@dataclass(frozen=True)
class Config:
    """Settings of ``jaxcalc run diagnose``.

    Attributes:
      seed: PRNG seed for the healthy losses' inputs and parameters.
      threshold_bits: local error (bits of float32's 24) above which an equation is a precision finding; 1..24.
      fixes: also diagnose each defect's fixed version (expected clean).
      healthy: also diagnose jaxcalc's losses and models (linear, MLP, CNN, recommender; expected clean).
    """

    seed: int = 0
    threshold_bits: float = 10.0
    fixes: bool = True
    healthy: bool = True

    def __post_init__(self):
        if not (isinstance(self.threshold_bits, (int, float)) and 1.0 <= self.threshold_bits <= 24.0):
            raise ValueError(f"threshold_bits must be in [1, 24], got {self.threshold_bits}")


QUICK = {"fixes": False}


# ------------------------------------------------------------------------------------------ planted defects


def where_trap(x):
    safe_or_not = jnp.log(x)  # <- defect
    return jnp.sum(jnp.where(x > 0, safe_or_not, 0.0))


def where_trap_fixed(x):
    ok = x > 0
    return jnp.sum(jnp.where(ok, jnp.log(jnp.where(ok, x, 1.0)), 0.0))


def naive_softmax_ce(z):
    e = jnp.exp(z)  # <- defect
    return -jnp.log(e[0] / jnp.sum(e))


def naive_softmax_ce_fixed(z):
    return -jax.nn.log_softmax(z)[0]


def log_one_plus(x):
    return jnp.sum(jnp.log(1.0 + x))  # <- defect


def log_one_plus_fixed(x):
    return jnp.sum(jnp.log1p(x))


def one_minus_cos(x):
    return jnp.sum((1.0 - jnp.cos(x)) / x**2)  # <- defect


def one_minus_cos_fixed(x):
    return jnp.sum(2.0 * jnp.sin(x / 2) ** 2 / x**2)


def _make_sin(scale):
    @jax.custom_vjp
    def sin(x):
        return jnp.sin(x)

    sin.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda c, g: (scale * g * c,))
    return sin


_sin_off, _sin_ok = _make_sin(1.01), _make_sin(1.0)


def custom_vjp_off(x):
    return jnp.sum(_sin_off(x) ** 2)  # <- defect


def custom_vjp_off_fixed(x):
    return jnp.sum(_sin_ok(x) ** 2)


def sqrt_at_zero(x):
    y = jnp.ones_like(x)
    return jnp.sqrt(jnp.sum((x - y) ** 2))  # <- defect


def sqrt_at_zero_fixed(x):
    y = jnp.ones_like(x)
    return jnp.sqrt(jnp.sum((x - y) ** 2) + 1e-12)


def norm_of_zero(x):
    return jnp.linalg.norm(x - jnp.ones_like(x))  # <- defect


def norm_of_zero_fixed(x):
    d = x - jnp.ones_like(x)
    return jnp.sqrt(jnp.sum(d**2) + 1e-12)


@dataclass(frozen=True)
class Defect:
    name: str
    description: str
    expected_kind: str
    loss: object
    fixed: object
    arg: object


def defects():
    return (
        Defect("where-trap", "jnp.where(x > 0, log(x), 0) at x = 0", "where_nan", where_trap, where_trap_fixed,
               jnp.array([0.0, 1.0, 2.0])),
        Defect("naive softmax", "exp(z) / sum(exp(z)) at z = 1000", "nonfinite_forward", naive_softmax_ce,
               naive_softmax_ce_fixed, jnp.array([1000.0, 0.0, 1.0])),
        Defect("log(1 + x)", "log(1 + x) at x ~ 1e-5", "precision_loss", log_one_plus, log_one_plus_fixed,
               jnp.array([1e-5, 3e-5, 7e-6, 2e-5])),
        Defect("(1 − cos x)/x²", "(1 − cos x)/x² at x ~ 1e-3", "precision_loss", one_minus_cos,
               one_minus_cos_fixed, jnp.array([1e-3, 2e-3, 5e-4])),
        Defect("custom_vjp 1% off", "a `custom_vjp` rule for sin returning 1.01·cos(x)·g", "wrong_derivative",
               custom_vjp_off, custom_vjp_off_fixed, jnp.array([0.3, -1.2, 2.0])),
        Defect("sqrt at 0", "sqrt(sum((x − y)²)) at x = y", "nonfinite_backward", sqrt_at_zero, sqrt_at_zero_fixed,
               jnp.array([1.0, 1.0, 1.0])),
        Defect("norm of a zero vector", "jnp.linalg.norm(x − y) at x = y", "nonfinite_backward", norm_of_zero,
               norm_of_zero_fixed, jnp.array([1.0, 1.0])),
    )


def marked_line(fn) -> tuple[str, int]:
    """``(file, line)`` of the line of ``fn`` that carries the defect marker."""
    lines, start = inspect.getsourcelines(fn)
    for i, text in enumerate(lines):
        if MARK in text:
            return inspect.getsourcefile(fn), start + i
    raise ValueError(f"{fn.__name__} has no line marked {MARK!r}")


# ------------------------------------------------------------------------------------------ healthy code


def healthy_cases(key):
    """jaxcalc's losses and models at ordinary (random) inputs: ``[(name, f, args)]``."""
    from jaxcalc import losses
    from jaxcalc.models import cnn, linear, mlp, recommender

    k = jax.random.split(key, 8)
    n = 6
    x = jax.random.normal(k[0], (n, 5))
    y = jax.random.normal(k[1], (n,))
    logits = 3.0 * jax.random.normal(k[2], (n, 4))
    labels = jax.random.randint(k[3], (n,), 0, 4)
    lin = {"w": jax.random.normal(k[2], (5,)), "b": jnp.array(0.3)}
    mlp_params = mlp.init_mlp(k[4], (5, 8, 8, 4))
    spec = cnn.CNNSpec(height=8, width=8, channels=1, num_classes=10, filters=4, hidden=8)
    apply, cnn_params = cnn.init_cnn(k[5], spec)
    images = jax.random.uniform(k[6], (2, 8, 8, 1))
    digits = jax.random.randint(k[7], (2,), 0, 10)
    rec = recommender.init(k[6], 7, 9, factors=3, init_scale=0.5, global_mean=3.5)
    ratings = {"user": jax.random.randint(k[0], (12,), 0, 7), "item": jax.random.randint(k[1], (12,), 0, 9),
               "rating": jax.random.uniform(k[2], (12,), minval=1.0, maxval=5.0)}
    return [
        ("mse", losses.mse, (x[:, 0], y)),
        ("huber", lambda a, b: losses.mean_huber(a, b, delta=0.5), (x[:, 0], y)),
        ("cross_entropy", losses.cross_entropy, (logits, labels)),
        ("binary_cross_entropy", losses.binary_cross_entropy, (logits[:, 0], (labels % 2).astype(jnp.float32))),
        ("linear regression (MSE)", lambda p: losses.mse(linear.linear_apply(p, x), y), (lin,)),
        ("MLP 5-8-8-4 relu, cross-entropy", lambda p: losses.cross_entropy(mlp.mlp_apply(p, x), labels),
         (mlp_params,)),
        ("CNN (flax NNX, fused conv-relu-pool custom_vjp, dropout)",
         lambda p: losses.cross_entropy(apply(p, images, key=jax.random.key(1), train=True), digits), (cnn_params,)),
        ("recommender (biased MF + L2)", lambda p: recommender.loss(p, ratings, reg=0.05), (rec,)),
    ]


# ------------------------------------------------------------------------------------------ run


def _short(file: str, line) -> str:
    return f"{file.rsplit('/', 1)[-1]}:{line}" if line is not None else "—"


def _number(f) -> str:
    if f.unit == "count":
        return f"{int(f.number)} NaN/inf"
    if f.unit == "rel_error":
        return f"rel. error {f.number:.2e}"
    return f"{f.number:.1f} bits lost"


def run(config: Config, out_dir) -> dict:
    from jaxcalc.diagnosis import diagnose

    writer = RunWriter(out_dir, config)
    rows, summary, plotted = [], {}, {}
    found = 0
    for d in defects():
        file, line = marked_line(d.loss)
        start = time.perf_counter()
        report = diagnose(d.loss, d.arg, threshold_bits=config.threshold_bits, local_errors="always")
        seconds = time.perf_counter() - start
        top = report.top
        hit = top is not None and top.kind == d.expected_kind and top.file == file and top.line == line
        found += hit
        fixed_ok = fix_bits = None
        if config.fixes:
            fixed = diagnose(d.fixed, d.arg, threshold_bits=config.threshold_bits, local_errors="always")
            fixed_ok = fixed.ok
            fix_bits = max((r["bits_mean"] for r in fixed.local_errors), default=0.0)
            if d.expected_kind == "precision_loss":
                plotted[d.name] = (report.local_errors, fixed.local_errors)
        elif d.expected_kind == "precision_loss":
            plotted[d.name] = (report.local_errors, None)
        row = {"defect": d.name, "description": d.description, "expected_kind": d.expected_kind,
               "expected_line": _short(file, line), "reported_kind": top.kind if top else None,
               "reported_line": _short(top.file, top.line) if top else None,
               "primitive": top.primitive if top else None,
               "number": _number(top) if top else "", "value": top.number if top else None,
               "unit": top.unit if top else None, "found": hit, "fix_clean": fixed_ok,
               "fix_max_local_bits": fix_bits,
               "detail": top.detail if top else "", "seconds": seconds,
               "value_bits_lost": report.value_bits_lost, "grad_bits_lost": report.grad_bits_lost}
        writer.log(**row)
        rows.append(row)

    healthy = []
    if config.healthy:
        for name, fn, args in healthy_cases(jax.random.key(config.seed)):
            start = time.perf_counter()
            report = diagnose(fn, *args, threshold_bits=config.threshold_bits)
            entry = {"loss": name, "ok": report.ok, "findings": len(report.findings),
                     "top": report.top.short() if report.top else "", "value_bits_lost": report.value_bits_lost,
                     "grad_bits_lost": report.grad_bits_lost, "rules_checked": len(report.rules),
                     "worst_rule_rel_error": max((r["rel_error"] for r in report.rules), default=None),
                     "seconds": time.perf_counter() - start}
            writer.log(**entry)
            healthy.append(entry)

    table = ["| defect | expected | expected line | reported kind | reported line | number | found"
             + (" | fix diagnoses clean |" if config.fixes else " |"),
             "|---|---|---|---|---|---|---|" + ("---|" if config.fixes else "")]
    for r in rows:
        fix = f" {'yes' if r['fix_clean'] else 'NO'} |" if config.fixes else ""
        table.append(f"| {r['defect']}: {r['description']} | {r['expected_kind']} | {r['expected_line']} | "
                     f"{r['reported_kind']} | {r['reported_line']} | {r['number']} | "
                     f"{'yes' if r['found'] else 'NO'} |{fix}")
    if healthy:
        table += ["", "| healthy loss / model | findings | f: bits lost | gradient: bits lost | custom rules checked "
                  "(worst rel. error) |", "|---|---|---|---|---|"]
        for h in healthy:
            worst = "" if h["worst_rule_rel_error"] is None else f" ({h['worst_rule_rel_error']:.1e})"
            table.append(f"| {h['loss']} | {h['findings']} | {_fmt_bits(h['value_bits_lost'])} | "
                         f"{_fmt_bits(h['grad_bits_lost'])} | {h['rules_checked']}{worst} |")
    text = "\n".join(table)
    print(text)

    if plotted:
        _plot(writer, plotted, config.threshold_bits)
    summary.update({
        "defects_found": f"{found}/{len(rows)}",
        "all_defects_found": found == len(rows),
        "fixes_clean": all(r["fix_clean"] for r in rows) if config.fixes else None,
        "healthy_clean": all(h["ok"] for h in healthy) if healthy else None,
        "healthy_checked": len(healthy),
        "defects": rows,
        "healthy": healthy,
        "table_markdown": text,
    })
    return writer.finish(summary)


def _fmt_bits(b) -> str:
    return "—" if b is None or (isinstance(b, float) and math.isnan(b)) else f"{b:.1f}"


def _plot(writer, plotted: dict, threshold: float):
    fig, axes = figure(1, len(plotted), figsize=(6.5 * len(plotted), 4.2), layout="constrained", squeeze=False)
    for ax, (name, (naive, fixed)) in zip(axes[0], plotted.items(), strict=True):
        ticks, labels, start = [], [], 0
        for rows, label, color in ((naive, "defect", "C3"), (fixed, "fixed", "C0")):
            if not rows:
                continue
            idx = start + np.arange(len(rows))
            ax.bar(idx, [r["bits_mean"] for r in rows], width=0.7, color=color, label=label)
            ticks += list(idx)
            labels += [r["primitive"] for r in rows]
            start += len(rows) + 1
        ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=8)
        ax.axhline(threshold, color="grey", ls="--", lw=0.8, label=f"threshold {threshold:g} bits")
        ax.set(title=f"{name}: local error per equation", ylabel="bits lost (of float32's 24)", ylim=(0, 25))
        ax.legend(fontsize=8)
    fig.suptitle("Local error = log2(1 + |op32(round32(x)) − op64(x)| / ulp32), x exact (float64 shadow)")
    writer.savefig(fig, "local_error")
