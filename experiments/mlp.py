"""Backpropagation and the MLP: the article's example 2, digits and diabetes, gradients across depth.

Part A is the article's example 2 exactly: ``X = [[1, 2], [3, 4]]``, ``y = [2, 6]``,
Dense(10, relu) -> Dense(10, relu) -> Dense(1), Adam (lr 1e-3), MSE, 1000 full-batch epochs,
Keras' glorot-uniform kernels and zero biases. Keras compares predictions of shape (2, 1) with
``y`` of shape (2,) after squeezing; jaxcalc's MSE refuses that pair, so the targets are written
``y[:, None]``. The 1000 epochs are one ``lax.scan`` inside one ``jit``, ``vmap``-ed over 5 seeds,
with the learning rate a traced argument (the tuned rate reuses the compiled program). Adam is
``jaxcalc.optim.adam`` with Keras' ``epsilon = 1e-7`` (Keras adds it to ``sqrt(v_t)`` before the
bias correction, optax/jaxcalc after; with gradients far above 1e-7 the two agree closely).
Two examples and 151 parameters: a net can fit them exactly, but at lr 1e-3 1000 Adam steps
(each moves a weight by at most about lr) are often not enough; the article's "convergence
issues" remedy, a tuned learning rate (1e-2), fits all 5 seeds. The same training with the
hand-written backward pass (``jaxcalc.backprop``) instead of ``jax.grad`` gives the same
trajectory up to float32 rounding.

Part B: the MLP on scikit-learn's digits (stratified 80/20 split, standardised pixels),
trained with the hand-written backward pass inside ``jaxcalc.train.fit``, and its flax NNX twin
trained through ``nnx.split``/``nnx.merge`` from the same initial weights; then the diabetes
regression set, the MLP's test R² beside closed-form linear least squares.

Data parallelism (``--devices N``, ``jaxcalc.parallel``): the training runs whose batches split
evenly over N devices get ``mesh=parallel.make_mesh(N)`` in ``jaxcalc.train.fit``: each step's
batch is split across the devices, parameters and Adam state replicated, the gradient
all-reduced by XLA (``allreduce_bytes_per_step`` in the summary: the digits MLP's float32
gradient). The digits batch size is rounded down to a multiple of N (at least N; the summary's
``digits_batch_size`` is the one used; the defaults, 64 and ``--quick``'s 128, are multiples of
8, so ``--devices 8`` trains on the same batches as ``--devices 1``). Diabetes is full-batch: it
is split only when its training set (354 examples) divides by N, else it runs on one device.
The article's example 2 (2 examples, 5 seeds vmapped) cannot be split over 8 devices and is far
too small to gain: it always runs unsplit on one device. ``summary["data_parallel"]`` says how
each part ran. N devices agree with one device to float32 rounding (the batch means are summed
in a different order), not bit for bit. On a CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` simulates 8 devices.

Part C: gradient norms per layer at initialisation of a 10-layer net (width 64, digits
inputs, cross-entropy): sigmoid with naive N(0, 1) weights, sigmoid with Glorot weights, relu
with He weights. Going back one layer multiplies the gradient by ``Wᵀ diag(σ'(z))``. With
Glorot's small weights the pre-activations sit near 0 where ``σ' ≈ 1/4`` and ``‖W‖ ≈ 1``: a
factor of about 1/4 per layer, so the first layer's gradient is orders of magnitude below
the last layer's (seed 0: 6e-6). With N(0, 1) weights the units saturate (``σ'`` small) but
``‖W‖`` grows as ``sqrt(width)``, which nearly cancels: measured (seed 0), about 0.75 per layer,
a first layer 13x below the last, about one order of magnitude, not several. Relu with He init keeps the gradient's
scale (``2/fan_in`` variance): all layers
within about 2x.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcalc import backprop, optim, parallel, train
from jaxcalc._validate import check_fields_at_least
from jaxcalc.data.digits import load_digits_images, stratified_split
from jaxcalc.models.linear import least_squares, linear_apply
from jaxcalc.models.mlp import (
    init_mlp,
    mlp_apply,
    mlp_from_params,
    mlp_loss,
    mlp_to_params,
    nnx_mlp_loss,
    param_count,
)
from jaxcalc.runio import RunWriter, figure

NAME = "mlp"

ARTICLE_X = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)  # the article's example 2
ARTICLE_Y = np.array([2.0, 6.0], np.float32)
ARTICLE_SIZES = (2, 10, 10, 1)
KERAS_ADAM_EPS = 1e-7  # keras.optimizers.Adam(epsilon=1e-7), its default


DIGITS_IMAGES = 1797  # scikit-learn's digits
DIGITS_TRAIN_IMAGES = 1438  # its stratified 80% training split


@dataclass(frozen=True)
class Config:
    """Settings of the backpropagation / MLP experiment; each field is a ``jaxcalc run mlp`` option.

    Attributes:
      seed: PRNG seed for initial weights, data splits and batch orders (seeds seed, seed+1, ... for
        the article's example 2).
      epochs: full-batch Adam steps of the article's example 2, >= 1 (the article's 1000).
      lr: Adam's learning rate in example 2 as the article sets it (Keras' default 1e-3), > 0.
      tuned_lr: the tuned learning rate example 2 is also trained with, > 0.
      n_seeds: initialisations of example 2 trained side by side (vmapped), 1 to 256.
      digits_hidden: hidden-layer widths of the digits MLP, comma-separated, each >= 1.
      digits_epochs: mini-batch epochs on the digits, >= 1.
      digits_batch_size: images per digits mini-batch, 1 to 1438 (the training images); rounded
        down to a multiple of --devices.
      digits_lr: Adam's learning rate on the digits, > 0.
      diabetes_hidden: hidden-layer widths of the diabetes MLP, comma-separated, each >= 1.
      diabetes_epochs: full-batch AdamW steps on the diabetes data, >= 1.
      diabetes_lr: AdamW's learning rate on the diabetes data, > 0.
      diabetes_weight_decay: AdamW's decoupled weight decay on the diabetes data, >= 0.
      depth: layers of the net whose gradient norm per layer is measured, 2 to 64.
      depth_width: width of each hidden layer of that net, >= 1.
      depth_batch: digits images the per-layer gradient norms are taken on, 1 to 1797.
      devices: devices for data-parallel training (jax.devices()), >= 1; see the module docstring.
    """

    seed: int = 0
    # Part A: the article's example 2
    epochs: int = 1000
    lr: float = 1e-3
    tuned_lr: float = 1e-2
    n_seeds: int = 5
    # Part B: digits
    digits_hidden: tuple[int, ...] = (256, 128)
    digits_epochs: int = 40
    digits_batch_size: int = 64
    digits_lr: float = 1e-3
    # Part B: diabetes
    diabetes_hidden: tuple[int, ...] = (16,)
    diabetes_epochs: int = 1000
    diabetes_lr: float = 1e-3
    diabetes_weight_decay: float = 1e-2
    # Part C: gradients across depth
    depth: int = 10
    depth_width: int = 64
    depth_batch: int = 256
    # data parallelism: use this many of jax.devices() (see the module docstring)
    devices: int = 1

    def __post_init__(self):
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1:
            raise ValueError(f"devices must be an integer >= 1, got {self.devices!r}")
        check_fields_at_least(self, ("epochs", "n_seeds", "digits_epochs", "digits_batch_size", "diabetes_epochs",
                                     "depth_width", "depth_batch"))
        if not 2 <= self.depth <= 64:
            raise ValueError(f"depth must be in [2, 64] (at least a first and a last layer), got {self.depth}")
        if self.n_seeds > 256:
            raise ValueError(f"n_seeds must be in [1, 256], got {self.n_seeds}")
        if self.digits_batch_size > DIGITS_TRAIN_IMAGES:
            raise ValueError(f"digits_batch_size must be at most {DIGITS_TRAIN_IMAGES} (the digits training "
                             f"images), got {self.digits_batch_size}")
        if self.depth_batch > DIGITS_IMAGES:
            raise ValueError(f"depth_batch must be at most {DIGITS_IMAGES} (the digits images), "
                             f"got {self.depth_batch}")
        for name in ("lr", "tuned_lr", "digits_lr", "diabetes_lr"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite positive number, got {v}")
        if not (self.diabetes_weight_decay >= 0 and math.isfinite(self.diabetes_weight_decay)):
            raise ValueError(f"diabetes_weight_decay must be a finite number >= 0, got {self.diabetes_weight_decay}")
        for name in ("digits_hidden", "diabetes_hidden"):
            if not getattr(self, name) or any(int(h) < 1 for h in getattr(self, name)):
                raise ValueError(f"{name} must list one or more widths, each >= 1, got {getattr(self, name)}")


# --quick keeps every part meaningful (compiles, not epochs, are the cost: 1000 article epochs
# take milliseconds); only the digits network is narrower and shorter-trained.
QUICK = {"digits_hidden": (128,), "digits_epochs": 25, "diabetes_epochs": 300}


# ------------------------------------------------------------------ Part A: example 2
def article_loss(params, batch):
    """MSE of the article's net; ``batch["y"]`` is ``(n, 1)`` (``y[:, None]``)."""
    return mlp_loss(params, batch, loss="mse", activation="relu")


@partial(jax.jit, static_argnames=("epochs", "grad"))
def train_article(params, x, y, lr, *, epochs: int, grad: str = "autodiff"):
    """Full-batch Adam for ``epochs`` steps, one ``lax.scan``; ``vmap`` over seeds by the caller.

    Args:
      params: ``[(W, b), ...]`` (a leading seed axis when vmapped outside).
      x: ``(n, 2)``; y: ``(n, 1)``.
      lr: scalar learning rate (traced: changing it does not recompile).
      epochs: number of full-batch steps.
      grad: ``"autodiff"`` (``jax.grad``) or ``"backprop"`` (hand-written backward pass).

    Returns:
      ``(final_params, losses)`` with ``losses: (epochs + 1,)``, the loss before each step and
      after the last.
    """
    if grad not in ("autodiff", "backprop"):
        raise ValueError(f"grad must be 'autodiff' or 'backprop', got {grad!r}")
    opt = optim.adam(lr, eps=KERAS_ADAM_EPS)
    batch = {"x": x, "y": y}

    def value_and_grad(p):
        if grad == "autodiff":
            return jax.value_and_grad(article_loss)(p, batch)
        return backprop.backprop_value_and_grads(p, x, y, loss="mse", activation="relu")

    def step(carry, _):
        p, s = carry
        loss, g = value_and_grad(p)
        updates, s = opt.update(g, s, p)
        return (jax.tree.map(jnp.add, p, updates), s), loss

    (p, _), losses_ = jax.lax.scan(step, (params, opt.init(params)), None, length=epochs)
    return p, jnp.concatenate([losses_, article_loss(p, batch)[None]])


def _train_seeds(params, x, y, lr, epochs, grad="autodiff"):
    """vmap of :func:`train_article` over the leading seed axis of ``params``."""
    return jax.vmap(lambda p: train_article(p, x, y, lr, epochs=epochs, grad=grad))(params)


@jax.jit
def _grad_differences(params, x, y):
    """Per seed (leading axis of ``params``): max relative difference of the hand-written and
    the per-layer-``jax.vjp`` gradients from ``jax.grad``."""
    def one(p):
        ref = backprop.autodiff_grads(p, x, y)
        return (backprop.max_relative_difference(backprop.backprop_grads(p, x, y), ref),
                backprop.max_relative_difference(backprop.vjp_backprop_grads(p, x, y), ref))

    return jax.vmap(one)(params)


def _dead_units(params, x):
    """Hidden ReLU units inactive on every example (pre-activation <= 0 for all of ``x``)."""
    dead, h = 0, x
    for w, b in params[:-1]:
        z = h @ w + b[None, :]
        dead += int(np.sum(np.all(np.asarray(z) <= 0, axis=0)))
        h = np.maximum(np.asarray(z), 0)
    return dead


def _unstack(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def part_a(config: Config, writer: RunWriter) -> tuple[dict, dict]:
    x, y = jnp.asarray(ARTICLE_X), jnp.asarray(ARTICLE_Y)
    keys = jax.random.split(jax.random.key(config.seed), config.n_seeds)
    params0 = jax.jit(jax.vmap(lambda k: init_mlp(k, ARTICLE_SIZES, init="glorot_uniform")))(keys)
    try:  # the article's shapes, (2, 1) predictions vs (2,) targets, are refused
        article_loss(_unstack(params0, 0), {"x": x, "y": y})
        refusal = None
    except ValueError as err:
        refusal = str(err).split(";")[0]
    y2 = y[:, None]  # the explicit reshape

    t0 = time.perf_counter()
    compiled = jax.jit(_train_seeds, static_argnames=("epochs", "grad")).lower(
        params0, x, y2, jnp.float32(config.lr), config.epochs).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    p_art, loss_art = jax.block_until_ready(compiled(params0, x, y2, jnp.float32(config.lr)))
    train_ms = (time.perf_counter() - t0) * 1e3
    p_tuned, loss_tuned = compiled(params0, x, y2, jnp.float32(config.tuned_lr))  # same program
    p_bp, loss_bp = _train_seeds(params0, x, y2, jnp.float32(config.lr), config.epochs, "backprop")

    final = np.asarray(loss_art[:, -1], np.float64)
    tuned = np.asarray(loss_tuned[:, -1], np.float64)
    traj_diff = float(max(jnp.max(jnp.abs(a - b)) for a, b in
                          zip(jax.tree.leaves(p_bp), jax.tree.leaves(p_art), strict=True)))
    traj_loss_diff = float(jnp.max(jnp.abs(loss_bp - loss_art)))

    # Gradients at init, hand-written vs jax.grad vs per-layer jax.vjp, in float64.
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params0)
        rel, rel_vjp = _grad_differences(p64, jnp.asarray(ARTICLE_X, jnp.float64),
                                         jnp.asarray(ARTICLE_Y, jnp.float64)[:, None])
        rel, rel_vjp = np.asarray(rel), np.asarray(rel_vjp)

    rows = [{"part": "A", "epoch": e, "loss_lr": loss_art[:, e], "loss_tuned_lr": loss_tuned[:, e]}
            for e in range(config.epochs + 1)]
    writer.log_many(rows)

    fig, ax = figure(figsize=(7, 4))
    epochs_axis = np.arange(config.epochs + 1)
    floor = 1e-15  # float32 losses reach exactly 0, which a log axis cannot show
    for i in range(config.n_seeds):
        ax.semilogy(epochs_axis, np.maximum(np.asarray(loss_art[i]), floor), color="tab:blue", alpha=0.7,
                    label=f"lr {config.lr:g}" if i == 0 else None)
        ax.semilogy(epochs_axis, np.maximum(np.asarray(loss_tuned[i]), floor), color="tab:orange",
                    alpha=0.7, label=f"lr {config.tuned_lr:g}" if i == 0 else None)
    ax.set_xlabel("epoch (full batch)")
    ax.set_ylabel(f"MSE (floored at {floor:g})")
    ax.set_title(f"Article example 2: {config.n_seeds} seeds, Adam")
    ax.legend()
    writer.savefig(fig, "loss_curves")

    weights = {
        f"lr_{config.lr:g}": [np.asarray(a[0]).tolist() for pair in p_art for a in pair],
        f"lr_{config.tuned_lr:g}": [np.asarray(a[0]).tolist() for pair in p_tuned for a in pair],
        "layout": "Keras get_weights() order: [W1 (2,10), b1, W2 (10,10), b2, W3 (10,1), b3], seed index 0",
    }
    summary = {
        "article_lr": config.lr, "article_tuned_lr": config.tuned_lr, "article_epochs": config.epochs,
        "article_seeds": config.n_seeds,
        "article_shape_refusal": refusal,
        "article_param_count": param_count(_unstack(params0, 0)),
        "seed_final_loss": float(np.median(final)),
        "seed_final_losses": final.tolist(),
        "seed_final_loss_max": float(final.max()),
        "seed_final_loss_min": float(final.min()),
        # < 1: still falling at the last epoch (slow, not stuck)
        "seed_loss_ratio_last_100_epochs": (np.asarray(loss_art[:, -1]) /
                                            np.asarray(loss_art[:, max(0, config.epochs - 100)])).tolist(),
        "seed_dead_relu_units": [_dead_units(_unstack(p_art, i), ARTICLE_X) for i in range(config.n_seeds)],
        "article_predictions_seed0": np.asarray(mlp_apply(_unstack(p_art, 0), x))[:, 0].tolist(),
        "tuned_final_loss_max": float(tuned.max()),
        "tuned_final_losses": tuned.tolist(),
        "tuned_all_below_1e-6": bool(np.all(tuned < 1e-6)),
        "tuned_dead_relu_units": [_dead_units(_unstack(p_tuned, i), ARTICLE_X) for i in range(config.n_seeds)],
        "backprop_vs_autodiff_max_rel_diff": float(rel.max()),
        "vjp_vs_autodiff_max_rel_diff": float(rel_vjp.max()),
        "trajectory_max_param_diff": traj_diff,
        "trajectory_max_loss_diff": traj_loss_diff,
        "article_compile_s": compile_s,
        "article_train_ms": train_ms,
    }
    print(f"article example 2, {config.n_seeds} seeds x {config.epochs} Adam epochs: final MSE median "
          f"{summary['seed_final_loss']:.3g}, worst {summary['seed_final_loss_max']:.3g} at lr {config.lr:g}; worst "
          f"{summary['tuned_final_loss_max']:.3g} at lr {config.tuned_lr:g} (final weights in weights.json)",
          flush=True)
    print(f"hand-written backward pass vs jax.grad (float64): max relative difference "
          f"{summary['backprop_vs_autodiff_max_rel_diff']:.1e}", flush=True)
    return summary, weights


# ------------------------------------------------------------------ Part B: real data
def _standardise(train_x, *others):
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant pixels (always blank) stay 0
    return [((a - mean) / std).astype(np.float32) for a in (train_x, *others)]


def _split_mesh(mesh, n: int):
    """``mesh`` if ``n`` examples split evenly over its devices, else ``None`` (one device)."""
    return mesh if mesh is not None and n % mesh.size == 0 else None


def parallel_batch_size(batch_size: int, n: int, devices: int) -> int:
    """The digits batch size used on ``devices`` devices: ``min(batch_size, n)`` rounded down to
    a multiple of ``devices`` (at least ``devices``; unchanged when ``devices > n``)."""
    bs = min(batch_size, n)
    if devices > n:
        return bs
    return max(devices, bs // devices * devices)


def _digits(config: Config, writer: RunWriter, mesh=None) -> dict:
    """Part B, digits; ``mesh``: data-parallel training (``None``: one device)."""
    images, labels = load_digits_images()
    tr, te = stratified_split(labels, test_fraction=0.2, seed=config.seed)
    flat = images.reshape(len(images), -1).astype(np.float32)
    x_tr, x_te = _standardise(flat[tr], flat[te])
    y_tr, y_te = labels[tr], labels[te]
    sizes = (64, *tuple(config.digits_hidden), 10)
    k_init, k_fit = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))
    params0 = init_mlp(k_init, sizes, init="he")
    data = {"x": jnp.asarray(x_tr), "y": jnp.asarray(y_tr)}
    x_te_j, y_te_j = jnp.asarray(x_te), jnp.asarray(y_te)

    @jax.jit
    def evaluate(params):
        logits = mlp_apply(params, x_te_j)
        return (mlp_loss(params, {"x": x_te_j, "y": y_te_j}, loss="cross_entropy"),
                jnp.mean(jnp.argmax(logits, -1) == y_te_j))

    curve = []

    def log_epoch(epoch, params, metrics):
        test_loss, test_acc = evaluate(params)
        row = {"part": "B-digits", "epoch": epoch + 1, "train_loss": metrics["loss"],
               "test_loss": float(test_loss), "test_accuracy": float(test_acc)}
        curve.append(row)
        writer.log(**row)

    def backprop_ce(params, batch):  # jax.grad of this runs the hand-written backward pass
        return backprop.backprop_loss(params, batch["x"], batch["y"], loss="cross_entropy")

    # drop_last: the n % batch_size left-over examples (different ones each epoch) skip the epoch,
    # so every step has the same shape and the epoch compiles as one scan.
    devices = 1 if mesh is None else mesh.size
    batch_size = parallel_batch_size(config.digits_batch_size, len(y_tr), devices)
    mesh = _split_mesh(mesh, batch_size)
    fit_kw = dict(optimizer=optim.adam(config.digits_lr), method="minibatch", epochs=config.digits_epochs,
                  batch_size=batch_size, key=k_fit, drop_last=True, mesh=mesh)
    params, hist = train.fit(backprop_ce, params0, data, callback=log_epoch, **fit_kw)

    # The flax NNX twin, same initial weights, trained through nnx.split / nnx.merge.
    graphdef, state0 = nnx.split(mlp_from_params(params0))
    state, hist_nnx = train.fit(lambda s, b: nnx_mlp_loss(s, graphdef, b, loss="cross_entropy"),
                                state0, data, **fit_kw)
    nnx_params = mlp_to_params(nnx.merge(graphdef, state))
    _, nnx_acc = evaluate(nnx_params)
    _, test_acc = evaluate(params)
    train_acc = float(jnp.mean(jnp.argmax(mlp_apply(params, data["x"]), -1) == data["y"]))

    fig, ax = figure(figsize=(7, 4))
    ep = [r["epoch"] for r in curve]
    ax.semilogy(ep, [r["train_loss"] for r in curve], label="train loss (hand-written backprop)")
    ax.semilogy(ep, [r["test_loss"] for r in curve], label="test loss")
    ax.semilogy(np.arange(1, len(hist_nnx["loss"]) + 1), hist_nnx["loss"], "--", label="train loss (NNX twin)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"digits MLP {sizes}: test accuracy {float(test_acc):.4f}")
    ax.legend()
    writer.savefig(fig, "digits_loss")
    print(f"digits MLP {sizes}: test accuracy {float(test_acc):.4f} after {config.digits_epochs} epochs "
          f"(NNX twin {float(nnx_acc):.4f})", flush=True)
    return {
        "digits_epochs": config.digits_epochs,
        "digits_sizes": list(sizes),
        "digits_param_count": param_count(params),
        "digits_n_train": len(y_tr),
        "digits_n_test": len(y_te),
        "digits_batch_size": batch_size,
        "digits_data_parallel": mesh is not None,
        # one float32 gradient per parameter all-reduced per data-parallel step
        "allreduce_bytes_per_step": parallel.allreduce_bytes_per_step(params0),
        "digits_train_accuracy": train_acc,
        "digits_test_accuracy": float(test_acc),
        "nnx_digits_test_accuracy": float(nnx_acc),
        "nnx_vs_pure_max_train_loss_diff": float(np.max(np.abs(hist_nnx["loss"] - hist["loss"]))),
    }


def r2_score(pred, y) -> float:
    """Coefficient of determination ``1 − Σ(y − ŷ)² / Σ(y − ȳ)²``."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    return float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def _diabetes(config: Config, writer: RunWriter, mesh=None) -> dict:
    """Part B, diabetes (full batch); split over ``mesh`` when the training set divides evenly."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x, y = d.data.astype(np.float32), d.target.astype(np.float32)
    perm = np.random.default_rng(config.seed).permutation(len(y))
    n_test = round(0.2 * len(y))
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    x_tr, x_te = _standardise(x[tr], x[te])
    y_mean, y_std = float(y[tr].mean()), float(y[tr].std())
    t_tr = ((y[tr] - y_mean) / y_std)[:, None]  # standardised targets, (n, 1)

    lin = least_squares(jnp.asarray(x_tr), jnp.asarray(y[tr]))
    lin_r2 = r2_score(linear_apply(lin, jnp.asarray(x_te)), y[te])

    sizes = (x.shape[1], *tuple(config.diabetes_hidden), 1)
    params0 = init_mlp(jax.random.fold_in(jax.random.key(config.seed), 2), sizes, init="he")
    data = {"x": jnp.asarray(x_tr), "y": jnp.asarray(t_tr)}
    mesh = _split_mesh(mesh, len(tr))
    opt = optim.adamw(config.diabetes_lr, weight_decay=config.diabetes_weight_decay)
    params, hist = train.fit(article_loss, params0, data, optimizer=opt, method="batch",
                             epochs=config.diabetes_epochs, mesh=mesh)
    pred = np.asarray(mlp_apply(params, jnp.asarray(x_te)))[:, 0] * y_std + y_mean
    writer.log_many({"part": "B-diabetes", "epoch": e + 1, "train_loss": float(v)}
                    for e, v in enumerate(hist["loss"]))
    mlp_r2 = r2_score(pred, y[te])
    print(f"diabetes: test R² {mlp_r2:.3f} (MLP) vs {lin_r2:.3f} (linear least squares)", flush=True)
    return {
        "diabetes_sizes": list(sizes),
        "diabetes_n_train": len(tr),
        "diabetes_data_parallel": mesh is not None,
        "diabetes_mlp_test_r2": mlp_r2,
        "diabetes_linear_test_r2": lin_r2,
    }


# ------------------------------------------------------------------ Part C: depth
@partial(jax.jit, static_argnames="activation")
def layer_grad_norms(params, x, labels, *, activation):
    """Frobenius norm of ``∂L/∂W_l`` per layer, cross-entropy loss: by the hand-written backward
    pass and by ``jax.grad`` (a check), each ``(L,)``."""
    grads = backprop.backprop_grads(params, x, labels, loss="cross_entropy", activation=activation)
    ref = backprop.autodiff_grads(params, x, labels, loss="cross_entropy", activation=activation)
    return (jnp.stack([jnp.linalg.norm(dw) for dw, _ in grads]),
            jnp.stack([jnp.linalg.norm(dw) for dw, _ in ref]))


def part_c(config: Config, writer: RunWriter) -> dict:
    images, labels = load_digits_images()
    x = images.reshape(len(images), -1).astype(np.float32)
    (x,) = _standardise(x)
    idx = np.random.default_rng(config.seed).permutation(len(labels))[: config.depth_batch]
    xb, yb = jnp.asarray(x[idx]), jnp.asarray(labels[idx])
    sizes = (64,) + (config.depth_width,) * (config.depth - 1) + (10,)
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    nets = {
        "sigmoid, N(0, 1) init": ("sigmoid", init_mlp(key, sizes, init="normal")),
        "sigmoid, Glorot init": ("sigmoid", init_mlp(key, sizes, init="glorot")),
        "relu, He init": ("relu", init_mlp(key, sizes, init="he")),
    }
    norms = {}
    for name, (act, params) in nets.items():
        mine, ref_norms = layer_grad_norms(params, xb, yb, activation=act)
        norms[name] = np.asarray(mine, np.float64)
        if not np.allclose(norms[name], np.asarray(ref_norms), rtol=1e-4, atol=0):
            raise RuntimeError(f"{name}: hand-written and jax.grad layer norms disagree")
    layers = np.arange(1, config.depth + 1)
    for l_idx in range(config.depth):
        writer.log(part="C", layer=int(layers[l_idx]),
                   **{k.split(",")[0] + "_" + k.split(",")[1].strip().split()[0]: float(v[l_idx])
                      for k, v in norms.items()})
    fig, ax = figure(figsize=(7, 4))
    for name, v in norms.items():
        ax.semilogy(layers, v, "o-", label=name)
    ax.set_xlabel("layer (1 = next to the input)")
    ax.set_ylabel("‖∂L/∂W‖ at initialisation")
    ax.set_title(f"{config.depth}-layer MLP on digits: gradient norm per layer")
    ax.legend()
    writer.savefig(fig, "grad_norms_per_layer")
    sig, relu = norms["sigmoid, N(0, 1) init"], norms["relu, He init"]
    sig_glorot = norms["sigmoid, Glorot init"]
    print(f"{config.depth}-layer net, first/last layer gradient norm: sigmoid N(0, 1) {sig[0] / sig[-1]:.2g}, "
          f"sigmoid Glorot {sig_glorot[0] / sig_glorot[-1]:.2g}, relu He {relu[0] / relu[-1]:.2g}", flush=True)
    return {
        "gradnorm_layers": config.depth,
        "gradnorm_sigmoid_normal": sig.tolist(),
        "gradnorm_sigmoid_glorot": norms["sigmoid, Glorot init"].tolist(),
        "gradnorm_relu_he": relu.tolist(),
        "gradnorm_sigmoid_first_over_last": float(sig[0] / sig[-1]),
        "gradnorm_sigmoid_glorot_first_over_last": float(sig_glorot[0] / sig_glorot[-1]),
        "gradnorm_relu_he_max_over_min": float(relu.max() / relu.min()),
    }


# ------------------------------------------------------------------ run
def _parallel_note(summary: dict, devices: int) -> dict:
    """How each part ran, for ``summary["data_parallel"]``."""
    if devices == 1:
        one = "one device"
        return {"article_example_2": one, "digits": one, "diabetes": one}
    split = f"split over {devices} devices (params replicated, gradients all-reduced)"
    return {
        "article_example_2": f"one device, not split: 2 examples ({summary['article_param_count']} "
                             f"parameters, {len(summary['seed_final_losses'])} seed(s) vmapped)",
        "digits": (f"batches of {summary['digits_batch_size']} " + split if summary["digits_data_parallel"]
                   else f"one device: batch {summary['digits_batch_size']} does not split over {devices}"),
        "diabetes": (f"full batch of {summary['diabetes_n_train']} " + split if summary["diabetes_data_parallel"]
                     else f"one device: the full batch of {summary['diabetes_n_train']} examples "
                          f"does not split over {devices}"),
    }


def run(config: Config, out_dir) -> dict:
    # Before any output: too many devices -> ValueError (CLI exit 2) naming what is available.
    mesh = parallel.make_mesh(config.devices) if config.devices > 1 else None
    writer = RunWriter(out_dir, config)
    summary, weights = part_a(config, writer)
    from jaxcalc.runio import write_json_atomic

    write_json_atomic(writer.out_dir / "weights.json", weights)
    summary.update(_digits(config, writer, mesh))
    summary.update(_diabetes(config, writer, mesh))
    summary.update(part_c(config, writer))
    summary["devices"] = config.devices
    summary["data_parallel"] = _parallel_note(summary, config.devices)
    return writer.finish(summary)
