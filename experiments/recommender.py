"""Recommender: biased matrix factorization, Bayesian (Gibbs) by default, on MovieLens-format ratings.

The article's "recommendation system" example, built for real: collaborative filtering by
matrix factorization ``r̂ = μ + b_u + b_i + p_u·q_i`` (``jaxcalc.models.recommender``).

The default method, ``bpmf``, is Bayesian probabilistic matrix factorization (Salakhutdinov &
Mnih 2008): a Gibbs sampler over the factors, biases and their Normal-Wishart priors, whose
prediction is the posterior mean over the draws after a burn-in. Its priors are learned from the
data, so nothing is chosen on a validation split; the noise precision ``α`` is sampled too (or
fixed with ``--noise-precision``, the paper's 2 for star ratings). The summary reports ``samples``
(draws averaged), ``burn_in`` and ``noise_precision`` (the mean of the kept draws of ``α``). The other methods
(``als``, ``minibatch``, ``fullbatch``, ``sgd``) minimise the L2-regularised squared error.

Data: ``--ratings PATH`` (a MovieLens ``u.data`` / ``ratings.dat`` / ``ratings.csv``, split
80/20 at random by ``--seed``), or ``--train PATH --test PATH`` (as ml-100k's ``u1.base`` /
``u1.test``); without either, synthetic MovieLens-like ratings from a known low-rank model,
and the test RMSE is reported beside the noise floor (the RMSE of the true expected rating).

Beside the model the summary reports the global-mean predictor and the biases-only model (fitted
the same way: Bayesian for bpmf, else ALS),
precision@10 / recall@10 (top 10 among each test user's unrated items; relevant = held-out
rating >= 4), and the counts of test ratings whose user or item is unseen in training.

For the optimising methods, ``--reg`` left out picks the L2 weight on a validation split carved
from the TRAINING data (never the test set); ``--preset surprise`` reproduces Surprise's ``SVD``
(per-rating SGD, 100 factors, 20 epochs, lr 0.005, reg 0.02, init N(0, 0.1)). ``fit_seconds`` is the
final fit (compilation apart, in ``compile_seconds``); ``total_fit_seconds`` adds the wall time of
choosing ``reg`` (its fits' compilation included).

``--devices N`` trains data-parallel on N devices (``jaxcalc.parallel``: parameters and
optimizer state replicated, each batch of ratings split across the devices, the gradient
all-reduced by XLA) for the gradient methods ``minibatch`` and ``fullbatch``; the figures equal
the one-device run to float32 rounding. BPMF (the default), ALS and per-rating SGD are not
data-parallel: with ``--devices N`` they still run, on one device, and the summary says so
(``data_parallel: false``, ``devices_used: 1``). On a CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` simulates 8 devices.

``jaxcalc recommend --ratings PATH --user ID --top 10`` prints a user's best unrated items.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Literal

import numpy as np

from jaxcalc._validate import check_fields_at_least

NAME = "recommender"

Method = Literal["bpmf", "als", "minibatch", "fullbatch", "sgd"]

# Default step sizes per method (``--lr`` overrides): Surprise's 0.005 for per-rating SGD;
# Adam rates for the batched methods.
DEFAULT_LR = {"sgd": 0.005, "minibatch": 0.01, "fullbatch": 0.05, "als": 0.0, "bpmf": 0.0}
# Default passes per method: ALS from its spectral start converges in ~6 sweeps (measured on the
# synthetic default: test RMSE flat after sweep 6); Surprise's 20 for SGD. BPMF: 20 Gibbs sweeps
# from the spectral start, the first discarded: about half the time Surprise's tuned SVD takes on
# 80k ratings; the posterior mean keeps improving slowly with more (``--epochs``).
DEFAULT_EPOCHS = {"bpmf": 20, "als": 8, "minibatch": 15, "fullbatch": 200, "sgd": 20}
DEFAULT_BURN_IN = 1  # bpmf: the chain starts at the spectral start, near where it settles
# Optimising methods (an L2 weight to choose); bpmf learns its priors instead.
REGULARISED = ("als", "minibatch", "fullbatch", "sgd")
# L2 weights tried when --reg is left out (per-rating weight, see jaxcalc.models.recommender).
REG_GRID = (0.025, 0.05, 0.1, 0.2, 0.4)
RELEVANT = 4.0  # a held-out rating >= 4 counts as relevant for precision/recall@10


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of ``jaxcalc run recommender`` (each field is a CLI option).

    Attributes:
      ratings: one ratings file (``u.data``, ``ratings.dat``, ``ratings.csv``), split at random
        into train/test by ``seed`` (``test_fraction``, ``split``, ``folds``).
      train: training ratings file (with ``test``; e.g. ml-100k's ``u1.base``). Test users or
        items absent from it are predicted from biases / the global mean and counted.
      test: test ratings file (with ``train``).
      method: ``bpmf`` (Bayesian MF by Gibbs sampling, the default), ``als``, ``minibatch``,
        ``fullbatch`` or ``sgd`` (per-rating SGD).
      factors: latent factors ``k`` per user and item (0: the biases-only model).
      epochs: passes (bpmf: Gibbs sweeps including the burn-in; als: sweeps; fullbatch: steps);
        default per method (bpmf 20, als 8, minibatch 15, fullbatch 200, sgd 20).
      burn_in: bpmf: sweeps discarded before averaging (default 1), in ``[0, epochs)``.
      noise_precision: bpmf: fix the likelihood's precision ``α`` (rating noise variance ``1/α``;
        Salakhutdinov & Mnih took 2 for star ratings), > 0; default: sampled with the rest
        (Gamma(1, 1) prior).
      lr: step size of the gradient methods (default per method: sgd 0.005, minibatch 0.01,
        fullbatch 0.05), > 0.
      reg: L2 weight per rating of the optimising methods (default: chosen on a 10% validation
        split of the training data); not used by bpmf, which learns its priors.
      reg_bias: L2 weight on the biases (default ``reg``), >= 0.
      batch_size: ratings per mini-batch (minibatch), >= 1.
      preset: ``surprise``: Surprise's SVD (per-rating SGD, 100 factors, 20 epochs, lr 0.005,
        reg 0.02, init N(0, 0.1)).
      folds: k-fold cross-validation over ``ratings`` (or synthetic data), >= 1.
      test_fraction: held-out share for the random split, in (0, 1).
      split: ``random``, or ``per_user`` (hold out a fraction of each user's ratings).
      users: synthetic data (no files given): number of users, >= 1.
      items: synthetic data: number of items, >= 1.
      rank: synthetic data: rank of the true low-rank model, >= 1.
      noise: synthetic data: rating noise standard deviation, >= 0.
      density: synthetic data: observed share of the user x item matrix, in (0, 1].
      devices: devices for data-parallel training (minibatch, fullbatch; the others use one), >= 1.
      seed: PRNG seed (initialisation, sampling, splits).
    """

    ratings: str | None = None
    train: str | None = None
    test: str | None = None
    method: Method = "bpmf"
    factors: int = 10
    epochs: int | None = None
    burn_in: int | None = None
    noise_precision: float | None = None
    lr: float | None = None
    reg: float | None = None
    reg_bias: float | None = None
    batch_size: int = 4096
    preset: str | None = None
    folds: int = 1
    test_fraction: float = 0.2
    split: Literal["random", "per_user"] = "random"
    # synthetic data (used when neither --ratings nor --train/--test is given)
    users: int = 943
    items: int = 1682
    rank: int = 2
    noise: float = 0.9
    density: float = 0.063
    devices: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.ratings and (self.train or self.test):
            raise ValueError("give either --ratings or --train/--test, not both")
        if bool(self.train) != bool(self.test):
            raise ValueError("--train and --test go together")
        if self.preset not in (None, "surprise"):
            raise ValueError(f"unknown preset {self.preset!r}; valid: surprise")
        check_fields_at_least(self, ("factors", "burn_in"), minimum=0)  # 0 factors: the biases-only model
        check_fields_at_least(self, ("epochs", "batch_size", "users", "items", "rank", "folds"))
        if self.folds > 1 and self.train:
            raise ValueError("--folds needs --ratings (or synthetic data), not a given --train/--test pair")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.noise_precision is not None and not self.noise_precision > 0:
            raise ValueError(f"noise_precision must be > 0, got {self.noise_precision}")
        for name in ("reg", "reg_bias"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.method == "bpmf" and self.preset is None and (self.reg is not None or self.reg_bias is not None):
            raise ValueError("--reg / --reg-bias apply to the optimising methods (als, minibatch, fullbatch, sgd); "
                             "bpmf learns its regularisation from the data")
        if self.burn_in is not None and self.epochs is not None and self.burn_in >= self.epochs:
            raise ValueError(f"burn_in must be < epochs, got burn_in {self.burn_in}, epochs {self.epochs}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.devices < 1:
            raise ValueError(f"devices must be >= 1, got {self.devices}")
        if self.devices > 1 and self.method == "minibatch" and self.preset is None and self.batch_size % self.devices:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of devices {self.devices}: "
                             f"each device takes an equal share of every batch")


QUICK = {"users": 120, "items": 90, "density": 0.2, "epochs": 4, "factors": 4}


def settings(config: Config) -> dict:
    """The fitting settings after the preset and per-method defaults are applied."""
    from jaxcalc.models.recommender import SURPRISE_SVD

    s = dict(method=config.method, factors=config.factors, epochs=config.epochs, lr=config.lr,
             reg=config.reg, reg_bias=config.reg_bias, init_scale=0.1, batch_size=config.batch_size)
    if config.preset == "surprise":
        s.update(SURPRISE_SVD)
    if s["lr"] is None:
        s["lr"] = DEFAULT_LR[s["method"]]
    if s["epochs"] is None:
        s["epochs"] = DEFAULT_EPOCHS[s["method"]]
    if s["method"] == "bpmf":
        burn_in = min(DEFAULT_BURN_IN, s["epochs"] - 1) if config.burn_in is None else config.burn_in
        if burn_in >= s["epochs"]:
            raise ValueError(f"burn_in must be < epochs, got burn_in {burn_in}, epochs {s['epochs']}")
        s.update(burn_in=burn_in, noise_precision=config.noise_precision)
    return s


# --------------------------------------------------------------------------- data


def _load(config: Config, key):
    """``(folds, info)``: a list of ``(train, test, expected_test or None)`` and data facts."""
    import jax

    from jaxcalc.data import movielens as ml

    if config.train:
        train, test = ml.load_train_test(config.train, config.test)
        return [(train, test, None)], {"data": f"{config.train} / {config.test}"}
    if config.ratings:
        data, expected, info = ml.load_ratings(config.ratings), None, {"data": config.ratings}
    else:
        syn = ml.synthetic_ratings(key, num_users=config.users, num_items=config.items, rank=config.rank,
                                   noise=config.noise, density=config.density)
        data, expected = syn.data, syn.expected
        info = {"data": f"synthetic {config.users}x{config.items}, rank {config.rank}, noise {config.noise}"}
    k_split = jax.random.fold_in(key, 1)
    if config.folds > 1:
        return [(tr, te, None if expected is None else expected[ite])
                for tr, te, _, ite in ml.kfold_splits(data, folds=config.folds, key=k_split, return_index=True)], info
    splitter = ml.random_split if config.split == "random" else ml.per_user_split
    tr, te, _, ite = splitter(data, test_fraction=config.test_fraction, key=k_split, return_index=True)
    return [(tr, te, None if expected is None else expected[ite])], info


def _seen(train):
    users = np.bincount(train.users, minlength=train.num_users) > 0
    items = np.bincount(train.items, minlength=train.num_items) > 0
    return users, items


# --------------------------------------------------------------------------- fitting


def fit_model(train, s: dict, key, *, reg, on_epoch=None, mesh=None):
    """``rec.fit`` on a :class:`~jaxcalc.data.movielens.Ratings` with the settings ``s`` (:func:`settings`)."""
    from jaxcalc.models import recommender as rec

    extra = {k: s[k] for k in ("burn_in", "noise_precision") if k in s}
    if reg is not None:
        extra["reg"] = reg
    return rec.fit(train.as_batch(), train.num_users, train.num_items, method=s["method"],
                   factors=s["factors"], epochs=s["epochs"], lr=s["lr"],
                   reg_bias=s["reg_bias"], init_scale=s["init_scale"], batch_size=s["batch_size"],
                   key=key, on_epoch=on_epoch, mesh=mesh, **extra)


def _mesh(config: Config, method: str):
    """``(mesh or None, summary facts)``: the data-parallel mesh for ``--devices N``.

    Only the gradient methods use it; BPMF, ALS and per-rating SGD run on one device (and say so).
    Raises ValueError (CLI exit 2) when fewer than N devices are available.
    """
    from jaxcalc import parallel
    from jaxcalc.models import recommender as rec

    facts = {"devices": config.devices}
    if config.devices == 1:
        return None, {**facts, "devices_used": 1, "data_parallel": False}
    mesh = parallel.make_mesh(config.devices)  # checks that N devices exist, for every method
    if method not in rec.DATA_PARALLEL_METHODS:
        return None, {**facts, "devices_used": 1, "data_parallel": False,
                      "devices_note": f"{method} is not data-parallel (only "
                                      f"{', '.join(rec.DATA_PARALLEL_METHODS)} are): it ran on one device"}
    return mesh, {**facts, "devices_used": config.devices, "data_parallel": True}


def select_reg(train, s: dict, key, *, grid=REG_GRID, fraction: float = 0.1, mesh=None):
    """Pick the L2 weight with the lowest RMSE on a validation split of the TRAINING ratings.

    Returns:
      ``(best_reg, {reg: validation_rmse}, seconds)``.
    """
    import jax

    from jaxcalc.data import movielens as ml
    from jaxcalc.models import recommender as rec

    t0 = time.perf_counter()
    fit_part, val = ml.random_split(train, test_fraction=fraction, key=key)
    seen_u, seen_i = _seen(fit_part)
    scores = {}
    for reg in grid:
        res = fit_model(fit_part, s, jax.random.fold_in(key, 1), reg=reg, mesh=mesh)
        scores[reg] = rec.evaluate(res.params, val.as_batch(), scale=_scale(train),
                                   seen_users=seen_u, seen_items=seen_i)["rmse"]
    return min(scores, key=scores.get), scores, time.perf_counter() - t0


def _scale(train):
    return float(train.ratings.min()), float(train.ratings.max())


def ranking_metrics(params, train, test, *, k: int = 10, threshold: float = RELEVANT) -> dict:
    """Mean precision@k and recall@k over test users with at least one relevant held-out rating.

    Each such user's top ``k`` is taken among all items they did not rate in training;
    relevant items are their test items rated ``>= threshold``.
    """
    from jaxcalc.models import recommender as rec

    seen_u, _ = _seen(train)
    rel = (test.ratings >= threshold) & (test.users >= 0) & (test.items >= 0)
    rel &= seen_u[np.maximum(test.users, 0)]
    users = np.unique(test.users[rel])
    if users.size == 0:
        return {"precision_at_10": float("nan"), "recall_at_10": float("nan"), "ranked_users": 0}
    order = np.argsort(train.users, kind="stable")
    bounds = np.searchsorted(train.users[order], users), np.searchsorted(train.users[order], users, side="right")
    exclude = {int(u): train.items[order][a:b] for u, a, b in zip(users, *bounds, strict=True)}
    _, top = rec.top_n(params, users, exclude, n=k)
    relevant = {}
    for u, i in zip(test.users[rel], test.items[rel], strict=True):
        relevant.setdefault(int(u), set()).add(int(i))
    precision, recall = [], []
    for u, row in zip(users, top, strict=True):
        hits = len(relevant[int(u)].intersection(row.tolist()))
        precision.append(hits / k)
        recall.append(hits / len(relevant[int(u)]))
    return {"precision_at_10": float(np.mean(precision)), "recall_at_10": float(np.mean(recall)),
            "ranked_users": int(users.size)}


def _one_fold(train, test, expected, s, reg, key, writer, fold, mesh=None):
    import jax

    from jaxcalc.models import recommender as rec

    scale = _scale(train)
    seen_u, seen_i = _seen(train)
    tb, teb = train.as_batch(), test.as_batch()

    def on_epoch(epoch, params):
        tr = rec.evaluate(params, tb, scale=scale)
        te = rec.evaluate(params, teb, scale=scale, seen_users=seen_u, seen_items=seen_i)
        row = {"fold": fold, "epoch": epoch + 1, "train_rmse": tr["rmse"], "test_rmse": te["rmse"]}
        writer.log(**row)
        return row

    res = fit_model(train, s, key, reg=reg, on_epoch=on_epoch, mesh=mesh)
    ev = rec.evaluate(res.params, teb, scale=scale, seen_users=seen_u, seen_items=seen_i)
    mu = float(train.ratings.mean())
    global_rmse = float(np.sqrt(np.mean((np.clip(mu, *scale) - test.ratings) ** 2)))
    if s["method"] == "bpmf":  # the biases-only model fitted the same way: its priors learned too
        bias = fit_model(train, dict(s, factors=0), jax.random.fold_in(key, 7), reg=None)
    else:
        bias_reg = s["reg_bias"] if s["reg_bias"] is not None else reg
        bias = rec.fit(tb, train.num_users, train.num_items, method="als", factors=0, epochs=5, reg=bias_reg,
                       key=jax.random.fold_in(key, 7))
    bias_ev = rec.evaluate(bias.params, teb, scale=scale, seen_users=seen_u, seen_items=seen_i)
    out = {
        "test_rmse": ev["rmse"], "test_mae": ev["mae"], "global_mean_rmse": global_rmse,
        "bias_only_rmse": bias_ev["rmse"], "fit_seconds": res.fit_seconds,
        "compile_seconds": res.compile_seconds, "train_rmse": res.epoch_metrics[-1]["train_rmse"],
        "unseen_test_users": ev["unseen_users"], "unseen_test_items": ev["unseen_items"],
        "train_ratings": len(train), "test_ratings": len(test),
    }
    if res.details is not None:  # bpmf: how many draws the posterior mean averages, and α
        alphas = res.details["noise_precision"][res.details["burn_in"]:]
        out.update(samples=res.details["samples"], burn_in=res.details["burn_in"],
                   noise_precision=float(np.mean(alphas)))
    out.update(ranking_metrics(res.params, train, test, k=10))
    if expected is not None:
        out["noise_floor_rmse"] = float(np.sqrt(np.mean((expected - test.ratings) ** 2)))
        out["rmse_over_noise_floor"] = out["test_rmse"] / out["noise_floor_rmse"]
    return out, res, ev["predictions"]


def run(config: Config, out_dir) -> dict:
    import jax

    from jaxcalc import parallel
    from jaxcalc.models import recommender as rec
    from jaxcalc.runio import RunWriter

    key = jax.random.key(config.seed)
    s = settings(config)
    mesh, device_facts = _mesh(config, s["method"])
    writer = RunWriter(out_dir, config)
    folds, info = _load(config, jax.random.fold_in(key, 0))

    results, curves = [], []
    reg, selection = s["reg"], None
    for f, (train, test, expected) in enumerate(folds):
        if s["reg"] is None and s["method"] in REGULARISED:
            reg, scores, secs = select_reg(train, s, jax.random.fold_in(key, 100 + f), mesh=mesh)
            selection = {"reg_scores": {str(k): v for k, v in scores.items()}, "selection_seconds": secs}
        out, res, preds = _one_fold(train, test, expected, s, reg, jax.random.fold_in(key, 200 + f), writer, f,
                                    mesh=mesh)
        out["reg"] = reg
        results.append(out)
        curves.append(res.epoch_metrics)

    summary = dict(results[0]) if len(results) == 1 else _fold_summary(results)
    summary.update({"method": s["method"], "factors": s["factors"], "epochs": s["epochs"],
                    "lr": None if s["method"] in ("als", "bpmf") else s["lr"],
                    "preset": config.preset, "device": str(jax.devices()[0])}, **info, **device_facts)
    if s["method"] in rec.DATA_PARALLEL_METHODS:
        # what one data-parallel gradient step all-reduces: the gradient of every trained parameter
        # (mu is fixed to the training mean)
        summary["allreduce_bytes_per_step"] = parallel.allreduce_bytes_per_step(
            {k: v for k, v in res.params.items() if k != "mu"})
    if selection is not None:
        summary.update(selection)
    # the whole fit as a user waits for it, compile apart: choosing reg (when it is chosen) + the fit
    summary["total_fit_seconds"] = summary["fit_seconds"] + (selection or {}).get("selection_seconds", 0.0)
    summary["ratings_per_second"] = summary["train_ratings"] * s["epochs"] / max(summary["fit_seconds"], 1e-9)
    _plots(writer, curves, folds[-1][1].ratings, preds, summary.get("noise_floor_rmse"))
    return writer.finish(summary)


def _fold_summary(results: list) -> dict:
    out = {"folds": len(results)}
    for k in results[0]:
        vals = np.array([r[k] for r in results], dtype=float)
        out[k] = float(vals.mean())
        if k.endswith("rmse") or k.endswith("mae") or k.endswith("at_10"):
            out[f"{k}_std"] = float(vals.std())
    out["per_fold_test_rmse"] = [r["test_rmse"] for r in results]
    return out


def _plots(writer, curves, true, pred, floor=None):
    from jaxcalc.runio import figure

    fig, ax = figure(figsize=(6, 4))
    for f, rows in enumerate(curves):
        ep = [r["epoch"] for r in rows]
        suffix = f" (fold {f + 1})" if len(curves) > 1 else ""
        ax.plot(ep, [r["train_rmse"] for r in rows], "-", color="C0", alpha=0.8,
                label="train" + suffix if f == 0 else None)
        ax.plot(ep, [r["test_rmse"] for r in rows], "-", color="C1", alpha=0.8,
                label="test" + suffix if f == 0 else None)
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label="noise floor (true expected rating)")
    ax.set(xlabel="epoch", ylabel="RMSE (clipped predictions)", title="RMSE per epoch")
    ax.legend()
    writer.savefig(fig, "rmse")

    fig, (a1, a2) = figure(1, 2, figsize=(10, 4))
    bins = np.linspace(min(true.min(), pred.min()) - 0.25, max(true.max(), pred.max()) + 0.25, 40)
    a1.hist(true, bins=bins, alpha=0.6, label="true")
    a1.hist(pred, bins=bins, alpha=0.6, label="predicted")
    a1.set(xlabel="rating", ylabel="count", title="test ratings: true vs predicted")
    a1.legend()
    levels = np.unique(true)
    if levels.size <= 12:
        a2.boxplot([pred[true == v] for v in levels], positions=levels, widths=0.3)
        a2.plot(levels, levels, "k--", lw=1)
        a2.set(xlabel="true rating", ylabel="predicted rating", title="predicted by true rating")
    else:
        a2.scatter(true, pred, s=2, alpha=0.3)
        a2.set(xlabel="true rating", ylabel="predicted rating")
    writer.savefig(fig, "predicted_vs_true")


# --------------------------------------------------------------------------- `jaxcalc recommend`


def recommend_command(argv) -> int:
    """``jaxcalc recommend --ratings PATH --user ID [--top N]``: a user's best unrated items."""
    import jax

    from jaxcalc.data import movielens as ml
    from jaxcalc.models import recommender as rec

    parser = argparse.ArgumentParser(prog="jaxcalc recommend",
                                     description="Fit on all ratings in PATH; print a user's top unrated items.")
    parser.add_argument("--ratings", required=True, help="u.data, ratings.dat or ratings.csv")
    parser.add_argument("--user", required=True, type=int, help="raw user id as in the file")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--method", choices=rec.METHODS, default=Config.method)
    parser.add_argument("--factors", type=int, default=Config.factors)
    parser.add_argument("--epochs", type=int, default=None, help="passes (default per method)")
    parser.add_argument("--reg", type=float, default=0.1, help="L2 weight of the optimising methods (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and 2
    prog = "jaxcalc recommend"
    try:
        if args.top < 1:
            raise ValueError(f"--top must be >= 1, got {args.top}")
        data = ml.load_ratings(args.ratings)
        try:
            u = data.user_index(args.user)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        lr = DEFAULT_LR[args.method]
        epochs = args.epochs or DEFAULT_EPOCHS[args.method]
        res = rec.fit(data.as_batch(), data.num_users, data.num_items, method=args.method, factors=args.factors,
                      epochs=epochs, lr=lr, reg=args.reg, burn_in=min(DEFAULT_BURN_IN, epochs - 1),
                      key=jax.random.key(args.seed))
    except (ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    rated = data.items[data.users == u]
    scores, top = rec.top_n(res.params, np.array([u]), {u: rated}, n=args.top)
    low, high = _scale(data)
    titles = ml.load_item_titles(args.ratings)
    print(f"user {args.user}: {rated.size} ratings; top {top.shape[1]} unrated of {data.num_items} items "
          f"({args.method}, {args.factors} factors)")
    for rank, (i, sc) in enumerate(zip(top[0], scores[0], strict=True), start=1):
        raw = int(data.item_ids[i])
        title = titles.get(raw, "")
        print(f"{rank:3d}. {np.clip(sc, low, high):4.2f}  item {raw:<7d} {title}")
    return 0
