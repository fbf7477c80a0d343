"""Integrals: quadrature rules against closed forms, their convergence orders, and the FTC via jax.grad."""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxcalc import integrate
from jaxcalc.runio import RunWriter, figure

NAME = "integrals"


@dataclass(frozen=True)
class Config:
    """Settings of the quadrature study; each field is a ``jaxcalc run integrals`` option.

    Attributes:
      seed: PRNG seed for the Monte Carlo samples.
      max_doublings: panel counts n = 2, 4, ..., 2^max_doublings, 2 to 14.
      mc_samples_max: Monte Carlo sample counts 16, 64, ... up to this, 16 to 2^22.
    """

    seed: int = 0
    max_doublings: int = 8
    mc_samples_max: int = 2**16

    def __post_init__(self):
        if not 2 <= self.max_doublings <= 14:
            raise ValueError(f"max_doublings must be in [2, 14], got {self.max_doublings}")
        if not 16 <= self.mc_samples_max <= 2**22:
            raise ValueError(f"mc_samples_max must be in [16, {2**22}], got {self.mc_samples_max}")


QUICK = {"max_doublings": 6, "mc_samples_max": 2**12}


def _order(errors, ns):
    """Least-squares slope of log(error) against log(h) = -log(n): the convergence order."""
    e, n = np.asarray(errors, float), np.asarray(ns, float)
    keep = e > 1e-13  # below round-off the slope means nothing
    if keep.sum() < 2:
        return float("nan")
    return float(-np.polyfit(np.log(n[keep]), np.log(e[keep]), 1)[0])


def run(config: Config, out_dir) -> dict:
    writer = RunWriter(out_dir, config)
    with jax.enable_x64(True):
        exact = 2.0  # ∫_0^π sin x dx = 2 (closed form)
        ns = [2**k for k in range(1, config.max_doublings + 1)]
        rules = {"trapezoid": integrate.trapezoid, "simpson": integrate.simpson,
                 "gauss_legendre": integrate.gauss_legendre}
        errors = {name: [] for name in rules}
        for n in ns:
            row = {"n": n}
            for name, rule in rules.items():
                value = float(rule(jnp.sin, 0.0, math.pi, n=n))
                errors[name].append(abs(value - exact))
                row[f"{name}_error"] = abs(value - exact)
            writer.log(**row)
        orders = {name: _order(errors[name], ns) for name in ("trapezoid", "simpson")}

        # ∫_{-1}^{1} e^x dx = e - 1/e (closed form), Gauss-Legendre with 5 nodes
        gl_exp_error = abs(float(integrate.gauss_legendre(jnp.exp, -1.0, 1.0, n=5)) - (math.e - 1 / math.e))

        # Fundamental theorem of calculus: d/dx ∫_0^x cos(t) dt = cos(x), through jax.grad of the rule
        xs = jnp.linspace(0.1, 3.0, 7)
        ftc = jax.vmap(jax.grad(lambda x: integrate.simpson(jnp.cos, 0.0, x, n=64)))(xs)
        ftc_error = float(jnp.max(jnp.abs(ftc - jnp.cos(xs))))

        # Monte Carlo: error ~ 1/sqrt(n), averaged over 32 independent keys per n
        key = jax.random.key(config.seed)
        mc_ns = [2**k for k in range(4, int(math.log2(config.mc_samples_max)) + 1, 2)]
        mc_rmse = []
        for n in mc_ns:
            keys = jax.random.split(jax.random.fold_in(key, n), 32)
            vals = jax.vmap(lambda k, n=n: integrate.monte_carlo(jnp.sin, 0.0, math.pi, n=n, key=k))(keys)
            mc_rmse.append(float(jnp.sqrt(jnp.mean((vals - exact) ** 2))))
        mc_order = float(-np.polyfit(np.log(mc_ns), np.log(mc_rmse), 1)[0])

    fig, (ax1, ax2) = figure(1, 2, figsize=(11, 4))
    for name, errs in errors.items():
        ax1.loglog(ns, np.maximum(errs, 1e-17), "o-", label=name)
    h = np.asarray(ns, float)
    ax1.loglog(ns, errors["trapezoid"][0] * (h / h[0]) ** -2, "k:", label="slope −2 (O(h²))")
    ax1.loglog(ns, errors["simpson"][0] * (h / h[0]) ** -4, "k--", label="slope −4 (O(h⁴))")
    ax1.set_xscale("log", base=2)
    ax1.set(xlabel="panels n (Gauss–Legendre: nodes)", ylabel="|error| of ∫₀^π sin", title="Quadrature convergence")
    ax1.legend(fontsize=8)
    ax2.loglog(mc_ns, mc_rmse, "o-", label="Monte Carlo RMSE (32 keys)")
    ax2.loglog(mc_ns, mc_rmse[0] * (np.asarray(mc_ns) / mc_ns[0]) ** -0.5, "k:", label="slope −1/2")
    ax2.set(xlabel="samples n", ylabel="RMSE", title="Monte Carlo")
    ax2.legend(fontsize=8)
    writer.savefig(fig, "convergence")

    return writer.finish({
        "trapezoid_order": orders["trapezoid"],
        "simpson_order": orders["simpson"],
        "error_panels": ns[min(5, len(ns) - 1)],  # the n of the two errors below (64 unless max_doublings < 6)
        "trapezoid_error_n64": errors["trapezoid"][min(5, len(ns) - 1)],
        "simpson_error_n64": errors["simpson"][min(5, len(ns) - 1)],
        "gauss_legendre_exp_error_n5": gl_exp_error,
        "ftc_max_error": ftc_error,
        "monte_carlo_order": mc_order,
    })
