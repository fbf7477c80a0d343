"""The article's CNN image classifier (flax NNX + optax Adam), with orbax checkpoints and resume.

Data: ``--data-dir`` (or ``$JAXCALC_DATA``) holding CIFAR-10 (Python or binary batches) or a
folder of images ``train/<class>/*``, ``test/<class>/*``; without it, scikit-learn's bundled
8x8 digits. Pixels are scaled to ``[0, 1]`` and standardised per channel with the training
set's mean and std. The model is :class:`jaxcalc.models.cnn.CNN`, split once into
``(apply, params)``; training is Adam (cosine-decayed learning rate by default) as one jitted step
(``value_and_grad`` of the cross-entropy, Adam update, metrics)
scanned over a device-resident, shuffled epoch in chunks, so a tqdm bar can advance between
chunks. ``--augment`` adds the standard CIFAR-10 augmentation inside that compiled step: each
image of the batch is zero-padded by 4 pixels, randomly cropped back to size and mirrored
left-right with probability 1/2 (:func:`jaxcalc.data.augment.random_crop_flip`), keyed by the
run's PRNG key, so a seed gives the same run bit for bit.

After every epoch a checkpoint (params, optimizer state, step, PRNG key, config and the metrics
so far) goes to ``out_dir/checkpoints``; ``--resume`` continues from the newest checkpoint that
restores cleanly and ends with the same parameters, bit for bit, as a run never interrupted. A
damaged newer checkpoint (truncated or altered array file, empty metadata, no commit marker, an
unfinished save) is named in one line and set aside as ``<epoch>.damaged``, and its epochs are
trained again; ``--resume`` with nothing to resume says so and starts from the beginning.

``--devices N``: data-parallel over the first N devices (``jaxcalc.parallel``): each step's batch
is split across them, everything else is replicated, and XLA all-reduces the gradients; the
figures equal those of one device to float32 rounding (on a CPU,
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` simulates 8 devices). Checkpoints hold a
single device's copy, so ``predict`` and ``--resume`` work on any device count.

``jaxcalc predict --checkpoint DIR IMAGE...`` classifies image files with a trained run.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcalc import losses, parallel, runio
from jaxcalc.checkpoint import Checkpointer, describe_skipped
from jaxcalc.data.augment import random_crop_flip
from jaxcalc.data.dataset import ImageDataset
from jaxcalc.data.images import read_image
from jaxcalc.data.sources import load_image_dataset
from jaxcalc.models.cnn import CNNSpec, abstract_params, init_cnn, make_loss, param_count

NAME = "cnn"
PROGRESS_UPDATES = 20  # tqdm updates per epoch: the epoch is scanned in this many chunks
AUGMENT_PAD = 4  # --augment: zero padding on each side before the random crop, in pixels
EVAL_BATCH = 500
_COMPILED: dict = {}  # executables per (model, data, batch) shape, reused by later runs in-process


@dataclasses.dataclass(frozen=True)
class Config:
    """Training options; each becomes a ``jaxcalc run cnn`` flag.

    Attributes:
      data_dir: CIFAR-10 (python or binary batches) or train/<class>/ + test/<class>/ image folders;
        default $JAXCALC_DATA, else scikit-learn's 8x8 digits.
      epochs: passes over the training set, >= 1.
      batch_size: images per step, >= 1 and a multiple of --devices.
      lr: Adam's (peak) learning rate, a finite number > 0.
      lr_schedule: cosine (decay the learning rate to 0 over the run) or constant.
      augment: random crop (4 zero pixels of padding each side) and random horizontal flip of every
        training image, on device inside the compiled step, keyed by the run's seed (test images never).
      resume: continue from the newest checkpoint in --out that restores cleanly.
      devices: data-parallel over the first N devices (batch split, parameters replicated), >= 1.
      seed: PRNG seed for the initial weights, the shuffling, dropout and augmentation.
    """

    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    augment: bool = False
    resume: bool = False
    devices: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.devices < 1:
            raise ValueError(f"devices must be >= 1, got {self.devices}")
        if self.batch_size % self.devices:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of devices={self.devices}: each "
                             f"device gets batch_size / devices images per step")


QUICK = {"epochs": 8}  # compiles dominate: 8 digits epochs cost about a second more than 2

# Fields that must match when resuming. A cosine schedule depends on the epoch count too; with a
# constant learning rate, --resume --epochs N may extend a finished run.
_RESUME_FIXED = ("data_dir", "batch_size", "lr", "lr_schedule", "augment", "seed")


@functools.lru_cache(maxsize=8)
def _programs(spec: CNNSpec, max_value: int, chunk: int, mesh=None, augment: bool = False):
    """The jitted chunk-of-epoch trainer and evaluator for one model shape (cached across runs).

    With ``augment`` each step crops and flips its batch at random
    (:func:`jaxcalc.data.augment.random_crop_flip`, key ``fold_in(aug_key, step)``) before
    scaling it.

    With a ``mesh`` (``jaxcalc.parallel.make_mesh(N)``) each step's batch is split across the
    mesh's devices and everything else (params, optimizer state, data, epoch plan, keys) is
    replicated: XLA all-reduces the gradients. The outputs are replicated too, so they feed the
    next chunk unchanged. Without one, the programs are the plain single-device ones.
    """
    apply, _ = abstract_params(spec)
    loss_fn = make_loss(apply)
    scale = 1.0 / max_value

    def to_float(x, norm):
        """uint8 ``(n, h, w, c)`` -> float, standardised per channel: ``(x / max_value - mean) / std``."""
        mean, std = norm
        return (x.astype(jnp.float32) * scale - mean[None, None, None, :]) / std[None, None, None, :]

    optimizer = make_optimizer()

    def train_chunk(params, opt_state, x_all, y_all, plan, valid, drop_key, aug_key, chunk_index, sched, norm):
        """Run ``chunk`` steps of the epoch plan starting at step ``chunk_index * chunk``.

        Steps past the end of the epoch (``valid`` false) leave the state untouched. ``sched`` is
        ``(peak_lr, cosine, first_step, total_steps)``: step ``t`` (counted over the whole run)
        uses ``peak_lr * (1 + cos(pi * t / total_steps)) / 2`` when ``cosine`` else ``peak_lr``.
        """
        peak_lr, cosine, first_step, total_steps = sched
        start = chunk_index * chunk
        idx = jax.lax.dynamic_slice_in_dim(plan, start, chunk)
        ok = jax.lax.dynamic_slice_in_dim(valid, start, chunk)
        steps = start + jnp.arange(chunk)

        def step(carry, inp):
            params, opt_state = carry
            batch_idx, is_valid, step_no = inp

            def do(_):
                x = x_all[batch_idx]  # (batch, h, w, c) uint8
                if augment:
                    x = random_crop_flip(jax.random.fold_in(aug_key, step_no), x, pad=AUGMENT_PAD)
                batch = {"x": to_float(x, norm), "y": y_all[batch_idx]}
                if mesh is not None:  # split the step's images across the devices
                    batch = parallel.constrain_batch(batch, mesh)
                key = jax.random.fold_in(drop_key, step_no)
                t = (first_step + step_no).astype(jnp.float32) / total_steps.astype(jnp.float32)
                lr = jnp.where(cosine, peak_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * t)), peak_lr)
                opt_in = opt_state._replace(hyperparams=dict(opt_state.hyperparams, learning_rate=lr))
                (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
                updates, new_opt_state = optimizer.update(grads, opt_in, params)
                correct = jnp.sum(jnp.argmax(logits, axis=-1) == batch["y"])
                return (optax.apply_updates(params, updates), new_opt_state), (loss, correct)

            def skip(_):
                return (params, opt_state), (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

            return jax.lax.cond(is_valid, do, skip, None)

        (params, opt_state), (loss, correct) = jax.lax.scan(step, (params, opt_state), (idx, ok, steps))
        return params, opt_state, jnp.sum(loss), jnp.sum(correct)

    def evaluate(params, x, y, mask, norm):
        """Mean loss, accuracy and predictions over ``x`` padded to ``(k, EVAL_BATCH, h, w, c)``."""

        def body(_, inp):
            xb, yb, mb = inp
            logits = apply(params, to_float(xb, norm), train=False)
            per_example = losses.softmax_cross_entropy_with_integer_labels(logits, yb)
            pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return None, (jnp.sum(jnp.where(mb, per_example, 0.0)), jnp.sum(mb & (pred == yb)), pred)

        _, (loss, correct, pred) = jax.lax.scan(body, None, (x, y, mask))
        n = jnp.sum(mask)
        return jnp.sum(loss) / n, jnp.sum(correct) / n, pred.reshape(-1)

    if mesh is None:
        return jax.jit(train_chunk), jax.jit(evaluate)
    rep = parallel.replicated(mesh)  # evaluation runs whole on every device
    return jax.jit(train_chunk, out_shardings=rep), jax.jit(evaluate, out_shardings=rep)


def make_optimizer():
    """Adam with the learning rate held in the optimizer state (a traced value: no recompiles)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


def _plan(key, n_train: int, batch_size: int, steps_padded: int):
    """Shuffled indices for one epoch: ``(steps_padded, batch_size)`` int32 and a validity mask."""
    steps = n_train // batch_size
    perm = jax.random.permutation(key, n_train)[: steps * batch_size].reshape(steps, batch_size)
    pad = steps_padded - steps
    plan = jnp.concatenate([perm, jnp.zeros((pad, batch_size), perm.dtype)]).astype(jnp.int32)
    valid = jnp.arange(steps_padded) < steps
    return plan, valid


def _sched(config: Config, first_step: int, steps_per_epoch: int):
    """Traced learning-rate schedule arguments for ``train_chunk`` (no recompiles when they change)."""
    return (np.float32(config.lr), np.bool_(config.lr_schedule == "cosine"), np.int32(first_step),
            np.int32(config.epochs * steps_per_epoch))


def _pad_eval(x: np.ndarray, y: np.ndarray):
    n = x.shape[0]
    k = -(-n // EVAL_BATCH)
    pad = k * EVAL_BATCH - n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]).reshape((k, EVAL_BATCH, *x.shape[1:]))
    yp = np.concatenate([y, np.zeros((pad,), y.dtype)]).reshape(k, EVAL_BATCH)
    mp = (np.arange(k * EVAL_BATCH) < n).reshape(k, EVAL_BATCH)
    return jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(mp)


def _local_copy(tree):
    """One device's copy of every (replicated) leaf: single-device arrays, no transfer."""
    return jax.tree.map(lambda x: x.addressable_data(0), tree)


def _spec_for(data: ImageDataset) -> CNNSpec:
    h, w, c = data.image_shape
    return CNNSpec(height=h, width=w, channels=c, num_classes=data.num_classes)


def channel_stats(data: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the training images scaled to ``[0, 1]``: ``(c,)`` each."""
    x = data.x_train.reshape(-1, data.image_shape[-1]).astype(np.float64) / data.max_value
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def _model_meta(data: ImageDataset, spec: CNNSpec) -> dict:
    mean, std = channel_stats(data)
    return {"spec": dataclasses.asdict(spec), "class_names": list(data.class_names),
            "max_value": data.max_value, "dataset": data.name,
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _check_resumable(meta: dict, config: Config, model_meta: dict) -> None:
    """Raise ``ValueError`` when a checkpoint's config or data differ from this run's."""
    saved = meta.get("config", {})
    for f in _RESUME_FIXED + (("epochs",) if config.lr_schedule == "cosine" else ()):
        was = saved.get(f, Config.__dataclass_fields__[f].default)  # fields added later: their default
        if was != getattr(config, f):
            raise ValueError(f"cannot resume: checkpoint has {f}={was!r} but this run has {f}={getattr(config, f)!r}")
    if meta.get("model") != model_meta:
        raise ValueError(f"cannot resume: the data in {config.data_dir or 'digits'} differs from the "
                         f"checkpoint's (image shape, classes or dataset)")


def _resume_from(ckpt: Checkpointer, config: Config, model_meta: dict, template: dict):
    """The newest checkpoint that restores cleanly (``Restored``), or ``None`` when there is none yet.

    Prints one line when it starts from scratch, or when it skips damaged checkpoints (set aside
    as ``<epoch>.damaged``, so those epochs are trained and saved again). Raises
    ``CheckpointError`` (a ``ValueError``) when checkpoints exist but none restores.
    """
    def targets(meta):
        _check_resumable(meta, config, model_meta)
        return template

    try:
        found = ckpt.restore_newest(targets)
    except FileNotFoundError as e:
        print(f"--resume: {e}; nothing to resume, starting from the beginning", file=sys.stderr)
        return None
    if found.skipped:
        moved = [m.name for m in (ckpt.set_aside(s) for s, _ in found.skipped) if m is not None]
        aside = f"; set aside as {', '.join(moved)}" if moved else ""
        print(f"{describe_skipped(found.skipped, ckpt.directory)}{aside}; resuming from checkpoint {found.step}",
              file=sys.stderr)
    return found


def run(config: Config, out_dir) -> dict:
    """Train, evaluate each epoch, checkpoint each epoch, write plots and summary.json."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    # Data parallelism: ValueError (CLI exit 2) when fewer than config.devices devices exist.
    mesh = parallel.make_mesh(config.devices) if config.devices > 1 else None
    data = load_image_dataset(config.data_dir)
    n_train = data.x_train.shape[0]
    if n_train < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} is larger than the training set ({n_train} images)")
    spec = _spec_for(data)
    steps = n_train // config.batch_size
    chunk = -(-steps // min(steps, PROGRESS_UPDATES))
    n_chunks = -(-steps // chunk)
    train_chunk, evaluate = _programs(spec, data.max_value, chunk, mesh, config.augment)
    # Multi-device: replicate every input of the compiled programs (the batch is split inside).
    place = (lambda tree: tree) if mesh is None else functools.partial(parallel.replicate, mesh=mesh)
    # Checkpoints hold one device's copy, so that a run on another number of devices (predict,
    # --resume) can restore them: orbax refuses arrays saved with a different device topology.
    unplace = (lambda tree: tree) if mesh is None else _local_copy

    key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(key)
    _, params = init_cnn(init_key, spec)
    optimizer = make_optimizer()
    opt_state = optimizer.init(params)
    step = 0
    history: list[dict] = []
    start_epoch = 0

    ckpt_dir = out_dir / "checkpoints"
    existing = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())
    if existing and not config.resume:
        raise ValueError(f"{ckpt_dir} already holds checkpoints: pass --resume to continue, or choose a new --out")
    ckpt = Checkpointer(ckpt_dir, max_to_keep=2)
    resumed_from = None
    try:
        if config.resume:
            template = {"params": params, "train": {"opt_state": opt_state, "step": jnp.int32(0), "key": train_key}}
            found = _resume_from(ckpt, config, _model_meta(data, spec), template)
            if found is not None:
                params = found.trees["params"]
                opt_state, step, train_key = (found.trees["train"][k] for k in ("opt_state", "step", "key"))
                step = int(step)
                history = list(found.meta["history"])
                start_epoch = resumed_from = int(found.meta["epoch"])

        writer = runio.RunWriter(out_dir, config)
        writer.metrics_path.write_text("")  # rewritten from the checkpoint's history on resume
        writer.log_many(history)

        x_train, y_train = jax.device_put(data.x_train), jax.device_put(data.y_train)
        x_eval, y_eval, m_eval = _pad_eval(data.x_test, data.y_test)
        norm = tuple(jnp.asarray(v) for v in channel_stats(data))
        params, opt_state, x_train, y_train, x_eval, y_eval, m_eval, norm = place(
            (params, opt_state, x_train, y_train, x_eval, y_eval, m_eval, norm))
        t0 = time.perf_counter()
        shapes = (spec, data.max_value, chunk, x_train.shape, config.batch_size, n_chunks, x_eval.shape, mesh,
                  config.augment)
        if shapes not in _COMPILED:  # compile ahead of time, once per shape, so timings exclude it
            _COMPILED[shapes] = (
                train_chunk.lower(params, opt_state, x_train, y_train,
                                  *place(_plan(train_key, n_train, config.batch_size, n_chunks * chunk)),
                                  place(train_key), place(train_key), 0, _sched(config, 0, steps), norm).compile(),
                evaluate.lower(params, x_eval, y_eval, m_eval, norm).compile(),
            )
        compiled_train, compiled_eval = _COMPILED[shapes]
        compile_seconds = time.perf_counter() - t0

        train_seconds = 0.0
        images_trained = 0
        for epoch in range(start_epoch + 1, config.epochs + 1):
            train_key, epoch_key = jax.random.split(train_key)
            # (with JAX's default partitionable threefry, the first two equal a 2-way split's)
            perm_key, drop_key, aug_key = jax.random.split(epoch_key, 3)
            plan, valid = place(_plan(perm_key, n_train, config.batch_size, n_chunks * chunk))
            drop_key, aug_key = place((drop_key, aug_key))
            loss_sum = jnp.zeros((), jnp.float32)
            correct = jnp.zeros((), jnp.int32)
            t_epoch = time.perf_counter()
            with tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="step", leave=False,
                      file=sys.stderr, disable=None) as bar:
                for c in range(n_chunks):
                    params, opt_state, ls, cs = compiled_train(params, opt_state, x_train, y_train, plan, valid,
                                                               drop_key, aug_key, c, _sched(config, step, steps),
                                                               norm)
                    loss_sum, correct = loss_sum + ls, correct + cs
                    done = min((c + 1) * chunk, steps)
                    bar.set_postfix(loss=f"{float(ls) / (done - c * chunk):.4f}")
                    bar.update(done - bar.n)
            train_seconds += time.perf_counter() - t_epoch
            images_trained += steps * config.batch_size
            step += steps
            test_loss, test_acc, _ = compiled_eval(params, x_eval, y_eval, m_eval, norm)
            row = {"epoch": epoch, "step": step,
                   "train_loss": float(loss_sum) / steps,
                   "train_accuracy": int(correct) / (steps * config.batch_size),
                   "test_loss": float(test_loss), "test_accuracy": float(test_acc)}
            history.append(row)
            writer.log(**row)
            ckpt.save(epoch, {"params": unplace(params),
                              "train": {"opt_state": unplace(opt_state), "step": jnp.int32(step), "key": train_key}},
                      meta={"epoch": epoch, "config": dataclasses.asdict(config),
                            "model": _model_meta(data, spec), "history": history})
            print(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f} acc "
                  f"{row['train_accuracy']:.4f} | test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}",
                  file=sys.stderr)
        ckpt.wait()
    finally:
        ckpt.close()

    test_loss, test_acc, pred = compiled_eval(params, x_eval, y_eval, m_eval, norm)
    pred = np.asarray(pred)[: data.y_test.shape[0]]
    _plots(writer, history, data, pred)
    summary = {
        "dataset": data.name,
        "epochs": config.epochs,
        "test_accuracy": float(test_acc),
        "test_loss": float(test_loss),
        "train_accuracy": history[-1]["train_accuracy"] if history else None,
        "train_images_per_second": images_trained / train_seconds if train_seconds else None,
        "param_count": param_count(params),
        "devices": config.devices,
        "allreduce_bytes_per_step": parallel.allreduce_bytes_per_step(params),
        "image_shape": list(data.image_shape),
        "train_images": n_train,
        "test_images": int(data.y_test.shape[0]),
        "compile_seconds": compile_seconds,
        "resumed_from_epoch": resumed_from,
        "checkpoint": str(ckpt_dir),
        "device": str(jax.devices()[0]),
    }
    return writer.finish(summary)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(k, k)`` counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _plots(writer: runio.RunWriter, history: list[dict], data: ImageDataset, pred: np.ndarray) -> None:
    epochs = [r["epoch"] for r in history]
    for metric in ("loss", "accuracy"):
        fig, ax = runio.figure(figsize=(5, 3.5))
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label="train (with dropout)")
        ax.plot(epochs, [r[f"test_{metric}"] for r in history], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{data.name}: {metric}")
        ax.legend()
        writer.savefig(fig, metric)

    k = data.num_classes
    cm = confusion_matrix(data.y_test, pred, k)
    fig, ax = runio.figure(figsize=(0.5 * k + 2.5, 0.5 * k + 2))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ticks = range(k)
    ax.set_xticks(ticks, data.class_names, rotation=60, fontsize=7)
    ax.set_yticks(ticks, data.class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(f"confusion matrix (test accuracy {np.trace(cm) / cm.sum():.3f})")
    writer.savefig(fig, "confusion_matrix")

    # One mosaic image in one axes (24 subplots would cost seconds of matplotlib time).
    rows, cols = 4, 6
    n = min(rows * cols, data.x_test.shape[0])
    h, w, c = data.image_shape
    gap = max(1, h // 8)
    mosaic = np.full((rows * (h + gap), cols * (w + gap), c), 1.0, np.float32)  # white gaps
    for i in range(n):
        r, q = divmod(i, cols)
        mosaic[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = data.x_test[i] / data.max_value
    fig, ax = runio.figure(figsize=(cols * 1.3, rows * 1.45))
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    for i in range(n):
        r, q = divmod(i, cols)
        ok = pred[i] == data.y_test[i]
        ax.text(q * (w + gap) + w / 2 - 0.5, r * (h + gap) - 0.5,
                f"{data.class_names[pred[i]]} (true {data.class_names[data.y_test[i]]})",
                ha="center", va="bottom", fontsize=6, color="green" if ok else "red")
    ax.set_title("test images: predicted (true)", fontsize=9, pad=12)
    writer.savefig(fig, "test_predictions")


def load_predictor(checkpoint_dir: Path | str):
    """``(predict_probs, meta)`` from a run's checkpoint folder (or its run folder).

    ``predict_probs(images (n, h, w, c) float in [0, 1]) -> (n, classes)`` softmax probabilities.
    The newest checkpoint that restores cleanly is used; when newer ones are damaged, one line
    on stderr names them and the one used. Nothing in the folder is changed.

    Raises:
      FileNotFoundError: no such folder, or no complete checkpoint in it.
      CheckpointError: checkpoints exist but none restores (a ``ValueError``).
    """
    path = Path(checkpoint_dir)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    ckpt = Checkpointer(path, read_only=True)
    try:
        found = ckpt.restore_newest(lambda meta: {"params": abstract_params(CNNSpec(**meta["model"]["spec"]))[1]})
    finally:
        ckpt.close()
    if found.skipped:
        print(f"{describe_skipped(found.skipped, ckpt.directory)}; using checkpoint {found.step}", file=sys.stderr)
    meta = found.meta
    apply, _ = abstract_params(CNNSpec(**meta["model"]["spec"]))
    params = found.trees["params"]
    mean = jnp.asarray(meta["model"]["mean"], jnp.float32)[None, None, None, :]
    std = jnp.asarray(meta["model"]["std"], jnp.float32)[None, None, None, :]

    @jax.jit
    def predict_probs(images):
        return jax.nn.softmax(apply(params, (images - mean) / std, train=False), axis=-1)

    return predict_probs, meta


def predict_command(argv) -> int:
    """``jaxcalc predict --checkpoint DIR IMAGE...``: print class and probability per image."""
    parser = argparse.ArgumentParser(prog="jaxcalc predict",
                                     description="Classify image files with a CNN trained by `jaxcalc run cnn`.")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a run folder or its checkpoints/ folder (the newest checkpoint that restores "
                             "cleanly is used)")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--top", type=int, default=1,
                        help="print the K most likely classes, 1 <= K <= number of classes (default 1)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)

    def fail(message: str) -> int:
        print(f"jaxcalc predict: error: {' '.join(message.split())}", file=sys.stderr)
        return 2

    if args.top < 1:
        return fail(f"--top must be >= 1, got {args.top}")
    try:
        predict_probs, meta = load_predictor(args.checkpoint)
        m = meta["model"]
        h, w, c = m["spec"]["height"], m["spec"]["width"], m["spec"]["channels"]
        if args.top > len(m["class_names"]):
            return fail(f"--top {args.top} is more than the model's {len(m['class_names'])} classes")
        images = np.stack([read_image(p, mode="L" if c == 1 else "RGB", size=(h, w)) for p in args.images])
    except (FileNotFoundError, ValueError) as e:
        return fail(str(e))
    except KeyError as e:
        return fail(f"the checkpoint's meta has no {e} entry: not a checkpoint of `jaxcalc run cnn`")
    # Training scaled pixels to [0, 1] (divided by the data's max_value: 255, or 16 for digits);
    # image files hold 0..255. predict_probs then standardises with the training mean and std.
    probs = np.asarray(predict_probs(jnp.asarray(images, jnp.float32) / 255.0))
    names = m["class_names"]
    for path, p in zip(args.images, probs, strict=True):
        order = np.argsort(-p)[: args.top]
        print(f"{path}: " + ", ".join(f"{names[i]} ({p[i]:.3f})" for i in order))
    return 0
