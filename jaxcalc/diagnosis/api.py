"""``diagnose(f, *args)``: trace, run the instrumented programs, analyse, report."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc.diagnosis import analysis
from jaxcalc.diagnosis.interpret import (
    SUMLIKE,
    Ctx,
    Interpreter,
    Tracker,
    host_stats,
    is_float,
    merge_stat,
    ulp_bits_np,
)
from jaxcalc.diagnosis.report import KINDS, Finding, Report
from jaxcalc.diagnosis.rules import RuleCheck
from jaxcalc.gradcheck import _arg_names, _is_array_like, _is_real_float, _normalise_argnums

__all__ = ["DEFAULT_RULE_RTOL", "DEFAULT_THRESHOLD_BITS", "diagnose"]

DEFAULT_THRESHOLD_BITS = 10.0
DEFAULT_RULE_RTOL = 1e-4


def _fail_trace(what: str, e: Exception) -> ValueError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return ValueError(f"diagnose: {what} could not be traced to a jaxpr at these arguments "
                      f"({type(e).__name__}: {first}). f must be a JAX-traceable function of its arguments "
                      "(no Python branching on array values, no conversion of traced arrays to numpy)")


def _bits_scalar(x32, x64, dtype) -> float:
    return _bits_normwise([np.asarray(x32)], [np.asarray(x64)], dtype)


def _bits_normwise(g32: list, g64: list, dtype=None) -> float | None:
    """``log2(1 + max|a − b| / ulp(max|b|))`` in ``dtype``'s ulps (numpy, float64)."""
    if not g32:
        return None
    a = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in g32])
    b = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in g64])
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    dtype = dtype or np.result_type(*[np.asarray(g).dtype for g in g32])
    mag = max(float(np.max(np.abs(b), initial=0.0)), float(jnp.finfo(dtype).tiny))
    ulp = 2.0 ** (math.floor(math.log2(mag)) - jnp.finfo(dtype).nmant)
    return float(min(math.log2(1.0 + float(np.max(np.abs(a - b), initial=0.0)) / ulp), 32.0))


def diagnose(
    f: Callable,
    *args,
    argnums: int | Sequence[int] = 0,
    threshold_bits: float = DEFAULT_THRESHOLD_BITS,
    rule_rtol: float = DEFAULT_RULE_RTOL,
    local_errors: str = "auto",
    check_rules: bool = True,
) -> Report:
    """Where ``f`` or its gradient breaks: NaN origins, the where-trap, wrong custom rules, float32 digits lost.

    ``f`` (a scalar loss) and ``jax.grad(f, argnums)`` are traced to jaxprs and evaluated equation by
    equation (nested ``jit``, ``scan``, ``while``, ``cond``, ``remat``, ``custom_jvp``/``custom_vjp`` bodies
    included) in one compiled program that also runs every equation in float64 beside the float32 run.

    Findings (most severe first; each names the user's ``file:line``):

    * ``nonfinite_forward``: ``f`` is NaN/inf; the equation where it started (inputs finite, output not);
    * ``where_nan``: the gradient is NaN because ``jnp.where`` discarded a NaN/inf (or a zero cotangent met an
      infinite derivative) of an unsafe operation: the line of that operation, fix: the double-where;
    * ``nonfinite_backward``: the gradient is NaN/inf; its origin (a backward-pass equation names the
      forward line whose derivative it is);
    * ``wrong_derivative``: a ``custom_jvp``/``custom_vjp`` rule disagrees with float64 central differences
      of its primal at the actual inputs by more than ``rule_rtol`` (kinks handled, see
      :mod:`jaxcalc.diagnosis.rules`);
    * ``precision_loss``: an equation's local error ``log2(1 + |op32(round32(x)) − op64(x)| / ulp32)``
      (x: exact float64 inputs) averages more than ``threshold_bits``, while ``f`` or its gradient lost at
      least ``threshold_bits / 2`` bits end to end; named patterns: cancellation, ``log(1 + x)``,
      ``exp`` then ``log``, ``1 − cos x``, ``exp(x) − 1``.

    Args:
      f: ``f(*args) -> scalar`` float.
      *args: its arguments (arrays or pytrees: dicts, lists of ``(W, b)``, flax NNX ``State``); integer
        arguments (labels) and PRNG keys are fine where they are not differentiated.
      argnums: which arguments the gradient is taken with respect to (int or tuple).
      threshold_bits: local error, in bits of the arguments' precision, above which an equation is reported
        (default 10, for float32's 24; with bfloat16's 8 bits choose a smaller one, e.g. 3).
      rule_rtol: relative tolerance of the custom-rule check (default 1e-4; a rule 1% off fails).
      local_errors: ``"auto"`` (default): measure the local error of every forward equation only when ``f``
        or its gradient lost at least ``threshold_bits / 2`` bits end to end (a healthy loss then costs one
        extra compile, not three); ``"always"``; ``"never"`` (no precision analysis at all: no float64
        shadow, ``value_bits_lost``/``grad_bits_lost`` are None; what ``check_grads`` uses for its hint).
      check_rules: check custom_jvp/custom_vjp rules (default True).

    Returns:
      :class:`Report`: ``report.ok``, ``report.findings``, ``str(report)`` (a table), ``report.to_dict()``.

    Raises:
      TypeError: the differentiated arguments hold no floating-point arrays, or ``f`` returns non-floats.
      ValueError: ``f`` does not return a scalar, cannot be traced, or its arguments hold NaN/inf.

    Example::

        >>> report = jaxcalc.diagnose(loss, params, batch)
        >>> print(report)              # one row per finding: kind, file:line, primitive, pass, number
        >>> report.ok, report.top      # no findings? the most severe one
    """
    if not threshold_bits > 0:
        raise ValueError(f"threshold_bits must be positive, got {threshold_bits}")
    if not rule_rtol > 0:
        raise ValueError(f"rule_rtol must be positive, got {rule_rtol}")
    if local_errors not in ("auto", "always", "never"):
        raise ValueError(f"local_errors must be 'auto', 'always' or 'never', got {local_errors!r}")
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    nums = _normalise_argnums(argnums, len(args))
    names = _arg_names(f, len(args))

    with_path, treedef = jax.tree_util.tree_flatten_with_path(args)
    leaves = [leaf for _, leaf in with_path]
    dyn_pos = [i for i, leaf in enumerate(leaves) if _is_array_like(leaf)]
    diff_pos = [i for i, (path, leaf) in enumerate(with_path)
                if path[0].idx in nums and _is_real_float(leaf) and np.size(leaf) > 0]
    if not diff_pos:
        which = ", ".join(names[i] for i in nums)
        kinds = sorted({str(jnp.result_type(leaves[i])) for i, (p, _) in enumerate(with_path)
                        if p[0].idx in nums and _is_array_like(leaves[i])}) or ["no arrays"]
        raise TypeError(f"diagnose: nothing to differentiate: {which} (argnums={argnums!r}) hold no floating-point "
                        f"arrays ({', '.join(kinds)}); integer arguments cannot be differentiated, pass the float "
                        "arguments' positions as argnums")
    for i in dyn_pos:
        leaf = leaves[i]
        if _is_real_float(leaf) and not np.all(np.isfinite(np.asarray(leaf))):
            path = names[with_path[i][0][0].idx] + jax.tree_util.keystr(with_path[i][0][1:])
            raise ValueError(f"diagnose: argument {path} holds NaN/inf: diagnose f at finite inputs")
    dyn = [jnp.asarray(leaves[i]) if not hasattr(leaves[i], "dtype") else leaves[i] for i in dyn_pos]
    diff_in_dyn = [dyn_pos.index(i) for i in diff_pos]

    def rebuild(dyn_vals):
        full = list(leaves)
        for i, v in zip(dyn_pos, dyn_vals, strict=True):
            full[i] = v
        return jax.tree_util.tree_unflatten(treedef, full)

    def flat_f(*dyn_vals):
        return f(*rebuild(dyn_vals))

    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name):
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - clock[0]
        clock[0] = now

    try:
        fwd = jax.make_jaxpr(flat_f)(*dyn)
    except Exception as e:
        raise _fail_trace("f", e) from e
    out_avals = fwd.out_avals
    if len(out_avals) != 1 or out_avals[0].shape != ():
        shapes = ", ".join(str(a.shape) for a in out_avals)
        raise ValueError(f"diagnose: f must return a scalar (a loss); it returned {len(out_avals)} value(s) of "
                         f"shape {shapes}. Reduce it (e.g. jnp.mean) or wrap f to return the loss alone")
    if not is_float(out_avals[0]):
        raise TypeError(f"diagnose: f must return a floating-point scalar, got {out_avals[0].dtype}")

    notes: list[str] = []

    def flat_value_and_grad(*dyn_vals):
        def of_diff(*d):
            vals = list(dyn_vals)
            for k, v in zip(diff_in_dyn, d, strict=True):
                vals[k] = v
            return flat_f(*vals)
        value, grads = jax.value_and_grad(of_diff, argnums=tuple(range(len(diff_in_dyn))))(
            *[dyn_vals[k] for k in diff_in_dyn])
        return (value, *grads)

    try:
        vg = jax.make_jaxpr(flat_value_and_grad)(*dyn)
    except Exception as e:
        vg = None
        notes.append(f"the gradient could not be traced ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                     "only the forward pass was analysed")
    has_custom = check_rules and _has_custom(fwd.jaxpr)
    in_dtype = out_avals[0].dtype
    lap("trace")

    # Phase 1: value and gradient in float32 and their float64 shadow; inputs of custom rules.
    base = Tracker()
    shadow = local_errors != "never"
    if vg is not None:
        extra = (fwd, "forward", dict(shadow=False, capture=True)) if has_custom else None
        out, _, captures = _run(base, vg, "gradient", dyn, dict(shadow=shadow), extra)
        (f32, f64), g_pairs = out[0], out[1:]
    else:
        out, _, captures = _run(base, fwd, "forward", dyn, dict(shadow=shadow, capture=has_custom))
        (f32, f64), g_pairs = out[0], []
    value = float(f32)
    g32 = [g[0] for g in g_pairs]
    grad_count = int(sum(np.size(g) - np.count_nonzero(np.isfinite(g)) for g in g32))
    value_bits = _bits_scalar(f32, f64, in_dtype) if shadow else None
    grad_bits = _bits_normwise(g32, [g[1] for g in g_pairs]) if (g_pairs and shadow) else None
    findings: list[Finding] = []
    lap("value_and_grad")

    # Phase 2, only when something is not finite: where it started.
    if not np.isfinite(value):
        tr = Tracker()
        out, stats, _ = _run(tr, fwd, "forward", dyn, dict(shadow=False, nan_stats=True))
        findings += analysis.nonfinite_findings(tr, analysis.Flow(tr, stats, "forward"), [out_nodes_of(tr, "forward")],
                                                "nonfinite_forward", 1)
        if grad_count:
            notes.append(f"the gradient is non-finite too ({grad_count} entries): fix the forward pass first")
    elif grad_count:
        tr = Tracker()
        out, stats, _ = _run(tr, vg, "gradient", dyn, dict(shadow=False, nan_stats=True))
        nodes = out_nodes_of(tr, "gradient", all_outputs=True)[1:]
        findings += analysis.nonfinite_findings(tr, analysis.Flow(tr, stats, "gradient"), nodes,
                                                "nonfinite_backward", grad_count)

    lap("nonfinite")

    # Phase 3, only when f or its gradient lost digits end to end (or when asked): local error per equation.
    rows = []
    e2e = max([b for b in (value_bits, grad_bits) if b is not None and np.isfinite(b)], default=0.0)
    if np.isfinite(value) and (local_errors == "always" or (local_errors == "auto" and e2e >= threshold_bits / 2)):
        tr = Tracker()
        _, stats, _ = _run(tr, fwd, "forward", dyn, dict(shadow=True, local_error=True))
        rows = analysis.local_errors(tr, stats)
        if e2e >= threshold_bits / 2:
            found = analysis.precision_findings(tr, rows, threshold_bits)
            findings += found
            if not found and e2e >= threshold_bits:
                notes.append(f"f or its gradient lose {e2e:.1f} bits end to end, but no forward equation loses more "
                             f"than {threshold_bits:g} bits by itself: the digits go in the backward pass or in "
                             "many small steps (report.local_errors lists them)")
        elif any(r["bits_mean"] > threshold_bits for r in rows):
            notes.append(f"some equations lose more than {threshold_bits:g} bits locally, but f and its gradient "
                         f"lose only {e2e:.1f} bits end to end: not reported")
        notes += tr.notes

    lap("local_errors")

    # Phase 4: every custom_jvp / custom_vjp rule at its actual inputs.
    rules = []
    if captures:
        rule_findings, rules = _check_rules(base, captures, rule_rtol, notes)
        findings += rule_findings
    lap("rules")

    findings.sort(key=lambda fd: (KINDS.index(fd.kind), -fd.number if fd.unit != "count" else 0))
    notes += base.notes
    return Report(
        findings=tuple(findings), value=value,
        value_bits_lost=None if value_bits is None or not np.isfinite(value_bits) else value_bits,
        grad_bits_lost=None if grad_bits is None or not np.isfinite(grad_bits) else grad_bits,
        local_errors=tuple(rows), rules=tuple(rules),
        equations={"forward": _count_eqns(fwd.jaxpr), "gradient": _count_eqns(vg.jaxpr) if vg is not None else 0},
        threshold_bits=float(threshold_bits), notes=tuple(dict.fromkeys(notes)),
        seconds={k: round(v, 4) for k, v in seconds.items() if v > 0}, dtype=str(in_dtype))


def _walk(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _walk(inner)


def _has_custom(jaxpr) -> bool:
    return any(e.primitive.name in ("custom_jvp_call", "custom_vjp_call") for e in _walk(jaxpr))


def _count_eqns(jaxpr) -> int:
    return sum(1 for _ in _walk(jaxpr))


def out_nodes_of(tr: Tracker, program: str, all_outputs: bool = False):
    nodes = tr.outputs[program]
    return nodes if all_outputs else nodes[0]


# The instrumented programs run once: compile them for compile time, not run time (XLA's backend optimisation
# level 0 roughly halves CPU compile time of these many-small-op programs; falls back where not accepted).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compile_fast(fn, *args):
    lowered = jax.jit(fn).lower(*args)
    try:
        return lowered.compile(compiler_options=FAST_COMPILE)
    except Exception:
        return lowered.compile()


def _run(tr: Tracker, closed, program: str, dyn: list, opts: dict, extra=None):
    """Compile and run one instrumented evaluation of ``closed`` on ``dyn``: ``(outputs as (x, s) numpy pairs,
    statistics {key: float}, captured custom-call inputs {site id: [arrays]})``. ``extra = (closed2, program2,
    opts2)`` evaluates a second jaxpr in the same compiled program and adds its statistics and captures."""
    jobs = [(closed, program, opts)] + ([extra] if extra else [])

    def prog(all_consts, dyn_vals):
        results = []
        for (cj, name, o), consts in zip(jobs, all_consts, strict=True):
            tag = name[0]
            it = Interpreter(tr, **o)
            ctx = Ctx(path=(tag,), program=name, pass_=None, parent=None, frame=None, depth=0)
            ins = [it.make_val(v, jax.typeof(v), tr.node((tag, "arg", k), "input", None, [],
                                                         is_float(jax.typeof(v))))
                   for k, v in enumerate(dyn_vals)]
            with it.collect() as col:
                outs = it.eval_jaxpr(cj.jaxpr, consts, ins, ctx)
            tr.outputs[name] = [o.node for o in outs]
            results.append(([(o.x, o.s) for o in outs], col.stats, col.captures, col.arrays))
        out = results[0][0]
        stats = {k: v for r in results for k, v in r[1].items()}
        caps = {k: v for r in results for k, v in r[2].items()}
        arrays = {k: v for r in results for k, v in r[3].items()}
        return out, stats, caps, arrays

    consts = [list(j[0].consts) for j in jobs]
    with jax.enable_x64(True):
        try:
            out, stats, caps, arrays = compile_fast(prog, consts, dyn)(consts, dyn)
        except Exception as e:
            raise RuntimeError(f"diagnose: the instrumented program failed ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); please report this with f") from e
    out = [(np.asarray(x), None if s is None else np.asarray(s)) for x, s in out]
    stats = {k: float(v) for k, v in stats.items()}
    stats.update(host_stats(tr, {k: v for k, v in arrays.items() if k.startswith("n")}))
    for key, pair in arrays.items():  # local errors of top-level equations, computed here in numpy
        if not key.startswith("s"):
            continue
        y_loc, y_ex = pair
        sid = key.split(":")[0]
        y_loc = np.asarray(y_loc)
        bits, ok = ulp_bits_np(y_loc, np.asarray(y_ex), y_loc.dtype, tr.sites[int(sid[1:])].primitive in SUMLIKE)
        for k, v in ((f"{sid}:bits:sum", np.sum(bits[ok])), (f"{sid}:count:sum", np.sum(ok)),
                     (f"{sid}:bitsmax:max", np.max(bits[ok], initial=0.0))):
            stats[k] = float(merge_stat(k, stats.get(k, 0.0), float(v), xp=np))
    return out, stats, caps


def _check_rules(tracker: Tracker, captures: dict, rtol: float, notes: list) -> tuple[list[Finding], list[dict]]:
    checks = {}
    for sid in sorted(captures, key=int):
        site = tracker.sites[int(sid)]
        try:
            check = RuleCheck(site)
        except Exception as e:
            notes.append(f"could not check the rule at {site.frame}: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        if not check.diff or not check.fouts:
            continue
        checks[int(sid)] = check

    def run(ids):
        def prog(vals, draws):
            return {sid: checks[sid].evaluate(vals[sid], draws[sid], rtol) for sid in ids}
        vals = {sid: list(captures[sid]) for sid in ids}
        draws = {sid: checks[sid].draws(sid) for sid in ids}
        with jax.enable_x64(True):
            out = compile_fast(prog, vals, draws)(vals, draws)
        return {sid: {k: float(np.asarray(v)) for k, v in d.items()} for sid, d in out.items()}

    results = {}
    if checks:
        try:
            results = run(list(checks))
        except Exception:
            for sid in checks:
                try:
                    results.update(run([sid]))
                except Exception as e:
                    notes.append(f"could not check the rule at {checks[sid].site.frame}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}")
    findings, rows = [], []
    for sid, r in results.items():
        check = checks[sid]
        site = check.site
        if not r["finite"]:
            notes.append(f"the rule at {site.frame} was not checked: its inputs, primal or derivative are not finite")
            continue
        passed = bool(r["rel_error"] <= rtol)
        rows.append({"rule": check.rule, "primal": check.primal, "source": str(site.frame) if site.frame else "",
                     "rel_error": r["rel_error"], "passed": passed, "method": check.method})
        if not passed:
            kind = "custom_jvp" if check.kind == "jvp" else "custom_vjp"
            modes = ', modes=("rev",)' if check.kind == "vjp" else ""
            detail = (f"the {kind} rule {check.rule} of {check.primal} disagrees with float64 central differences "
                      f"of {check.primal} at the actual inputs (relative error {r['rel_error']:.2e} > {rtol:.0e}): "
                      "fix the rule (check it alone with jaxcalc.check_grads"
                      f"{modes})")
            f = analysis._finding("wrong_derivative", site, r["rel_error"], "rel_error", detail)
            findings.append(dataclasses.replace(f, pass_="backward"))  # the rule is the derivative of this line
    return findings, rows
