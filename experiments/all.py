"""The main job: every experiment on its built-in data, one report (report.md + report.html).

The report reads as a short illustrated article, one section per concept. Everything about a
section sits in its :class:`Section` entry of ``SECTIONS``: the title, the experiment whose
``summary.json`` it reads, a prose builder (the idea with its formula, then what the measured
numbers show, beside the theory or a peer), its figures with captions, and an optional table
builder. Prose and tables are built from the summary, so they follow what the run did (which
data set, which fitting method, how many epochs); a figure the summary lacks drops out of the
text instead of breaking the report.

Adding a section (say, for an experiment ``diagnose``): write ``_diagnose_prose(summary, results)``
returning ``[idea, findings]`` (and, if useful, ``_diagnose_table`` and ``_diagnose_headline``), append
``Section("Diagnose", "diagnose", _diagnose_prose, figures=(("file.png", "caption"),), ...)`` to
``SECTIONS`` where it belongs in the article, give the experiment a row in ``EXPECTED_SECONDS``, and
refresh the test snapshot (``jaxcalc run all --quick --out R && python tests/test_report.py R``).

While the experiments run, their own console output (stdout and stderr: tables, epoch lines,
warnings) goes to ``<out>/<name>/console.txt`` and the console shows a progress bar and one line
per finished experiment. The time announced up front comes from
the durations of earlier runs on this machine (stored beside the compilation cache), else from
``EXPECTED_SECONDS``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jaxcalc import report as R
from jaxcalc.runio import write_json_atomic

NAME = "all"


@dataclass(frozen=True)
class Config:
    """Settings of the main job; each field is a ``jaxcalc run all`` option.

    Attributes:
      seed: PRNG seed handed to every experiment that takes one.
      quick: every experiment with its small, fast settings (each experiment's ``QUICK``).
      only: run just these experiments, comma-separated names as in ``jaxcalc list`` (default: all).
    """

    seed: int = 0
    quick: bool = False
    only: tuple[str, ...] = ()

    def __post_init__(self):
        known = set(experiment_names())
        bad = [n for n in self.only if n not in known]
        if bad:
            raise ValueError(f"--only names unknown experiment(s) {', '.join(bad)}; valid: {', '.join(sorted(known))}")


QUICK = {"quick": True}

# ------------------------------------------------------------------ time estimates

# Wall seconds of each experiment's run() as `jaxcalc run all` runs it: (quick cold, quick warm, full cold,
# full warm). Cold: an empty compilation cache; warm: the same command again. Measured 2026-12-01 on this
# project's 2-core AMD EPYC VM with nothing else running (load average 0.9-1.7: the runs themselves), with
# `JAXCALC_CACHE_DIR=<new dir> jaxcalc run all [--quick]`, twice per cache. Whole-run totals: quick cold
# 109 s, quick warm 44 s, full cold 123 s, full warm 56 s (earlier runs under load from other sessions took
# up to 2.5x these). A run replaces these with what it measures here (see `estimate_seconds`).
EXPECTED_SECONDS = {
    "gradients": (17, 6, 18, 7),
    "finite-differences": (3, 1, 3, 1),
    "integrals": (8, 2, 9, 3),
    "linear": (11, 5, 10, 5),
    "mlp": (18, 7, 18, 7),
    "stability": (4, 3, 3, 2),
    "optimizers": (20, 8, 24, 11),
    "cnn": (8, 5, 13, 10),
    "recommender": (7, 2, 11, 6),
    "diagnose": (12, 4, 12, 4),
}
DEFAULT_SECONDS = (20, 10, 30, 15)  # an experiment without an entry
REPORT_SECONDS = 3  # building the report after the experiments
DURATIONS_FILE = "jaxcalc-run-durations.json"
DURATIONS_KEPT = 5  # per experiment and mode; the estimate is their median


def durations_path() -> Path | None:
    """Where measured durations are kept: beside JAX's entries in the persistent compilation cache
    (JAX only touches its ``*-cache`` files), so clearing the cache also forgets the timings.
    ``None`` while the cache is off."""
    import jax

    folder = jax.config.jax_compilation_cache_dir
    return Path(folder) / DURATIONS_FILE if folder else None


def cache_is_warm() -> bool:
    """Whether the compilation cache holds compiled programs (a run will mostly skip compiling)."""
    path = durations_path()
    return path is not None and any(path.parent.glob("*-cache"))


def _mode(name: str, quick: bool, warm: bool) -> str:
    return f"{name} {'quick' if quick else 'full'} {'warm' if warm else 'cold'}"


def _load_durations() -> dict:
    path = durations_path()
    try:
        data = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def estimate_seconds(name: str, quick: bool, warm: bool) -> tuple[float, bool]:
    """Expected wall seconds of experiment ``name`` (default settings) and whether it was measured
    on this machine (the median of the last runs) rather than taken from ``EXPECTED_SECONDS``."""
    past = _load_durations().get(_mode(name, quick, warm))
    if isinstance(past, list) and past and all(isinstance(t, (int, float)) for t in past):
        return float(statistics.median(past)), True
    row = EXPECTED_SECONDS.get(name, DEFAULT_SECONDS)
    return float(row[(0 if quick else 2) + (1 if warm else 0)]), False


def record_seconds(name: str, quick: bool, warm: bool, seconds: float) -> None:
    """Remember a measured duration of ``name`` (default settings) for later estimates; never fails a run."""
    path = durations_path()
    if path is None:
        return
    data = _load_durations()
    key = _mode(name, quick, warm)
    data[key] = ([t for t in data.get(key, []) if isinstance(t, (int, float))] + [round(seconds, 2)])[-DURATIONS_KEPT:]
    with contextlib.suppress(OSError):
        write_json_atomic(path, data)


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


# ------------------------------------------------------------------ reading summaries


def _get(s: dict, *path):
    for key in path:
        if not isinstance(s, dict) or key not in s:
            return None
        s = s[key]
    return s


def _f(s: dict, *path) -> float | None:
    """A number from the summary, or None when missing (or not a number)."""
    v = _get(s, *path)
    if isinstance(v, bool) or v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _e(x, digits: int = 1) -> str | None:
    """``3.0e-12``-style (``0`` stays ``0``), None passes through."""
    if x is None:
        return None
    if x == 0:
        return "0"
    return f"{x:.{digits}e}".replace("e-0", "e-").replace("e+0", "e+").replace("e+", "e")


def _g(x, digits: int = 3) -> str | None:
    """A plain number with ``digits`` significant digits (scientific when tiny or huge)."""
    if x is None:
        return None
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e9):
        return _e(x, digits - 1)
    if float(x).is_integer():
        return f"{int(x):,}"
    if abs(x) >= 1000:  # 12,342 and 2,859.7, never 1.23e+04
        return f"{x:,.{max(0, digits - len(str(int(abs(x)))))}f}"
    return f"{x:.{digits}g}"


def _pct(x, digits: int = 1) -> str | None:
    return None if x is None else f"{100 * x:.{digits}f}%"


def _say(text: str, *values) -> str:
    """``text.format(*values)``, or "" when a value is missing: a sentence whose figure the
    summary lacks is left out rather than printed with a hole."""
    return "" if any(v is None for v in values) else text.format(*values)


def _para(*sentences) -> str:
    return " ".join(s for s in sentences if s)


# ------------------------------------------------------------------ sections


@dataclass(frozen=True)
class Section:
    """One concept of the report, all in one place.

    Attributes:
      title: the section's heading.
      experiment: the experiment whose summary it reads (``jaxcalc run NAME``).
      prose: ``prose(summary, results) -> [paragraph, ...]`` (Markdown inline: `code`, **bold**):
        first the idea with its formula, then what the measured numbers show. ``results`` maps
        every experiment that ran to its summary, for peers from another section.
      figures: ``(file, caption)`` pairs, in order. A file the experiment did not write is left
        out; if none is left, the experiment's plots that no section claims are shown instead.
      table: ``table(summary, results) -> (header, rows)`` or None; human names only.
      headline: ``headline(summary) -> str``: the one console line after the experiment ran.
    """

    title: str
    experiment: str
    prose: Callable[[dict, dict], list[str]]
    figures: tuple[tuple[str, str], ...] = ()
    table: Callable[[dict, dict], tuple[list[str], list[list]] | None] | None = None
    headline: Callable[[dict], str] | None = None


# --- Losses (experiment `gradients`) ---------------------------------------------------------


def _losses_prose(s, results):
    idea = ("A loss scores a prediction against its target, one number per example, and training minimises their "
            "mean. Regression uses the squared error ℓ = (ŷ − y)², whose derivative 2(ŷ − y) grows with the "
            "error; the absolute error |ŷ − y|, whose derivative is ±1 so an outlier pulls no harder than any other "
            "point; or Huber's loss, quadratic within δ of the target and linear beyond. Classification scores "
            "logits z (unnormalised log-probabilities) with the cross-entropy ℓ = log Σⱼ exp(zⱼ) − z_y, whose "
            "gradient is softmax(z) − onehot(y): it pushes the true class up by 1 − p_y and every other class "
            "down by its probability.")
    message = _get(s, "shape_check_message")
    refused = (_say("jaxcalc refuses that pair: `ValueError: {}`.", message) if message != "NOT REFUSED"
               else "**jaxcalc did not refuse that pair in this run.**")
    found = _para(
        "Shapes are checked, never guessed: the article's example 1 subtracts targets of shape (3,) from "
        "predictions of shape (3, 1), which numpy broadcasts to a 3 × 3 grid of every prediction against every "
        "target.", refused,
        _say("The gradient of every loss agrees with float64 central differences to a relative error of {} or "
             "less (next section), and each loss equals its optax counterpart in the test suite.",
             _e(_f(s, "losses_worst_rel_error"))))
    return [idea, found]


def _losses_table(s, results):
    return (["loss", "per example, e = ŷ − y", "derivative"],
            [["squared error", "e²", "2e"],
             ["absolute error", "|e|", "sign(e)"],
             ["Huber (δ)", "½e² for |e| ≤ δ, δ(|e| − ½δ) beyond", "e clipped to [−δ, δ]"],
             ["binary cross-entropy (logit z, label y)", "−y log σ(z) − (1 − y) log σ(−z)", "σ(z) − y"],
             ["cross-entropy (logits z, class y)", "log Σⱼ exp(zⱼ) − z_y", "softmax(z) − onehot(y)"]])


# --- Gradient checks (experiment `gradients`) --------------------------------------------------

_COMPARED = {"full": "every coordinate", "directional": "random directions"}


def _checks(s):
    return [c for c in (_get(s, "checks") or []) if isinstance(c, dict)]


def _gradcheck_prose(s, results):
    smooth, kink = _e(_f(s, "smooth_rtol") or 1e-7, 0), _e(_f(s, "kink_rtol") or 1e-4, 0)
    idea = ("A gradient, hand-derived or automatic, is trusted once it matches finite differences. "
            "`jaxcalc.check_grads` compares reverse mode (`jax.grad`) and forward mode (`jax.jvp`) with the central "
            "difference (f(θ + h·eᵢ) − f(θ − h·eᵢ)) / 2h for every coordinate i (random directions for large "
            "models), in float64, where the difference itself is good to about ε^(2/3) ≈ 4e-11, by the relative "
            f"error |a − b| / max(|a|, |b|). A check passes below {smooth} for smooth functions (cs231n's \"good\") "
            f"and below {kink} where a ReLU, max-pool or absolute-value kink may lie within a step.")
    checks = _checks(s)
    if not checks:
        return [idea]
    failed = [c.get("name", "?") for c in checks if not c.get("passed")]
    losses = [c for c in checks if c.get("kind") == "loss"]
    models = [c for c in checks if c.get("kind") == "model"]
    worst = {k: max((float(c.get("worst_rel_error", 0)) for c in group), default=None)
             for k, group in (("loss", losses), ("model", models))}
    margins = [(float(c["rtol"]) / max(float(c["worst_rel_error"]), 1e-300), c.get("name", "?"))
               for c in checks if c.get("passed") and "rtol" in c and "worst_rel_error" in c]
    found = _para(
        f"All {len(checks)} checks pass." if not failed else
        f"**{len(failed)} of {len(checks)} checks FAIL: {', '.join(failed)}.**",
        _say("The {} losses agree to {} at worst", len(losses), _e(worst["loss"])) + (
            _say(" and the {} models, from linear regression to the CNN and the recommender (table below), to {}.",
                 len(models), _e(worst["model"])) if models else "."),
        _say("Every passing check stays at least {}× below its tolerance (closest: the {}).",
             _g(min(margins)[0], 2) if margins else None, min(margins)[1] if margins else None))
    return [idea, found]


def _gradcheck_table(s, results):
    rows = []
    for c in _checks(s):
        compared = _COMPARED.get(c.get("method"), c.get("method", "?"))
        modes = c.get("modes", "fwd+rev").replace("fwd", "forward").replace("rev", "reverse").replace("+", " and ")
        rows.append([c.get("name", "?"), f"`{c['function']}`" if c.get("function") else "", c.get("kind", ""),
                     f"{compared}, {modes} mode", _e(_f(c, "worst_rel_error")), _e(_f(c, "rtol"), 0),
                     "pass" if c.get("passed") else "**FAIL**"])
    return (["check", "jaxcalc", "kind", "compared", "worst relative error", "tolerance", "result"], rows) if rows \
        else None


def _gradcheck_headline(s):
    checks = _checks(s)
    passed = sum(bool(c.get("passed")) for c in checks)
    worst = max((float(c.get("worst_rel_error", 0)) for c in checks), default=None)
    return _say("{} of {} gradient checks pass (worst relative error {})", passed, len(checks), _e(worst))


# --- Derivatives and finite differences -----------------------------------------------------

_FD_FUNCTIONS = {"exp": "exp", "sin": "sin", "network": "tanh-network loss"}


def _fd_prose(s, results):
    idea = ("A derivative is the limit of a difference quotient. The forward difference (f(x + h) − f(x)) / h is "
            "off by about h·|f''|/2 (truncation), the central difference (f(x + h) − f(x − h)) / 2h by about "
            "h²·|f'''|/6, and both lose about ε/h to round-off, ε being the machine epsilon (1.2e-7 in float32, "
            "2.2e-16 in float64). The error against h is therefore a V whose bottom lies near h ≈ √ε for the "
            "forward and h ≈ ε^(1/3) for the central difference. The complex step Im f(x + ih) / h subtracts "
            "nothing, so it has no round-off: h = 1e-20 is exact to ε.")

    def pick(f, m, d, k):
        return _f(s, f"{f}_{m}_{d}_{k}")

    fn = next((f for f in _FD_FUNCTIONS if pick(f, "central", "float64", "min_error") is not None), None)
    if fn is None:
        return [idea]
    name = _FD_FUNCTIONS[fn]
    slopes = {m: [v for f in _FD_FUNCTIONS if (v := pick(f, m, "float64", "truncation_slope")) is not None]
              for m in ("forward", "central")}
    complex_errs = [v for f in _FD_FUNCTIONS if (v := _f(s, f"{f}_complex_step_error")) is not None]
    found = _para(
        _say("For {} in float64 the central difference is best at h = {} with relative error {}, beside the "
             "theory's h ≈ ε^(1/3) = {} and error ≈ ε^(2/3) = {}.", name,
             _e(pick(fn, "central", "float64", "best_h")), _e(pick(fn, "central", "float64", "min_error")),
             _e(_f(s, "theory_central_float64_best_h")), _e(_f(s, "theory_central_float64_error"))),
        _say("In float32 the same formula can do no better than {} (theory {}), and the forward difference in "
             "float64 reaches {} (theory √ε = {}).", _e(pick(fn, "central", "float32", "min_error")),
             _e(_f(s, "theory_central_float32_error")), _e(pick(fn, "forward", "float64", "min_error")),
             _e(_f(s, "theory_forward_float64_error"))),
        _say("Right of the bottom, the fitted slopes in log-log are {} (forward) and {} (central) against "
             "Taylor's +1 and +2.",
             " / ".join(f"{v:+.2f}" for v in slopes["forward"]) or None,
             " / ".join(f"{v:+.2f}" for v in slopes["central"]) or None),
        _say("The complex step lands at {} or below on all {} functions, machine precision.",
             _e(max(complex_errs)) if complex_errs else None, len(complex_errs)))
    return [idea, found]


def _fd_table(s, results):
    rows = []
    for f, fname in _FD_FUNCTIONS.items():
        for m in ("forward", "central"):
            for d in ("float32", "float64"):
                k = f"{f}_{m}_{d}"
                if _f(s, f"{k}_min_error") is None:
                    continue
                slope = _f(s, k + "_truncation_slope")
                rows.append([fname, m, d, f"{_e(_f(s, k + '_best_h'))} ({_e(_f(s, f'theory_{m}_{d}_best_h'))})",
                             f"{_e(_f(s, k + '_min_error'))} ({_e(_f(s, f'theory_{m}_{d}_error'))})",
                             f"{'–' if slope is None else f'{slope:+.2f}'} ({'+1' if m == 'forward' else '+2'})"])
        if _f(s, f"{f}_complex_step_error") is not None:
            rows.append([fname, "complex step, h = 1e-20", "float64", "–",
                         f"{_e(_f(s, f'{f}_complex_step_error'))} (ε = 2.2e-16)", "–"])
    return (["function", "method", "precision", "best h (theory)", "smallest relative error (theory)",
             "truncation slope (theory)"], rows) if rows else None


def _fd_headline(s):
    return _say("central differences in float64 reach {} (theory {}); complex step {}",
                _e(_f(s, "exp_central_float64_min_error")), _e(_f(s, "theory_central_float64_error")),
                _e(_f(s, "exp_complex_step_error")))


# --- Integrals -------------------------------------------------------------------------------

def _int_theory(s):
    n = _f(s, "error_panels")
    if n is None:
        return None, None
    h = math.pi / n  # ∫_0^π sin: trapezoid error ≈ h²/12·|f'(π) − f'(0)| = h²/6, Simpson's ≈ h⁴/180·|f'''(π) − f'''(0)|
    return h**2 / 6, h**4 / 90


def _integrals_prose(s, results):
    idea = ("An integral accumulates f over an interval; a quadrature rule replaces it by a weighted sum of samples. "
            "The trapezoid rule's error shrinks as O(h²) with the panel width h, Simpson's rule's as O(h⁴); "
            "Gauss–Legendre with n nodes is exact for polynomials up to degree 2n − 1; Monte Carlo, the mean of f "
            "at random points times the interval's length, converges as 1/√n whatever the dimension. jaxcalc's "
            "rules are JAX functions, so they differentiate: d/dx ∫₀ˣ f(t) dt = f(x), the fundamental theorem of "
            "calculus, holds through `jax.grad`.")
    trap, simp = _int_theory(s)
    found = _para(
        _say("On ∫₀^π sin x dx = 2 the measured convergence orders are {} for the trapezoid rule and {} for "
             "Simpson's (theory 2 and 4).", _g(_f(s, "trapezoid_order")), _g(_f(s, "simpson_order"))),
        _say("With {} panels their errors are {} and {}, where the leading error terms, h²/6 and h⁴/90 for "
             "h = π/{}, predict {} and {}.", _g(_f(s, "error_panels")), _e(_f(s, "trapezoid_error_n64")),
             _e(_f(s, "simpson_error_n64")), _g(_f(s, "error_panels")), _e(trap), _e(simp)),
        _say("Gauss–Legendre with 5 nodes integrates eˣ over [−1, 1] to {} of e − 1/e.",
             _e(_f(s, "gauss_legendre_exp_error_n5"))),
        _say("Monte Carlo's error falls with order {} (theory ½), and `jax.grad` of Simpson's rule in its upper "
             "limit returns cos x to {}.", _g(_f(s, "monte_carlo_order")), _e(_f(s, "ftc_max_error"))))
    return [idea, found]


def _integrals_table(s, results):
    trap, simp = _int_theory(s)
    n = _g(_f(s, "error_panels"))
    rows = [["trapezoid rule: convergence order", _g(_f(s, "trapezoid_order")), "2"],
            ["Simpson's rule: convergence order", _g(_f(s, "simpson_order")), "4"],
            [_say("trapezoid rule: error with {} panels", n), _e(_f(s, "trapezoid_error_n64")),
             _say("{} (h²/6)", _e(trap))],
            [_say("Simpson's rule: error with {} panels", n), _e(_f(s, "simpson_error_n64")),
             _say("{} (h⁴/90)", _e(simp))],
            ["Gauss–Legendre, 5 nodes: error on ∫₋₁¹ eˣ", _e(_f(s, "gauss_legendre_exp_error_n5")),
             "3e-10 to 2.2e-9 (remainder term)"],
            ["Monte Carlo: convergence order", _g(_f(s, "monte_carlo_order")), "0.5"],
            ["d/dx of Simpson's ∫₀ˣ cos, largest error against cos x", _e(_f(s, "ftc_max_error")), "O(h⁴)"]]
    return ["quantity", "measured", "theory"], [r for r in rows if r[0] and r[1] is not None]


def _integrals_headline(s):
    return _say("convergence orders {} (trapezoid, theory 2), {} (Simpson, theory 4), {} (Monte Carlo, theory 0.5)",
                _g(_f(s, "trapezoid_order")), _g(_f(s, "simpson_order")), _g(_f(s, "monte_carlo_order")))


# --- Batch gradient descent (experiment `linear`) ------------------------------------------------

def _batch_prose(s, results):
    idea = ("Gradient descent moves the parameters against the gradient, θ ← θ − η ∇L(θ); batch gradient descent "
            "takes ∇L over the whole training set at every step. For linear regression L(w, b) = mean((w·x + b − "
            "y)²) is a quadratic with a constant Hessian H: with η = 1/λ_max(H) every direction shrinks, the "
            "slowest by the factor 1 − λ_min/λ_max per step, so the condition number κ = λ_max/λ_min sets the "
            "pace.")
    found = _para(
        _say("The article's example 1, run as printed, ends at w = {}, b = {} instead of w = 2, b = 0: X has shape "
             "(3, 1) and y shape (3,), so `w * X + b - y` is a 3 × 3 grid comparing every prediction with every "
             "target, and the best fit to that grid is the constant 4.", _e(_f(s, "seed_as_written_w")),
             _g(_f(s, "seed_as_written_b"))),
        _say("jaxcalc refuses that subtraction; with the shapes right, the same learning rate and iterations give "
             "w = {}, b = {}.", _g(_f(s, "w"), 4), _g(_f(s, "b"), 2)),
        _say("On scikit-learn's diabetes data ({} patients, {} standardised features; κ = {}), batch gradient "
             "descent at η = 1/λ_max ends {} (relative distance ‖θ − θ*‖/‖θ*‖) from the closed-form least-squares "
             "solution of `jnp.linalg.lstsq`, and its loss follows the exact theory for a quadratic step for step "
             "until float32 rounding.", _g(_f(s, "diabetes_examples")), _g(_f(s, "diabetes_features")),
             _g(_f(s, "hessian_condition_number"), 3), _e(_f(s, "rel_diff_to_lstsq", "batch"))))
    return [idea, found]


def _batch_table(s, results):
    rows = [["w", _g(_f(s, "seed_as_written_w")), _g(_f(s, "w"), 4), "2"],
            ["b", _g(_f(s, "seed_as_written_b"), 4), _g(_f(s, "b"), 3), "0"]]
    return ["parameter", "article's code as printed", "jaxcalc, shapes checked", "truth"], rows


def _batch_headline(s):
    return _say("example 1 as printed: w = {}, b = {}; shape-checked: w = {}, b = {}; diabetes batch GD {} from "
                "least squares", _e(_f(s, "seed_as_written_w")), _g(_f(s, "seed_as_written_b")), _g(_f(s, "w"), 4),
                _g(_f(s, "b"), 2), _e(_f(s, "rel_diff_to_lstsq", "batch")))


# --- Stochastic and mini-batch gradient descent (experiment `linear`) ---------------------------

_METHODS = {"batch": "batch gradient descent", "sgd": "SGD", "minibatch": "mini-batch descent"}


def _sgd_prose(s, results):
    size = _g(_f(s, "examples_per_step", "minibatch"))
    idea = _para(
        "Stochastic gradient descent estimates the gradient from one example per step, mini-batch descent from a "
        "small batch" + (f" (here {size} examples)" if size else "") + ": each step is cheap, but its gradient is "
        "noisy even at the optimum, so with a constant learning rate the parameters hover at a distance that "
        "grows with η; decaying η lets them settle. The three methods are one function, "
        "`jaxcalc.train.fit(..., method=\"batch\" | \"sgd\" | \"minibatch\")`, each epoch one compiled `lax.scan`.")
    rel = _get(s, "rel_diff_to_lstsq") or {}
    parts = [f"{_METHODS.get(k, k)} {_e(float(v))}" for k, v in rel.items() if isinstance(v, (int, float))]
    finals = [v for v in (_get(s, "diabetes_final_loss") or {}).values() if isinstance(v, (int, float))]
    optimum = _f(s, "lstsq_mse")
    excess = (max(finals) - optimum) / optimum if finals and optimum else None
    found = _para(
        _say("On the diabetes data all three end within {} of the least-squares solution ({}; relative distance "
             "‖θ − θ*‖/‖θ*‖), their mean squared errors within {} of the optimum's {}.",
             _e(_f(s, "max_rel_diff_to_lstsq")), "; ".join(parts) or None,
             ("float32 rounding" if excess is not None and excess < 1e-6 else _e(excess)), _g(optimum, 5)),
        _say("On a synthetic set with known coefficients ({} examples, {} features, noise σ = {}), mini-batch "
             "descent recovers them to {} ({} standard errors at worst, where about 4 would flag a real "
             "difference).", _g(_f(s, "synthetic_n")), _g(_f(s, "synthetic_d")), _g(_f(s, "synthetic_noise")),
             _e(_f(s, "synthetic_max_abs_err")), _g(_f(s, "synthetic_max_z"), 2)))
    return [idea, found]


def _sgd_table(s, results):
    rows = []
    for k, name in _METHODS.items():
        if _f(s, "rel_diff_to_lstsq", k) is None:
            continue
        rows.append([name, _g(_f(s, "examples_per_step", k)), _g(_f(s, "epochs", k)),
                     _g(_f(s, "diabetes_final_loss", k), 6), _e(_f(s, "rel_diff_to_lstsq", k))])
    if _f(s, "lstsq_mse") is not None:
        rows.append(["least squares, closed form (`jnp.linalg.lstsq`)", "all", "–", _g(_f(s, "lstsq_mse"), 6), "0"])
    return (["method", "examples per step", "epochs", "final MSE", "distance to least squares"], rows) if rows \
        else None


def _sgd_headline(s):
    rel = _get(s, "rel_diff_to_lstsq") or {}
    return _say("batch, SGD and mini-batch within {} of least squares ({})", _e(_f(s, "max_rel_diff_to_lstsq")),
                ", ".join(f"{_METHODS.get(k, k)} {_e(float(v))}" for k, v in rel.items()
                          if isinstance(v, (int, float))) or None)


# --- Backpropagation (experiment `mlp`) ------------------------------------------------------

def _backprop_prose(s, results):
    idea = ("Backpropagation is the chain rule applied layer by layer, from the loss back to the input. For a "
            "layer z = W·h + b, h' = σ(z), the backward pass turns the gradient arriving at h' into "
            "δ = ∂L/∂z = σ'(z) ⊙ ∂L/∂h', then ∂L/∂W = δ·hᵀ, ∂L/∂b = δ and ∂L/∂h = Wᵀ·δ for the layer below. "
            "jaxcalc writes that pass by hand (`jaxcalc.backprop`) and holds it against `jax.grad`.")
    rel = _f(s, "backprop_vs_autodiff_max_rel_diff")
    seeds = _g(_f(s, "article_seeds")) or (str(len(_get(s, "seed_final_losses"))) if _get(s, "seed_final_losses")
                                           else None)
    found = _para(
        _say("In float64 the hand-written gradients equal `jax.grad`'s {}, and training the article's example 2 "
             "with them follows the same trajectory (largest parameter difference {}).",
             ("bit for bit" if rel == 0 else f"to a relative difference of {_e(rel)}") if rel is not None else None,
             _e(_f(s, "trajectory_max_param_diff"))),
        _say("The article's network (2 → 10 → 10 → 1, {} parameters) trained as printed, Adam at lr {} for {} "
             "epochs, does not fit its two points on every initialisation: over {} seeds the final MSE has median "
             "{} and worst {}. At lr {} every seed reaches {} or less.", _g(_f(s, "article_param_count")),
             _g(_f(s, "article_lr")), _g(_f(s, "article_epochs")), seeds, _g(_f(s, "seed_final_loss"), 2),
             _g(_f(s, "seed_final_loss_max"), 2), _g(_f(s, "article_tuned_lr")), _e(_f(s, "tuned_final_loss_max"))),
        _say("Across depth, the chain rule multiplies by Wᵀ·diag(σ'(z)) per layer: in a {}-layer sigmoid network "
             "with Glorot weights, σ' ≤ ¼ shrinks the first layer's gradient to {} of the last layer's (theory "
             "about (¼)^{} = {}); with N(0, 1) weights the larger ‖W‖ nearly cancels it ({}), and ReLU with He "
             "weights keeps every layer within a factor {}.", _g(_f(s, "gradnorm_layers")),
             _e(_f(s, "gradnorm_sigmoid_glorot_first_over_last")),
             _g((_f(s, "gradnorm_layers") or 0) - 1) if _f(s, "gradnorm_layers") else None,
             _e(0.25 ** (_f(s, "gradnorm_layers") - 1)) if _f(s, "gradnorm_layers") else None,
             _g(_f(s, "gradnorm_sigmoid_first_over_last"), 2), _g(_f(s, "gradnorm_relu_he_max_over_min"), 2)))
    return [idea, found]


def _backprop_table(s, results):
    layers = _f(s, "gradnorm_layers")
    rows = [["hand-written gradients vs `jax.grad` (float64), largest relative difference",
             _e(_f(s, "backprop_vs_autodiff_max_rel_diff")), "0 up to float64 rounding"],
            ["per-layer `jax.vjp` vs `jax.grad` (float64), largest relative difference",
             _e(_f(s, "vjp_vs_autodiff_max_rel_diff")), "0 up to float64 rounding"],
            ["example 2 trained with the hand-written pass: largest parameter difference",
             _e(_f(s, "trajectory_max_param_diff")), "0 up to float32 rounding"],
            [_say("example 2 at lr {}: final MSE, median over seeds (worst)", _g(_f(s, "article_lr"))),
             _say("{} ({})", _g(_f(s, "seed_final_loss"), 2), _g(_f(s, "seed_final_loss_max"), 2)),
             "0 (two points, an exact fit exists)"],
            [_say("example 2 at lr {}: worst final MSE", _g(_f(s, "article_tuned_lr"))),
             _e(_f(s, "tuned_final_loss_max")), "0"],
            ["gradient norm, first over last layer: sigmoid, Glorot init",
             _e(_f(s, "gradnorm_sigmoid_glorot_first_over_last")),
             _say("about {} ((¼)^(layers − 1))", _e(0.25 ** (layers - 1)) if layers else None)],
            ["gradient norm, first over last layer: sigmoid, N(0, 1) init",
             _g(_f(s, "gradnorm_sigmoid_first_over_last"), 2), "–"],
            ["gradient norm, largest over smallest layer: ReLU, He init",
             _g(_f(s, "gradnorm_relu_he_max_over_min"), 2), "about 1"]]
    return ["quantity", "measured", "reference"], [r for r in rows if r[0] and r[1]]


def _backprop_headline(s):
    return _say("hand-written backward pass vs jax.grad: {}; example 2 worst final MSE {} (lr {}), {} (lr {})",
                _e(_f(s, "backprop_vs_autodiff_max_rel_diff")), _g(_f(s, "seed_final_loss_max"), 2),
                _g(_f(s, "article_lr")), _e(_f(s, "tuned_final_loss_max")), _g(_f(s, "article_tuned_lr")))


# --- A network on real data (experiment `mlp`) -----------------------------------------------

def _mlp_data_prose(s, results):
    sizes = _get(s, "digits_sizes")
    arch = " → ".join(str(v) for v in sizes) if isinstance(sizes, list) and sizes else None
    idea = ("The same forward and backward passes train networks on real data inside `jaxcalc.train.fit`: "
            "mini-batches of images, Adam, one compiled `lax.scan` per epoch. The flax NNX twin of the network "
            "starts from the same weights and crosses into pure JAX once, with `nnx.split` / `nnx.merge`.")
    found = _para(
        _say("On scikit-learn's 8 × 8 digits ({} training, {} test images), the MLP {} trained with the hand-written "
             "backward pass for {} epochs reaches {} test accuracy ({} on the training images); the NNX twin "
             "reaches {}.", _g(_f(s, "digits_n_train")), _g(_f(s, "digits_n_test")), arch,
             _g(_f(s, "digits_epochs")), _pct(_f(s, "digits_test_accuracy")), _pct(_f(s, "digits_train_accuracy")),
             _pct(_f(s, "nnx_digits_test_accuracy"))),
        _say("On the diabetes regression data (354 training patients) the MLP's test R² is {} against {} for "
             "linear least squares: on a small, nearly linear problem the straight line is hard to beat.",
             _g(_f(s, "diabetes_mlp_test_r2"), 2), _g(_f(s, "diabetes_linear_test_r2"), 2)))
    return [idea, found]


def _mlp_data_table(s, results):
    cnn = results.get("cnn") or {}
    rows = [["digits", "MLP, hand-written backward pass", "test accuracy", _pct(_f(s, "digits_test_accuracy"))],
            ["digits", "the same MLP in flax NNX (same initial weights)", "test accuracy",
             _pct(_f(s, "nnx_digits_test_accuracy"))]]
    if cnn.get("dataset") == "digits":
        rows.append(["digits", "the article's CNN (Image recognition, below)", "test accuracy",
                     _pct(_f(cnn, "test_accuracy"))])
    rows += [["diabetes", "MLP", "test R²", _g(_f(s, "diabetes_mlp_test_r2"), 3)],
             ["diabetes", "linear least squares (closed form)", "test R²", _g(_f(s, "diabetes_linear_test_r2"), 3)]]
    return ["data", "model", "metric", "value"], [r for r in rows if r[3] is not None]


def _mlp_data_headline(s):
    return _say("digits test accuracy {}; diabetes test R² {} (MLP) vs {} (linear)",
                _pct(_f(s, "digits_test_accuracy")), _g(_f(s, "diabetes_mlp_test_r2"), 2),
                _g(_f(s, "diabetes_linear_test_r2"), 2))


# --- Numerical stability ---------------------------------------------------------------------

def _stability_cases():
    try:
        from experiments.stability import CASES
    except ImportError:  # pragma: no cover - the experiment ships with this module
        return []
    return [(c.name, c.formula) for c in CASES]


def _stability_prose(s, results):
    dtype = _get(s, "dtype") or "float32"
    idea = (f"Floating-point numbers have a largest value: in {dtype}, exp(s) overflows once s exceeds "
            f"log(max) = {_g(_f(s, 'theory_exp_overflow'), 4) or '88.72'}. Written as printed, "
            "softmax(z)ᵢ = exp(zᵢ) / Σⱼ exp(zⱼ) then returns NaN, its logarithm −inf, and log(1 + eˢ) inf. The "
            "stable forms subtract max(z) first (softmax does not change under a shift), take log-softmax as "
            "z − logsumexp(z) and log(1 + eˢ) as softplus, so they never exponentiate a positive number.")
    cases = dict(_stability_cases())
    firsts = {n: _f(s, f"{n}_naive_first_nonfinite") for n in cases}
    stable = [v for n in cases if (v := _f(s, f"{n}_stable_max_rel_error")) is not None]
    finite = all(_get(s, f"{n}_stable_all_finite") is not False for n in cases)
    found = _para(
        _say("Measured in {}: naive softmax([s, 0]) first fails at s = {}, naive log(softmax) at {} and naive "
             "log(1 + eˢ) at {}, against the theory's {} (exp overflows) and {} (the smallest normal number, below "
             "which XLA on CPU flushes to zero).", dtype, _g(firsts.get("softmax_large"), 5),
             _g(firsts.get("log_softmax_large"), 5), _g(firsts.get("log1p_exp"), 5),
             _g(_f(s, "theory_exp_overflow"), 4), _g(_f(s, "theory_exp_underflow_normal"), 4)),
        _say("The stable forms stay finite over the whole sweep (s from 0 to {}), within {} of the float64 "
             "reference.", _g(_f(s, "s_max")) if finite else None, _e(max(stable)) if stable else None),
        _say("log(1 + e⁻ˢ) never overflows but loses its precision instead: its error passes 1% from s = {}, "
             "where 1 + e⁻ˢ has rounded to 1.", _g(_f(s, "log1p_exp_negative_naive_first_rel_error_1pct"), 3)))
    return [idea, found]


def _stability_table(s, results):
    def at(v):
        return "never" if v is None else _g(v, 5)

    rows = []
    for name, formula in _stability_cases():
        if f"{name}_stable_max_rel_error" not in s:
            continue
        rows.append([formula, at(_f(s, f"{name}_naive_first_nonfinite")),
                     at(_f(s, f"{name}_naive_grad_first_nonfinite")),
                     at(_f(s, f"{name}_naive_first_rel_error_1pct")), _e(_f(s, f"{name}_stable_max_rel_error"))])
    dtype = _get(s, "dtype") or "float32"
    return ([f"computed ({dtype}), input s", "naive form: first inf/NaN at s =", "naive gradient: first inf/NaN",
             "naive error > 1% from s =", "stable form: worst relative error"], rows) if rows else None


def _stability_headline(s):
    return _say("naive softmax fails at s = {}, log(1 + eˢ) at {} (exp overflows at {}); stable forms finite",
                _g(_f(s, "softmax_large_naive_first_nonfinite"), 5), _g(_f(s, "log1p_exp_naive_first_nonfinite"), 5),
                _g(_f(s, "theory_exp_overflow"), 4))


# --- Convergence and optimizers ----------------------------------------------------------------

_OPT_NAMES = {"gd": "gradient descent", "momentum": "momentum", "nesterov": "Nesterov", "rmsprop": "RMSProp",
              "adam": "Adam"}
_PROBLEMS = {"quadratic": "ill-conditioned quadratic", "rosenbrock": "Rosenbrock", "logistic": "logistic regression"}
_ON_PROBLEM = {"quadratic": "the ill-conditioned quadratic", "rosenbrock": "Rosenbrock's function",
               "logistic": "the logistic regression (breast-cancer data)"}


def _fastest(s, problem):
    steps = _get(s, "steps_to_tol", problem) or {}
    done = [(v, k) for k, v in steps.items() if isinstance(v, (int, float))]
    return min(done) if done else None


def _optimizers_prose(s, results):
    idea = ("Gradient descent is as fast as its worst-conditioned direction allows: on a quadratic whose Hessian has "
            "eigenvalues λ, a step η is stable only while η < 2/λ_max, and the directions with small λ then crawl. "
            "Momentum (v ← βv + g, θ ← θ − ηv) carries speed along those directions, Nesterov takes the gradient "
            "at the look-ahead point, RMSProp divides each coordinate by a running root-mean-square of its "
            "gradients, and Adam combines both with bias correction. jaxcalc writes each from scratch as an "
            "optax `GradientTransformation`, tested step by step against optax's own.")
    tol = _e(_f(s, "tol"), 0) or "the tolerated"
    sentences = [
        _say("On a {}-dimensional quadratic with condition number {} (λ_max = {}), the largest learning rate at "
             "which gradient descent stays stable is measured at {}, {} times the theory's 2/λ_max = {}.",
             _g(_f(s, "dim")), _g(_f(s, "condition")), _g(_f(s, "quadratic_lambda_max"), 4),
             _g(_f(s, "lr_max_measured"), 5), _g(_f(s, "lr_max_measured_over_theory"), 4),
             _g(_f(s, "lr_max_theory"), 5))]
    for problem in _PROBLEMS:
        best = _fastest(s, problem)
        gd = _get(s, "steps_to_tol", problem, "gd")
        budget = _g(_f(s, "steps_budget", problem))
        if best is None:
            continue
        gd_text = ("" if best[1] == "gd" or "gd" not in (_get(s, "steps_to_tol", problem) or {}) else
                   f", against {gd} for gradient descent" if isinstance(gd, (int, float)) else
                   _say(", while gradient descent does not get there within {} steps", budget))
        sentences.append(_say("On {} the fastest to a {} relative gap is {} ({} steps at its best grid learning "
                              "rate{}).", _ON_PROBLEM[problem], tol, _OPT_NAMES.get(best[1], best[1]), best[0],
                              gd_text))
    steps = _get(s, "steps_to_tol") or {}
    never = [o for o in _OPT_NAMES if any(o in steps.get(p, {}) for p in _PROBLEMS)
             and all(not isinstance(steps.get(p, {}).get(o, 0), (int, float)) for p in _PROBLEMS)]
    if never:
        sentences.append(f"{' and '.join(_OPT_NAMES[o] for o in never)} reach{'es' if len(never) == 1 else ''} "
                         "that gap on none of the three problems within the step budget.")
    sentences.append(_say("The learning-rate range test (`jaxcalc.train.lr_find`) on the logistic regression "
                          "suggests {}.", _g(_f(s, "lr_find_suggested_lr"), 2)))
    return [idea, _para(*sentences)]


def _optimizers_table(s, results):
    steps, lrs = _get(s, "steps_to_tol") or {}, _get(s, "best_lr") or {}
    problems = [p for p in _PROBLEMS if p in steps]
    names = list(dict.fromkeys(o for p in problems for o in steps[p]))
    if not problems:
        return None
    rows = []
    for o in names:
        row = [_OPT_NAMES.get(o, o)]
        for p in problems:
            n, lr = _get(steps, p, o), _f(lrs, p, o)
            budget = _g(_f(s, "steps_budget", p))
            row.append(f"{n} at lr {_g(lr, 2)}" if isinstance(n, (int, float)) else
                       (f"not within {budget} steps" if budget else "not reached") + _say(" (best lr {})", _g(lr, 2)))
        rows.append(row)
    tol = _e(_f(s, "tol"), 0)
    return ["optimizer"] + [f"{_PROBLEMS[p]}: steps to " + (f"a {tol} gap" if tol else "the tolerance")
                            for p in problems], rows


def _optimizers_headline(s):
    return _say("largest stable GD learning rate {} × the theory 2/λ_max; lr_find suggests {}",
                _g(_f(s, "lr_max_measured_over_theory"), 4), _g(_f(s, "lr_find_suggested_lr"), 2))


# --- Image recognition (experiment `cnn`) ------------------------------------------------------

_DATASETS = {"digits": "scikit-learn's 8 × 8 digits", "cifar10": "CIFAR-10", "cifar-10": "CIFAR-10"}


def _cnn_prose(s, results):
    idea = ("A convolutional network slides small learned filters over the image (each output pixel is a weighted "
            "sum of a 3 × 3 neighbourhood), keeps the strongest response of each 2 × 2 window (max-pooling) and "
            "ends in dense layers that output one logit per class; its gradient is the chain rule again, through "
            "the convolution as through a matrix product. The article's network is Conv2D(32, 3, relu) → "
            "MaxPooling → Flatten → Dense(64, relu) → Dropout(0.5) → Dense(10), compiled with "
            "`categorical_crossentropy`, which expects probabilities, on a last layer that outputs logits; jaxcalc "
            "trains the same network (flax NNX) on the logits with cross-entropy log Σⱼ exp(zⱼ) − z_y.")
    dataset = _get(s, "dataset")
    shape = _get(s, "image_shape")
    shape_text = " × ".join(str(v) for v in shape) if isinstance(shape, list) and shape else None
    mlp = results.get("mlp") or {}
    found = _para(
        _say("Trained on {} ({} training and {} test images of {}) for {} epochs, its {} parameters reach {} test "
             "accuracy ({} on the training images).",
             _DATASETS.get(dataset, f"`{dataset}`") if dataset else None, _g(_f(s, "train_images")),
             _g(_f(s, "test_images")), shape_text, _g(_f(s, "epochs")), _g(_f(s, "param_count"), 6),
             _pct(_f(s, "test_accuracy")), _pct(_f(s, "train_accuracy"))),
        _say("On the same digits the fully connected network of \"A neural network on real data\" reaches {}.",
             _pct(_f(mlp, "digits_test_accuracy")) if dataset == "digits" else None),
        _say("Training runs at {} images per second on {} after {} s of compilation.",
             _g(_f(s, "train_images_per_second"), 3), _get(s, "device"), _g(_f(s, "compile_seconds"), 2)))
    return [idea, found]


def _cnn_table(s, results):
    dataset = _get(s, "dataset")
    shape = _get(s, "image_shape")
    rows = [["data set", _DATASETS.get(dataset, dataset) if dataset else None],
            ["training / test images", _say("{} / {}", _g(_f(s, "train_images")), _g(_f(s, "test_images")))],
            ["image (height × width × channels)", " × ".join(map(str, shape)) if isinstance(shape, list) else None],
            ["epochs", _g(_f(s, "epochs"))],
            ["parameters", _g(_f(s, "param_count"), 7)],
            ["test accuracy", _pct(_f(s, "test_accuracy"))],
            ["training accuracy", _pct(_f(s, "train_accuracy"))],
            ["test loss (cross-entropy)", _g(_f(s, "test_loss"), 3)],
            ["training speed (images per second)", _g(_f(s, "train_images_per_second"), 3)],
            ["compilation (seconds)", _g(_f(s, "compile_seconds"), 2)]]
    return ["quantity", "value"], [r for r in rows if r[1]]


def _cnn_headline(s):
    return _say("{} epochs on {}: test accuracy {}", _g(_f(s, "epochs")), _get(s, "dataset"),
                _pct(_f(s, "test_accuracy")))


# --- Recommendation (experiment `recommender`) -------------------------------------------------

_FIT_METHODS = {
    "bpmf": "Bayesian matrix factorization (a Gibbs sampler over the factors, the biases and their Normal-Wishart "
            "priors, Salakhutdinov & Mnih 2008; the prediction is the mean over the draws after the burn-in)",
    "als": "alternating least squares (each sweep solves exactly for the user factors with the item factors "
           "fixed, then the other way round; no learning rate)",
    "sgd": "per-rating stochastic gradient descent",
    "minibatch": "mini-batch gradient descent (Adam)",
    "fullbatch": "full-batch gradient descent (Adam)",
}


def _method_text(s) -> str | None:
    method = _get(s, "method")
    if not method:
        return None
    return _FIT_METHODS.get(method, f"`{method}`")


def _users(s):
    data = _get(s, "data") or ""
    m = re.match(r"synthetic (\d+)x", data)
    return int(m.group(1)) if m else None


def _recommender_prose(s, results):
    idea = ("A recommender predicts the rating user u would give item i from a few learned numbers: "
            "r̂ᵤᵢ = μ + bᵤ + bᵢ + pᵤ·qᵢ, a global mean, a bias per user and per item, and k-dimensional factor "
            "vectors whose dot product captures taste. The parameters minimise the squared error on the observed "
            "ratings plus an L2 penalty λ(‖pᵤ‖² + ‖qᵢ‖² + bᵤ² + bᵢ²): a loss with a gradient like any other, and "
            "for fixed item factors a least-squares problem in the user factors.")
    if _get(s, "method") == "bpmf":
        idea += (" The Bayesian reading of the same model takes that penalty as a Gaussian prior, learns the "
                 "prior's mean and precision from the data instead of choosing λ, and predicts with the posterior "
                 "mean, averaged over samples of every parameter.")
    ratio = _f(s, "rmse_over_noise_floor")
    found = _para(
        _say("Fitted by {} with {} factors (data: {}), the model predicts the held-out ratings with RMSE {}, "
             "against {} for the biases alone and {} for the global mean.", _method_text(s), _g(_f(s, "factors")),
             _get(s, "data"), _g(_f(s, "test_rmse"), 3), _g(_f(s, "bias_only_rmse"), 3),
             _g(_f(s, "global_mean_rmse"), 3)),
        _say("The synthetic ratings' own noise puts a floor at RMSE {}, so the model is {} above the best any "
             "predictor can do.", _g(_f(s, "noise_floor_rmse"), 3),
             _pct(ratio - 1, 0) if ratio is not None else None),
        _say("With {} training ratings, about {} per user, the factors cannot be told from the noise and add "
             "nothing the biases do not, as expected on a set this small (the full-size synthetic set, about 80,000 "
             "training ratings, and MovieLens show the factors' gain).", _g(_f(s, "train_ratings")),
             _g(_f(s, "train_ratings") / _users(s), 2) if _f(s, "train_ratings") and _users(s) else None)
        if _f(s, "test_rmse") is not None and _f(s, "bias_only_rmse") is not None
        and _f(s, "test_rmse") >= _f(s, "bias_only_rmse") else "",
        _say("Among the 10 unrated items it ranks first for each test user, {} are ones the user rated 4 or more "
             "(precision@10), and they cover {} of those items (recall@10).", _pct(_f(s, "precision_at_10")),
             _pct(_f(s, "recall_at_10"))))
    return [idea, found]


def _recommender_table(s, results):
    rows = [["global mean μ", _g(_f(s, "global_mean_rmse"), 4)],
            ["biases only, μ + bᵤ + bᵢ", _g(_f(s, "bias_only_rmse"), 4)],
            [_say("matrix factorization, {} factors ({})", _g(_f(s, "factors")), _get(s, "method")),
             _g(_f(s, "test_rmse"), 4)],
            ["noise floor (the true expected ratings)", _g(_f(s, "noise_floor_rmse"), 4)]]
    return ["predictor", "test RMSE (stars)"], [r for r in rows if r[0] and r[1]]


def _recommender_headline(s):
    return _say("{}: test RMSE {} vs {} (biases only), noise floor {}", _get(s, "method"),
                _g(_f(s, "test_rmse"), 3), _g(_f(s, "bias_only_rmse"), 3), _g(_f(s, "noise_floor_rmse"), 3))


# --- Diagnosis (experiment `diagnose`) --------------------------------------------------------


def _diagnose_prose(s, results):
    idea = ("A gradient that is NaN, or a loss that loses its digits in float32, is a property of one line of the "
            "program. jaxcalc.diagnose traces the loss and its gradient to jaxprs and evaluates them equation by "
            "equation beside a float64 shadow of every value, so it can name that line: where a NaN or inf first "
            "appears from finite inputs, where jnp.where discards a NaN whose derivative then meets a zero "
            "cotangent (0 · inf = NaN, the where-trap), which `custom_jvp` or `custom_vjp` rule disagrees with float64 "
            "central differences of its own function, and which operation y = op(x) loses digits by itself: its "
            "local error, bits = log₂(1 + |op₃₂(round₃₂(x)) − op₆₄(x)| / ulp₃₂), with x the exact (float64) "
            "inputs, is 0 for a correctly rounded operation and 24 when all of float32's significand is gone.")
    rows = _get(s, "defects") or []
    healthy = _get(s, "healthy") or []
    bits = {r.get("defect"): r.get("value") for r in rows if r.get("expected_kind") == "precision_loss"}
    fix_bits = [r.get("fix_max_local_bits") for r in rows if r.get("expected_kind") == "precision_loss"]
    found = _para(
        _say("Of the {} classic defects planted in small losses (the where-trap, a naive softmax, log(1 + x) and "
             "(1 − cos x)/x² at small x, a `custom_vjp` rule 1% off, sqrt and a norm at 0), {} are reported with the "
             "expected kind at exactly the marked line.", len(rows) or None,
             sum(bool(r.get("found")) for r in rows) if rows else None),
        _say("log(1 + x) at x ≈ 1e-5 costs the log {} bits and (1 − cos x)/x² at x ≈ 1e-3 costs the subtraction "
             "{} bits.", _g(bits.get("log(1 + x)"), 3), _g(bits.get("(1 − cos x)/x²"), 3)),
        _say("Their fixes, log1p(x) and 2 sin²(x/2)/x², lose at most {} bits in any equation.",
             _g(max(fix_bits), 2) if fix_bits and None not in fix_bits else None),
        _say("Each textbook fix diagnoses clean{}.", "" if _get(s, "fixes_clean") else None),
        _say("jaxcalc's own {} losses and models at ordinary inputs (linear regression, an MLP, the CNN with its "
             "fused convolution, ReLU and max-pool rule, the recommender) raise no finding: none loses more than "
             "{} bits end to end, and every custom rule in them agrees with finite differences.",
             len(healthy) or None,
             _g(max((max(h.get("value_bits_lost") or 0, h.get("grad_bits_lost") or 0) for h in healthy),
                    default=None), 2) if _get(s, "healthy_clean") else None))
    return [idea, found]


def _diagnose_table(s, results):
    rows = [[r.get("description"), f"`{r.get('expected_kind')}` at {r.get('expected_line')}",
             f"`{r.get('reported_kind')}` at {r.get('reported_line')}" if r.get("reported_kind") else "nothing",
             r.get("number"), "yes" if r.get("found") else "NO"]
            for r in _get(s, "defects") or []]
    return (["planted defect", "expected", "reported", "size", "found"], rows) if rows else None


def _diagnose_headline(s):
    return _say("{} planted defects found at their lines; healthy losses and models clean: {}",
                _get(s, "defects_found"), "yes" if _get(s, "healthy_clean") else None)


SECTIONS = (
    Section("Losses", "gradients", _losses_prose,
            figures=(("losses.png", "Each loss (solid) and its derivative (dashed), from jaxcalc.losses and "
                                    "jax.grad: left over the error ŷ − y, right over the logit z."),),
            table=_losses_table),
    Section("Gradient checks", "gradients", _gradcheck_prose,
            figures=(("gradient_checks.png", "Worst relative error of each check (bars, log scale) against its "
                                             "tolerance (ticks)."),),
            table=_gradcheck_table, headline=_gradcheck_headline),
    Section("Derivatives and finite differences", "finite-differences", _fd_prose,
            figures=(("error_vs_step.png", "Relative error against the step h: forward (blue) and central (orange) "
                                           "differences in float32 (dashed) and float64 (solid), the complex step "
                                           "(green); dotted verticals mark the theory's best h."),),
            table=_fd_table, headline=_fd_headline),
    Section("Integrals", "integrals", _integrals_prose,
            figures=(("convergence.png", "Left: quadrature error on ∫₀^π sin against the panel count, beside "
                                         "slopes −2 and −4. Right: Monte Carlo's error against the sample "
                                         "count, beside slope −½."),),
            table=_integrals_table, headline=_integrals_headline),
    Section("Batch gradient descent", "linear", _batch_prose,
            figures=(("article_example_1.png", "The article's example 1: the fit as printed (broadcast to 3 × 3) "
                                               "and with the shapes checked."),
                     ("batch_gd.png", "Batch gradient descent on the diabetes data: the excess loss over least "
                                      "squares per step, beside the exact theory for a quadratic.")),
            table=_batch_table, headline=_batch_headline),
    Section("Stochastic and mini-batch gradient descent", "linear", _sgd_prose,
            figures=(("diabetes_loss.png", "Batch, stochastic and mini-batch descent on the diabetes data: the "
                                           "loss on all examples after each epoch against the least-squares "
                                           "optimum (left) and the excess over it (right, log scale)."),),
            table=_sgd_table, headline=_sgd_headline),
    Section("Backpropagation", "mlp", _backprop_prose,
            figures=(("loss_curves.png", "The article's example 2 over several initialisations: the loss per "
                                         "epoch at the article's learning rate and at a tuned one."),
                     ("grad_norms_per_layer.png", "Gradient norm per layer at initialisation of a deep network: "
                                                  "vanishing with sigmoid, kept with ReLU and He weights.")),
            table=_backprop_table, headline=_backprop_headline),
    Section("A neural network on real data", "mlp", _mlp_data_prose,
            figures=(("digits_loss.png", "The digits MLP: training and test loss per epoch, hand-written backward "
                                         "pass and the flax NNX twin."),),
            table=_mlp_data_table, headline=_mlp_data_headline),
    Section("Numerical stability", "stability", _stability_prose,
            figures=(("stability.png", "Relative error against float64 of each naive form (red; × where it returns "
                                       "inf or NaN) and its stable counterpart (blue), over the input s."),),
            table=_stability_table, headline=_stability_headline),
    Section("Convergence and optimizers", "optimizers", _optimizers_prose,
            figures=(("loss_vs_step.png", "Gap to the optimum per step, each optimizer at its best grid learning "
                                          "rate, on the three problems."),
                     ("rosenbrock_trajectories.png", "Paths through Rosenbrock's curved valley."),
                     ("lr_find_logistic.png", "The learning-rate range test on the logistic regression.")),
            table=_optimizers_table, headline=_optimizers_headline),
    Section("Image recognition", "cnn", _cnn_prose,
            figures=(("loss.png", "Training and test loss per epoch."),
                     ("accuracy.png", "Training and test accuracy per epoch."),
                     ("confusion_matrix.png", "Which classes the test images were taken for."),
                     ("test_predictions.png", "Test images with their predicted classes.")),
            table=_cnn_table, headline=_cnn_headline),
    Section("Recommendation", "recommender", _recommender_prose,
            figures=(("rmse.png", "Test RMSE of the fitted model beside the baselines and the noise floor."),
                     ("predicted_vs_true.png", "Predicted against held-out ratings.")),
            table=_recommender_table, headline=_recommender_headline),
    Section("Diagnosis: the line that breaks a gradient", "diagnose", _diagnose_prose,
            figures=(("local_error.png", "Local error per equation, in bits of float32's 24, for log(1 + x) and "
                                         "(1 − cos x)/x² at small x (red) and their fixes (blue)."),),
            table=_diagnose_table, headline=_diagnose_headline),
)

INTRO = ("This report runs the worked cases of the article “Mastering Machine Learning with Python”, on the calculus "
         "behind machine learning (loss functions, derivatives and integrals, gradient descent in its batch, "
         "stochastic and mini-batch forms, backpropagation, numerical stability and convergence, and their use in "
         "image recognition and recommendation), as experiments with jaxcalc. Each section states the idea with "
         "its formula, shows the figures, and reads the measured numbers beside the theory or a reference "
         "implementation. `jaxcalc run NAME` reruns one experiment; its `summary.json` holds every figure quoted.")


def experiment_names() -> list[str]:
    """The experiments `run all` runs, in report order."""
    return list(dict.fromkeys(s.experiment for s in SECTIONS))


# ------------------------------------------------------------------ running


def _run_one(name: str, quick: bool, seed: int, out_dir: Path):
    module = importlib.import_module(f"experiments.{name.replace('-', '_')}")
    overrides = dict(getattr(module, "QUICK", {})) if quick else {}
    if "seed" in {f.name for f in dataclasses.fields(module.Config)}:
        overrides["seed"] = seed
    config = module.Config(**overrides)
    return module.run(config, out_dir)


def section_headlines(name: str, summary: dict) -> list[tuple[str, str | None]]:
    """``(title, headline)`` of each report section of experiment ``name`` that has a headline;
    ``None`` where building it failed (a console line must never fail a finished run)."""
    out = []
    for section in SECTIONS:
        if section.experiment == name and section.headline is not None:
            text = None
            with contextlib.suppress(Exception):
                text = section.headline(summary)
            out.append((section.title, text))
    return out


def _headline(name: str, summary: dict) -> str:
    return next((text for _, text in section_headlines(name, summary) if text is not None), "")


def run(config: Config, out_dir) -> dict:
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "config.json", config)
    names = experiment_names()
    if config.only:
        names = [n for n in names if n in config.only]
    warm = cache_is_warm()
    estimates = {n: estimate_seconds(n, config.quick, warm) for n in names}
    expected = sum(t for t, _ in estimates.values()) + REPORT_SECONDS
    learned = sum(known for _, known in estimates.values())
    source = (f"from earlier runs on this machine ({learned} of {len(names)} experiments)" if learned else
              f"built-in figures for a 2-core CPU, {'warm' if warm else 'cold'} compilation cache")
    print(f"jaxcalc run all{' --quick' if config.quick else ''}: {len(names)} experiments, expected about "
          f"{format_seconds(expected)} ({source}); each experiment's output goes to {out_dir}/NAME/console.txt",
          file=sys.stderr, flush=True)

    results, timings, failures = {}, {}, {}
    bar = tqdm(total=len(names), desc="experiments", unit="exp", file=sys.stderr)
    for name in names:
        bar.set_postfix_str(f"{name} (about {format_seconds(estimates[name][0])})")
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            with (open(out_dir / name / "console.txt", "w") as log, contextlib.redirect_stdout(log),
                  contextlib.redirect_stderr(log)):  # the bar above holds the real stderr
                results[name] = _run_one(name, config.quick, config.seed, out_dir / name)
        except Exception as e:  # one failing experiment must not lose the others' results
            failures[name] = f"{type(e).__name__}: {e}"
            (out_dir / name / "error.txt").write_text(traceback.format_exc())
        timings[name] = time.perf_counter() - start
        if name not in failures:
            record_seconds(name, config.quick, warm, timings[name])
        with open(out_dir / "metrics.jsonl", "a") as f:
            ok = str(name not in failures).lower()
            f.write(f'{{"experiment": "{name}", "seconds": {timings[name]:.3f}, "ok": {ok}}}\n')
        line = (f"FAILED: {failures[name].splitlines()[0][:120]}" if name in failures
                else _headline(name, results[name]))
        bar.write(f"  {'✗' if name in failures else '✓'} {name:19s} {timings[name]:6.1f} s  {line}", file=sys.stderr)
        bar.update(1)
    bar.close()

    blocks = build_report(config, results, timings, failures)
    md, html_path = R.write_report(blocks, out_dir, title="jaxcalc: the calculus of machine learning")
    summary = {
        "experiments": names,
        "failed": sorted(failures),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "total_seconds": round(sum(timings.values()), 2),
        "expected_seconds": round(expected, 1),
        "report_md": md.name,
        "report_html": html_path.name,
        "summaries": results,
    }
    write_json_atomic(out_dir / "summary.json", summary)
    if failures:
        raise RuntimeError(f"{len(failures)} experiment(s) failed: {', '.join(failures)}; "
                           f"see {out_dir}/<name>/error.txt "
                           f"(the report was written to {md})")
    return {k: v for k, v in summary.items() if k != "summaries"}


# ------------------------------------------------------------------ the report


def section_figures(section: Section, summary: dict) -> list[tuple[str, str]]:
    """``(file, caption)`` of the figures ``section`` shows for ``summary`` (see :class:`Section`)."""
    plots = [p for p in (summary.get("plots") or []) if isinstance(p, str)]
    chosen = [(f, c) for f, c in section.figures if f in plots]
    if chosen:
        return chosen
    claimed = {f for s in SECTIONS if s.experiment == section.experiment for f, _ in s.figures}
    spare = [p for p in plots if p not in claimed] or plots
    return [(p, "") for p in spare]


def _safe(builder, s, results, what):
    try:
        return builder(s, results), None
    except Exception as e:  # a summary another version of the experiment wrote must not lose the report
        return None, f"(The {what} could not be built from this summary: {type(e).__name__}: {e}.)"


def build_report(config: Config, results: dict, timings: dict, failures: dict) -> list:
    import jax

    total = sum(timings.values())
    blocks = [("h1", "jaxcalc: the calculus of machine learning, run as experiments"),
              ("p", INTRO),
              ("p", f"This run: {'quick' if config.quick else 'full'} settings, seed {config.seed}; jax "
                    f"{jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)); "
                    f"{format_seconds(total)} in all."),
              ("table", ["experiment", "sections", "seconds", "status"],
               [[f"`jaxcalc run {name}`", "; ".join(s.title for s in SECTIONS if s.experiment == name),
                 round(seconds, 1), "FAILED" if name in failures else "ok"] for name, seconds in timings.items()])]
    for section in SECTIONS:
        name = section.experiment
        if name not in timings:
            continue
        blocks.append(("h2", section.title))
        if name in failures:
            blocks.append(("p", f"**FAILED:** `jaxcalc run {name}` raised {failures[name]}; see `{name}/error.txt`."))
            continue
        summary = results[name]
        paragraphs, problem = _safe(section.prose, summary, results, "text")
        for text in paragraphs or []:
            if text:
                blocks.append(("p", text))
        if problem:
            blocks.append(("p", problem))
        for file, caption in section_figures(section, summary):
            blocks.append(("img", f"{name}/{file}", caption or Path(file).stem.replace("_", " ")))
        if section.table is not None:
            table, problem = _safe(section.table, summary, results, "table")
            if table:
                blocks.append(("table", *table))
            if problem:
                blocks.append(("p", problem))
        blocks.append(("note", f"Experiment `jaxcalc run {name}`, {timings[name]:.1f} s; every number above is in "
                               f"`{name}/summary.json`."))
    return blocks
