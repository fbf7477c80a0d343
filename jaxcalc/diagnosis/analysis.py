"""From the interpreter's numbers to findings: NaN origins, the where-trap, precision patterns.

Non-finite values are followed through the program's dataflow (Python side, over the nodes the
interpreter registered): a value is *tainted* when it holds NaN/inf; the *origins* of a tainted value are
the equations whose output went non-finite while their inputs were finite, found by walking back
through tainted inputs (loops are closed by iterating to a fixed point). A NaN/inf that a ``select_n``
(``jnp.where``) discards is *masked*: harmless to the value, but reverse mode multiplies the discarded
branch's derivative by the zero cotangent, and ``0·inf = NaN`` (the where-trap).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxcalc.diagnosis.interpret import Site, Tracker
from jaxcalc.diagnosis.report import Finding

# Primitives a value passes through unchanged in meaning (for naming patterns like ``1 - cos(x)``).
TRANSPARENT = {"convert_element_type", "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "copy", "copy_p",
               "reduce_precision"}
# Linear primitives a cotangent flows through (to tell a zero that came from a where's transpose).
LINEAR = {"mul", "neg", "convert_element_type", "broadcast_in_dim", "reshape", "squeeze", "expand_dims",
          "transpose", "add_any", "add", "sub", "reduce_sum", "copy", "copy_p", "pad", "slice", "dynamic_slice",
          "concatenate", "dot_general", "div", "cumsum", "rev", "gather", "scatter-add", "scatter_add",
          "dynamic_update_slice", "select_n"}


class Flow:
    """Taint and origins of non-finite values over one program's nodes."""

    def __init__(self, tracker: Tracker, stats: dict, program: str):
        self.tr = tracker
        self.stats = stats
        self.program = program
        nodes = tracker.nodes
        self.taint = [False] * len(nodes)
        self.origins: list[frozenset] = [frozenset()] * len(nodes)
        for _ in range(2 * len(nodes) + 2):
            if not self._sweep():
                break

    def stat(self, key, default=0.0) -> float:
        return float(self.stats.get(key, default))

    def nf(self, node_id) -> int:
        n = self.tr.nodes[node_id]
        return int(self.stat(f"n{node_id}:nf:sum")) + n.static_nf

    def _sweep(self) -> bool:
        changed = False
        for n in self.tr.nodes:
            if n.kind == "out":
                site = self.tr.sites[n.site]
                if site.program != self.program:
                    continue
                taint = self.nf(n.id) > 0
                orig = frozenset()
                if taint:
                    srcs = [s for s in n.sources if s >= 0 and self.taint[s]]
                    orig = frozenset().union(*(self.origins[s] for s in srcs)) if srcs else frozenset()
                    if self.stat(f"s{site.id}:origin:max") > 0 or not orig:
                        orig = orig | {site.id}
            elif n.kind == "alias":
                srcs = [s for s in n.sources if s >= 0]
                taint = any(self.taint[s] for s in srcs)
                orig = frozenset().union(*(self.origins[s] for s in srcs)) if srcs else frozenset()
            else:
                taint, orig = n.static_nf > 0, frozenset()
            if taint != self.taint[n.id] or orig != self.origins[n.id]:
                self.taint[n.id], self.origins[n.id] = taint, orig
                changed = True
        return changed

    def masked(self) -> dict[int, Site]:
        """``{origin site id: the forward-pass select_n (a jnp.where) that discarded its NaN/inf}``."""
        out = {}
        for site in self.tr.sites:
            if site.program != self.program or site.primitive != "select_n" or site.pass_ != "forward":
                continue
            for i, node in enumerate(site.in_nodes[1:]):
                if node >= 0 and self.stat(f"s{site.id}:mask{i}:max") > 0:
                    for o in self.origins[node]:
                        out.setdefault(o, site)
        return out


# ------------------------------------------------------------------------------------------ graph helpers


def producer(tr: Tracker, node_id: int, depth: int = 8):
    """The site that really computed ``node_id`` (through aliases and transparent ops), or the node."""
    for _ in range(depth):
        if node_id < 0:
            return None
        n = tr.nodes[node_id]
        if n.kind == "alias" and len(n.sources) == 1:
            node_id = n.sources[0]
            continue
        if n.kind == "out":
            site = tr.sites[n.site]
            if site.primitive in TRANSPARENT and site.in_nodes:
                node_id = site.in_nodes[0]
                continue
            return site
        return n
    return None


def const_value(tr: Tracker, node_id: int):
    p = producer(tr, node_id)
    if p is not None and not isinstance(p, Site) and p.literal is not None:
        vals = np.asarray(p.literal, dtype=np.float64).ravel()
        if vals.size and np.all(vals == vals[0]):
            return float(vals[0])
    return None


def has_upstream(tr: Tracker, node_id: int, prims: set, through: set, depth: int = 4) -> Site | None:
    """A site of a primitive in ``prims`` feeding ``node_id`` within ``depth`` steps through ``through``."""
    frontier = [node_id]
    for _ in range(depth):
        nxt = []
        for nid in frontier:
            p = producer(tr, nid)
            if isinstance(p, Site):
                if p.primitive in prims:
                    return p
                if p.primitive in through:
                    nxt.extend(p.in_nodes)
        frontier = nxt
    return None


def from_backward_select(tr: Tracker, node_id: int, depth: int = 12) -> Site | None:
    """The backward-pass select_n (a where's transpose) whose zeros reach ``node_id`` through linear ops."""
    seen, frontier = set(), [node_id]
    for _ in range(depth):
        nxt = []
        for nid in frontier:
            if nid < 0 or nid in seen:
                continue
            seen.add(nid)
            n = tr.nodes[nid]
            if n.kind == "alias":
                nxt.extend(n.sources)
            elif n.kind == "out":
                site = tr.sites[n.site]
                if site.primitive == "select_n" and site.pass_ == "backward":
                    return site
                if site.primitive in LINEAR:
                    nxt.extend(site.in_nodes)
        frontier = nxt
    return None


def same_line(a: Site, b: Site) -> bool:
    return a.frame is not None and b.frame is not None and (a.frame.file, a.frame.line) == (b.frame.file,
                                                                                            b.frame.line)


def forward_prims_at(tr: Tracker, site: Site) -> list[str]:
    """Primitives of forward-pass equations made by the same source line (what a backward equation derives)."""
    names = []
    for s in tr.sites:
        if s.pass_ == "forward" and s.primitive not in TRANSPARENT and same_line(s, site) and \
                s.primitive not in names and s.primitive not in ("jit", "pjit", "custom_jvp_call"):
            names.append(s.primitive)
    return names


# ------------------------------------------------------------------------------------------ findings


def _finding(kind, site: Site, number, unit, detail, primitive=None) -> Finding:
    frame = site.frame
    return Finding(kind=kind, primitive=primitive or site.primitive, source=str(frame) if frame else "<unknown>",
                   pass_=site.pass_, number=float(number), unit=unit, detail=detail,
                   function=frame.function if frame else "", stack=site.stack)


def _api(site: Site) -> str:
    return f" ({site.api})" if site.api and site.api != site.primitive else ""


def _forward_detail(tr: Tracker, site: Site) -> str:
    p = site.primitive
    ins = site.in_nodes
    if p == "exp":
        feeds = "" if not any(s.primitive in ("div", "log") for s in _consumers(tr, site)) else \
            " (a naive softmax or log-sum-exp)"
        return (f"exp overflows float32 above 88.72{feeds}: subtract the maximum first, or use jax.nn.softmax / "
                "jax.nn.log_softmax / jax.nn.logsumexp")
    if p == "log":
        if ins and has_upstream(tr, ins[0], {"exp"}, _SOFTMAX_PATH, depth=6):
            return ("log of an underflowed softmax/exp (log(0) = -inf): use jax.nn.log_softmax or "
                    "jax.nn.logsumexp instead of log(softmax(x)) / log(sum(exp(x)))")
        return "log of 0 or of a negative value: clamp the argument (jnp.maximum(x, tiny)) or rewrite in log space"
    if p == "div":
        return "division by zero: guard the denominator (jnp.where(d == 0, 1, d)) or add a small epsilon"
    if p in ("sqrt", "rsqrt", "pow", "log1p", "acos", "asin", "acosh", "atanh"):
        return f"{p} outside its domain (negative or out-of-range argument): clamp the argument first"
    if p in ("mul", "dot_general", "add", "sub", "reduce_sum"):
        return f"{p} overflows float32 (|x| > 3.4e38): rescale, or compute this step in log space"
    return f"{p}{_api(site)} returns NaN/inf from finite inputs"


_SOFTMAX_PATH = {"div", "reduce_sum", "mul", "add", "sub", "dot_general", "gather", "slice", "dynamic_slice",
                 "select_n", "concatenate", "squeeze", "jit", "pjit"}


def _consumers(tr: Tracker, site: Site, depth: int = 3) -> list[Site]:
    outs = set(site.out_nodes)
    found = []
    for _ in range(depth):
        grown = set(outs)
        for n in tr.nodes:
            if any(s in outs for s in n.sources):
                grown.add(n.id)
        for s in tr.sites:
            if any(i in outs for i in s.in_nodes) and s not in found:
                found.append(s)
                grown.update(s.out_nodes)
        outs = grown
    return found


def _backward_detail(tr: Tracker, site: Site) -> str:
    prims = forward_prims_at(tr, site)
    what = site.api if site.api in ("norm", "sqrt", "log", "power", "arctan2", "divide", "true_divide") else None
    if "sqrt" in prims or "rsqrt" in prims or what == "norm":
        name = "jnp.linalg.norm" if what == "norm" else "sqrt"
        return (f"the derivative of {name} is infinite at 0 (d sqrt(s)/ds = 1/(2 sqrt(s))), so the gradient is "
                "NaN/inf: use jnp.sqrt(s + eps) (e.g. sqrt(sum(x**2) + 1e-12)), or a double-where that sends 0 "
                "to a safe value before the sqrt")
    if "log" in prims:
        return "the derivative of log (1/x) is infinite at 0: keep the argument away from 0 (jnp.maximum(x, tiny))"
    if "div" in prims:
        return "the derivative of a division (1/d, -n/d²) is infinite where the denominator is 0: guard it"
    if "pow" in prims or "integer_pow" in prims:
        return "the derivative of a power x**p (p < 1) is infinite at 0: add an epsilon or guard x = 0"
    named = ", ".join(prims) if prims else site.primitive
    return f"the derivative of {named} at this line is not finite at these inputs"


def _where_detail(tr: Tracker, unsafe: Site, where: Site | None) -> str:
    op = unsafe.primitive if (unsafe.primitive in UNSAFE or not unsafe.api) else unsafe.api
    if unsafe.pass_ == "backward":
        prims = [p for p in forward_prims_at(tr, unsafe) if p not in ("select_n",)]
        op = prims[0] if prims else op
    at = f" (the where at {where.frame.file.rsplit('/', 1)[-1]}:{where.frame.line})" if (
        where is not None and where.frame is not None) else ""
    return (f"jnp.where discards the NaN/inf of {op} here in the forward pass{at}, but its gradient is "
            f"0·inf = NaN: use the double-where, safe = jnp.where(ok, x, 1.0); jnp.where(ok, {op}(safe), 0.0)")


def nonfinite_findings(tr: Tracker, flow: Flow, out_nodes: list[int], kind: str, count: int) -> list[Finding]:
    """Findings for the non-finite outputs ``out_nodes`` of a program (forward: ``f``; gradient: ``grad f``)."""
    origins = sorted(frozenset().union(*(flow.origins[n] for n in out_nodes if n >= 0)))
    findings = []
    if kind == "nonfinite_forward":
        for sid in origins:
            site = tr.sites[sid]
            findings.append(_finding(kind, site, _site_nf(flow, site), "count", _forward_detail(tr, site)))
        return _dedupe(findings)
    masked = flow.masked()
    traps = []
    for site in tr.sites:
        if site.program == flow.program and site.primitive in ("mul", "div") and site.pass_ == "backward" and \
                flow.stat(f"s{site.id}:zinf:max") > 0:
            operands = site.in_nodes[:1] if site.primitive == "div" else site.in_nodes[:2]
            sel = next((s for s in (from_backward_select(tr, n) for n in operands) if s is not None), None)
            if sel is not None:
                traps.append((site, sel))
    for sid in origins:
        site = tr.sites[sid]
        if sid in masked:
            findings.append(_finding("where_nan", site, count, "count", _where_detail(tr, site, masked[sid])))
            continue
        trap = next(((t, sel) for t, sel in traps if same_line(t, site)), None)
        if trap is not None:
            fwd = _forward_site_at(tr, site) or site
            findings.append(_finding("where_nan", fwd, count, "count", _where_detail(tr, fwd, None),
                                     primitive=fwd.primitive))
            continue
        if site.pass_ == "forward" and not _derivative_eqn(tr, site):
            findings.append(_finding(kind, site, count, "count", _forward_detail(tr, site)))
        else:  # a backward equation, or a derivative factor computed beside the forward pass (jvp residual)
            f = _finding(kind, site, count, "count", _backward_detail(tr, site))
            findings.append(dataclasses.replace(f, pass_="backward"))
    return _dedupe(findings)


UNSAFE = ("sqrt", "log", "div", "rsqrt", "pow", "integer_pow", "log1p", "acos", "asin", "atanh", "acosh", "exp",
          "tan", "lgamma", "digamma", "erf_inv", "atan2")


def _derivative_eqn(tr: Tracker, site: Site) -> bool:
    """A forward-region equation of the gradient program that computes a derivative factor (jvp residual)."""
    return site.program == "gradient" and site.pass_ == "forward" and \
        site.primitive in ("div", "mul", "rsqrt", "pow", "integer_pow") and \
        any(p in ("sqrt", "log", "pow", "rsqrt") for p in forward_prims_at(tr, site) if p != site.primitive)


def _forward_site_at(tr: Tracker, site: Site) -> Site | None:
    """The unsafe forward operation (sqrt, log, div, ...) made by the same source line as ``site``."""
    cands = [s for s in tr.sites if s.pass_ == "forward" and same_line(s, site) and s.primitive in UNSAFE]
    return next((s for p in UNSAFE for s in cands if s.primitive == p), None)


def _site_nf(flow: Flow, site: Site) -> int:
    return sum(flow.nf(n) for n in site.out_nodes if n >= 0)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.kind, f.source)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


# ------------------------------------------------------------------------------------------ precision


def local_errors(tr: Tracker, stats: dict) -> list[dict]:
    rows = []
    for site in tr.sites:
        if site.program != "forward":
            continue
        count = float(stats.get(f"s{site.id}:count:sum", 0.0))
        if count <= 0:
            continue
        rows.append({"index": site.id, "primitive": site.primitive, "source": str(site.frame) if site.frame else "",
                     "bits_mean": float(stats[f"s{site.id}:bits:sum"]) / count,
                     "bits_max": float(stats.get(f"s{site.id}:bitsmax:max", 0.0))})
    return rows


def _precision_detail(tr: Tracker, site: Site, bits: float) -> str:
    p = site.primitive
    ins = site.in_nodes
    dtype = site.eqn.outvars[0].aval.dtype
    lost = f"loses {bits:.1f} of {jnp.finfo(dtype).nmant + 1} bits in {dtype}"
    if p == "log":
        arg = producer(tr, ins[0]) if ins else None
        if isinstance(arg, Site) and arg.primitive == "add" and any(
                const_value(tr, n) == 1.0 for n in arg.in_nodes):
            return f"log(1 + x) near x = 0 {lost}: use jnp.log1p(x)"
        if ins and has_upstream(tr, ins[0], {"exp"}, {"reduce_sum", "div", "add", "mul"}):
            return f"log of a sum of exp near 1 {lost}: use jax.nn.logsumexp / jax.nn.log_softmax"
        return f"log of a value near 1 {lost}: compute the small difference x − 1 directly and use jnp.log1p"
    if p in ("sub", "add") and len(ins) == 2:
        ops = [producer(tr, n) for n in ins]
        one = [const_value(tr, n) == 1.0 or (p == "add" and const_value(tr, n) == -1.0) for n in ins]
        kinds = [o.primitive if isinstance(o, Site) else None for o in ops]
        if any(one) and "cos" in kinds:
            return f"1 − cos(x) cancels for small x and {lost}: use 2·jnp.sin(x/2)**2"
        if any(one) and "exp" in kinds:
            return f"exp(x) − 1 cancels for small x and {lost}: use jnp.expm1(x)"
        if any(one) and "sqrt" in kinds:
            return f"sqrt(1 + x) − 1 cancels for small x and {lost}: use x / (sqrt(1 + x) + 1)"
        return (f"catastrophic cancellation: a {'−' if p == 'sub' else '+'} b with a ≈ {'' if p == 'sub' else '−'}b "
                f"{lost}: reformulate so the nearly equal parts cancel analytically (or compute them in float64)")
    if p == "expm1" or p == "log1p":
        return f"{p} {lost}: its argument already lost digits upstream"
    return f"{p}{_api(site)} {lost}: compute this step in float64 or reformulate it"


def precision_findings(tr: Tracker, rows: list[dict], threshold: float) -> list[Finding]:
    best: dict = {}
    for r in rows:
        if r["bits_mean"] <= threshold:
            continue
        site = tr.sites[r["index"]]
        key = (site.frame.file, site.frame.line) if site.frame else site.id
        if key not in best or r["bits_mean"] > best[key][1]:
            best[key] = (site, r["bits_mean"])
    return [_finding("precision_loss", site, bits, "bits_lost", _precision_detail(tr, site, bits))
            for site, bits in best.values()]
