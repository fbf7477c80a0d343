"""Biased matrix factorization for ratings, and the ways to fit it, one module each.

The model (Koren, Bell & Volinsky 2009), in :mod:`.model`::

    r̂(u, i) = μ + b_u + b_i + p_u · q_i

with the flax NNX module :class:`BiasedMF`, its pure parameter dict (:func:`init`),
:func:`predict`, the training objective :func:`loss`, :func:`evaluate` and :func:`top_n`.

Fitting methods (:func:`fit` dispatches on ``method``):

- ``"als"`` (:mod:`.als`): alternating least squares, each side's rows in closed form.
- ``"minibatch"`` / ``"fullbatch"`` (:mod:`.gradient`): optax gradient descent on the objective.
- ``"sgd"`` (:mod:`.funk_sgd`): Funk / Surprise per-rating SGD, a ``lax.scan`` over ratings.

Everything a user calls is importable from here: ``from jaxcalc.models import recommender as rec``.
"""
from jaxcalc.models.recommender.fitting import DATA_PARALLEL_METHODS, METHODS, FitResult, fit
from jaxcalc.models.recommender.funk_sgd import SURPRISE_SVD, sgd_epoch
from jaxcalc.models.recommender.model import (
    PARAM_KEYS,
    BiasedMF,
    evaluate,
    init,
    loss,
    pack,
    predict,
    to_module,
    top_n,
    unpack,
)

__all__ = [
    "DATA_PARALLEL_METHODS",
    "METHODS",
    "PARAM_KEYS",
    "SURPRISE_SVD",
    "BiasedMF",
    "FitResult",
    "evaluate",
    "fit",
    "init",
    "loss",
    "pack",
    "predict",
    "sgd_epoch",
    "to_module",
    "top_n",
    "unpack",
]
