"""Data parallelism over a ``jax.sharding`` mesh: one device, many devices, many hosts.

Data-parallel training is one idea: every device holds the same parameters, each gets a
different slice of the global batch, and the gradient of the batch mean is the mean of the
devices' gradients. With ``jax.sharding`` we never write that all-reduce ourselves: we say how
the arrays are laid out (a 1-D :class:`~jax.sharding.Mesh` named ``"data"``, the batch split
along its example axis with ``NamedSharding(mesh, P("data"))``, parameters and optimizer state
replicated with ``P()``) and ``jax.jit`` compiles the *same* ``train_step`` into a program per
device; XLA's GSPMD partitioner inserts the all-reduce of the gradients. No ``pmap``, no
per-device code::

    mesh = parallel.make_mesh(8)                        # the first 8 of jax.devices()
    step = parallel.data_parallel(train_step, mesh)     # train_step(params, opt_state, batch)
    params, opt_state = parallel.replicate((params, opt_state), mesh)
    params, opt_state, loss = step(params, opt_state, batch)   # batch: global, 8 | n

On one device (``make_mesh(1)``) nothing changes: the program is the plain jitted step.
Because the batch mean is summed in a different order, 8 devices agree with 1 device to float32
rounding (about 1e-7 relative after a few Adam steps in the tests), not bit for bit.

FSDP-style sharding (``shard_params=True`` / :func:`shard_params`) splits each parameter and
optimizer-state leaf along its first axis divisible by the device count instead of replicating
it, so a model that does not fit one device's memory still trains; XLA gathers the weights where
the computation needs them and reduces each gradient onto the device that owns its shard.

What scaling costs: each step all-reduces one gradient per parameter,
:func:`allreduce_bytes_per_step` bytes (float32: 4 bytes per parameter). A ring all-reduce sends
and receives ``2 (N - 1) / N`` times that per device, so on N devices with link bandwidth
``BW`` bytes/s the communication floor per step is about ``2 (N - 1) / N * bytes / BW``; compare
it with the step's compute time to estimate multi-device throughput.

Simulating devices on a CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` in the
environment, or ``jax.config.update("jax_num_cpu_devices", 8)`` before any other JAX call, gives
8 CPU devices.

Multi-host (several machines, each with its own devices): run the *same command* on every
host. :func:`initialize_distributed` (call it first, before any other JAX call) connects the
processes with ``jax.distributed.initialize`` when it finds a cluster environment; after that
``jax.devices()`` lists the devices of all hosts, :func:`make_mesh` spans them, and every
process runs the same jitted step on its own devices. Every process must build the same
global batch (jaxcalc's data is generated or loaded deterministically from the seed, so the same
command gives the same batch); :func:`shard_batch` then hands each process the rows its
devices own. Launching:

- Slurm, one task per GPU (JAX then gives each process the GPU numbered ``SLURM_LOCALID``):
  ``srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 jaxcalc run mlp --devices 16``
  (detected from ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``,
  ``SLURM_LOCALID``).
- Open MPI: ``mpirun -np 2 --host a,b jaxcalc run mlp --devices 16`` (``OMPI_MCA_orte_hnp_uri``).
- Anything else (plain ssh, containers): on every host set
  ``JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0 or 1>`` and run the
  same command; process 0 listens on that address.
- Cloud TPU pods / Kubernetes: set ``JAXCALC_DISTRIBUTED=1`` to let JAX's own auto-detection
  run (``JAXCALC_DISTRIBUTED=0`` turns all of this off).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "DataParallelStep",
    "allreduce_bytes_per_step",
    "batch_sharding",
    "check_divisible",
    "constrain_batch",
    "data_parallel",
    "initialize_distributed",
    "make_mesh",
    "masked_mean",
    "pad_batch",
    "param_shardings",
    "replicate",
    "replicated",
    "shard_batch",
    "shard_params",
]


# ----------------------------------------------------------------------------- mesh & shardings

def make_mesh(n_devices: int | None = None, *, axis_name: str = DATA_AXIS,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh over the first ``n_devices`` devices, with one axis named ``axis_name``.

    Args:
      n_devices: how many devices to use; ``None`` uses all of ``jax.devices()`` (every host's
        devices once :func:`initialize_distributed` has run).
      axis_name: the mesh axis that batches are split along.
      devices: the devices to choose from (default ``jax.devices()``).

    Returns:
      ``Mesh`` of shape ``(n_devices,)``.

    Raises:
      ValueError: ``n_devices`` < 1 or more than are available (the message names both).
    """
    available = list(jax.devices() if devices is None else devices)
    if n_devices is None:
        n_devices = len(available)
    if isinstance(n_devices, bool) or not isinstance(n_devices, (int, np.integer)):
        raise TypeError(f"n_devices must be an int, got {type(n_devices).__name__}")
    n_devices = int(n_devices)
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    if n_devices > len(available):
        platform = available[0].platform if available else "?"
        hint = (" (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N devices)"
                if platform == "cpu" else "")
        raise ValueError(f"asked for {n_devices} devices but only {len(available)} {platform} "
                         f"device(s) are available{hint}")
    return Mesh(np.asarray(available[:n_devices]), (axis_name,))


def _axis_name(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ValueError(f"expected a 1-D data mesh, got axes {mesh.axis_names}")
    return mesh.axis_names[0]


def batch_sharding(mesh: Mesh, *, axis: int = 0) -> NamedSharding:
    """``NamedSharding(mesh, P(None, ..., "data"))``: split dimension ``axis`` across the mesh."""
    return NamedSharding(mesh, P(*([None] * axis), _axis_name(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: a full copy on every device."""
    return NamedSharding(mesh, P())


# ----------------------------------------------------------------------------- batches

def _leaf_paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _batch_size(batch, *, axis: int = 0, what: str = "batch") -> int:
    """The common size of every leaf along ``axis``; ValueError naming the leaf otherwise."""
    leaves = _leaf_paths(batch)
    if not leaves:
        raise ValueError(f"{what} has no arrays")
    sizes = {}
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path) or "<root>"
        shape = np.shape(leaf)
        if len(shape) <= axis:
            raise ValueError(f"{what} leaf {name} has shape {shape}: no example axis {axis} to split")
        sizes[name] = shape[axis]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{what} leaves disagree on the number of examples (axis {axis}): {sizes}")
    return next(iter(sizes.values()))


def check_divisible(batch, n_devices: int, *, axis: int = 0, what: str = "global batch") -> int:
    """Check that the examples of ``batch`` split evenly over ``n_devices``; return their count.

    Raises:
      ValueError: the leaves disagree on the example count, or it is not a multiple of
        ``n_devices`` (the message gives the nearest valid sizes and the padding remedy).
    """
    n = _batch_size(batch, axis=axis, what=what)
    if n % n_devices:
        lo, hi = (n // n_devices) * n_devices, (n // n_devices + 1) * n_devices
        sizes = f"{lo} or {hi}" if lo else f"{hi}"
        raise ValueError(
            f"{what} of {n} examples is not divisible by the {n_devices} devices of the mesh: "
            f"use a batch size that is a multiple of {n_devices} (e.g. {sizes}), or pad it with "
            f"jaxcalc.parallel.pad_batch(batch, {n_devices}) and average the loss with the "
            f"returned mask (jaxcalc.parallel.masked_mean)")
    return n


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _place(x, sharding: NamedSharding):
    """Put one leaf on ``sharding``; works with one process and with many (multi-host)."""
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    # Multi-host: every process holds the whole (same) value; each keeps the rows its devices own.
    if _is_key(x):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_place(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(batch, mesh: Mesh, *, axis: int = 0):
    """Split a global batch across the mesh along its example axis.

    Args:
      batch: a pytree of arrays sharing the example axis ``axis`` (e.g. ``{"x": (n, d),
        "y": (n,)}``); ``n`` must be a multiple of the mesh size. In a multi-host run every
        process passes the same global batch and keeps the rows its devices own.
      mesh: from :func:`make_mesh`.
      axis: the example axis (1 for stacked batches ``(steps, n, ...)`` scanned over axis 0).

    Returns:
      the same pytree of ``jax.Array`` with sharding ``NamedSharding(mesh, P("data"))``: each
      device holds ``n / mesh.size`` examples.

    Raises:
      ValueError: ``n`` is not divisible by the device count (see :func:`pad_batch`).
    """
    check_divisible(batch, mesh.size, axis=axis)
    sharding = batch_sharding(mesh, axis=axis)
    return jax.tree_util.tree_map(lambda x: _place(x, sharding), batch)


def pad_batch(batch, multiple: int, *, axis: int = 0):
    """Pad a batch to a multiple of ``multiple`` examples, with a mask marking the real ones.

    The padding rows repeat the last example (so they stay valid inputs: in-range labels and
    indices, finite values); a loss averaged with :func:`masked_mean` ignores them, so its value
    and gradient equal those of the unpadded batch.

    Args:
      batch: pytree of arrays with ``n`` examples along ``axis``.
      multiple: typically ``mesh.size``.

    Returns:
      ``(padded, mask)``: ``padded`` has ``m = ceil(n / multiple) * multiple`` examples
      (numpy leaves stay numpy, ``jax.Array`` leaves stay ``jax.Array``); ``mask`` is a
      ``(m,)`` numpy bool array, True for the ``n`` real examples. Shard both with
      :func:`shard_batch`.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    n = _batch_size(batch, axis=axis)
    m = -(-n // multiple) * multiple

    def pad(x):
        if m == n:
            return x
        xp = jnp if isinstance(x, jax.Array) else np  # host data stays on the host
        x = xp.asarray(x)
        last = xp.take(x, xp.asarray([n - 1]), axis=axis)
        return xp.concatenate([x, xp.repeat(last, m - n, axis=axis)], axis=axis)

    return jax.tree_util.tree_map(pad, batch), np.arange(m) < n


def masked_mean(values, mask):
    """Mean of ``values`` over the entries where ``mask`` is True.

    Args:
      values: ``(n,)`` per-example values, e.g. ``losses.squared_error(pred, y)``.
      mask: ``(n,)`` bool (from :func:`pad_batch`).

    Returns:
      scalar ``sum(values[mask]) / count(mask)``; masked entries get zero gradient.
    """
    if np.shape(values) != np.shape(mask):
        raise ValueError(f"shape mismatch: values {np.shape(values)} vs mask {np.shape(mask)}")
    mask = jnp.asarray(mask, bool)
    total = jnp.sum(jnp.where(mask, values, jnp.zeros_like(values)))
    return total / jnp.maximum(jnp.sum(mask), 1).astype(total.dtype)


def constrain_batch(batch, mesh: Mesh, *, axis: int = 0):
    """Inside ``jit``: require ``batch`` to be split along ``axis`` across the mesh.

    Use it where a batch is *made* inside a compiled function, e.g. an epoch that shuffles the
    data and reshapes it to ``(steps, batch_size, ...)`` before a ``lax.scan``:
    ``constrain_batch(batches, mesh, axis=1)`` makes every scanned step data-parallel.
    """
    check_divisible(batch, mesh.size, axis=axis, what="batch")
    return jax.lax.with_sharding_constraint(batch, batch_sharding(mesh, axis=axis))


# ----------------------------------------------------------------------------- parameters

def _fsdp_spec(shape: Sequence[int], n: int, axis_name: str) -> P:
    for i, size in enumerate(shape):
        if size >= n and size % n == 0:
            return P(*([None] * i), axis_name)
    return P()


def param_shardings(tree, mesh: Mesh, *, shard: bool = False):
    """The sharding of every leaf of ``tree``: replicated, or FSDP-style when ``shard``.

    FSDP-style: each leaf is split along its first axis whose size is a multiple of the device
    count; leaves with no such axis (scalars, odd shapes) are replicated.
    """
    name = _axis_name(mesh)
    if not shard:
        rep = replicated(mesh)
        return jax.tree_util.tree_map(lambda _: rep, tree)
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, _fsdp_spec(np.shape(x), mesh.size, name)), tree)


def replicate(tree, mesh: Mesh):
    """A full copy of every leaf (params, optimizer state, keys) on every device of the mesh."""
    rep = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: _place(x, rep), tree)


def shard_params(tree, mesh: Mesh):
    """FSDP-style placement: each leaf split along its first axis divisible by the device count
    (replicated when none is); see :func:`param_shardings`."""
    return jax.tree_util.tree_map(_place, tree, param_shardings(tree, mesh, shard=True))


# ----------------------------------------------------------------------------- the step

class DataParallelStep:
    """A train step compiled for a mesh; built by :func:`data_parallel`."""

    def __init__(self, step: Callable, mesh: Mesh, *, shard_params: bool, batch_argnums,
                 batch_axis: int, donate_argnums):
        self.step, self.mesh, self.shard_params = step, mesh, bool(shard_params)
        self.batch_argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
        self.batch_axis = batch_axis
        self.donate_argnums = tuple(donate_argnums)
        self._compiled: dict = {}

    def _shardings(self, args):
        nargs = len(args)
        batch_idx = {i % nargs for i in self.batch_argnums}
        bs = batch_sharding(self.mesh, axis=self.batch_axis)
        return tuple(
            jax.tree_util.tree_map(lambda _: bs, a) if i in batch_idx
            else param_shardings(a, self.mesh, shard=self.shard_params)
            for i, a in enumerate(args)), batch_idx

    def place(self, *args):
        """Check the batch and put every argument where the compiled step expects it."""
        shardings, batch_idx = self._shardings(args)
        for i in sorted(batch_idx):
            check_divisible(args[i], self.mesh.size, axis=self.batch_axis)
        return tuple(jax.tree_util.tree_map(_place, a, s) for a, s in zip(args, shardings, strict=True)), shardings

    def _jitted(self, args, shardings):
        key = jax.tree_util.tree_structure((args, shardings)), tuple(
            (np.shape(x), str(getattr(x, "dtype", type(x)))) for x in jax.tree_util.tree_leaves(args))
        fn = self._compiled.get(key)
        if fn is None:
            if self.shard_params:
                out = jax.eval_shape(self.step, *args)
                out_shardings = param_shardings(out, self.mesh, shard=True)
            else:
                out_shardings = replicated(self.mesh)
            fn = jax.jit(self.step, in_shardings=shardings, out_shardings=out_shardings,
                         donate_argnums=self.donate_argnums)
            self._compiled[key] = fn
        return fn

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError(f"a data-parallel step takes positional arguments only, got {sorted(kwargs)}")
        args, shardings = self.place(*args)
        return self._jitted(args, shardings)(*args)

    def lower(self, *args):
        """``jax.jit(...).lower`` for these arguments (e.g. ``.compile().as_text()`` to see the
        all-reduce XLA inserted)."""
        args, shardings = self.place(*args)
        return self._jitted(args, shardings).lower(*args)


def data_parallel(train_step: Callable, mesh: Mesh, *, shard_params: bool = False,
                  batch_argnums: int | Sequence[int] = 2, batch_axis: int = 0,
                  donate_argnums: Sequence[int] = ()) -> DataParallelStep:
    """Compile ``train_step`` to run data-parallel over ``mesh``.

    ``train_step`` is the ordinary single-device step, e.g.::

        def train_step(params, opt_state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)   # loss_fn: batch MEAN
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

    The returned callable takes the same arguments. The arguments at ``batch_argnums`` are
    split along ``batch_axis`` across the mesh (``P("data")``); every other argument (params,
    optimizer state, PRNG keys, learning rates) is replicated, or FSDP-sharded when
    ``shard_params``. The outputs are replicated (FSDP: sharded by the same rule), so the
    returned params feed the next call with no copy. Inside, ``jax.grad`` of the batch mean
    over a split batch makes XLA all-reduce the gradient across devices.

    Args:
      train_step: a pure function of positional arguments.
      mesh: a 1-D mesh from :func:`make_mesh`.
      shard_params: FSDP-style: split params and optimizer state across devices too.
      batch_argnums: which positional argument(s) are batches (default 2:
        ``train_step(params, opt_state, batch, ...)``); negative indices count from the end.
      batch_axis: the example axis of the batch leaves.
      donate_argnums: passed to ``jax.jit`` (e.g. ``(0, 1)`` to update params in place).

    Returns:
      a :class:`DataParallelStep`; calling it raises ``ValueError`` when a batch's example
      count is not a multiple of ``mesh.size``.
    """
    _axis_name(mesh)
    return DataParallelStep(train_step, mesh, shard_params=shard_params, batch_argnums=batch_argnums,
                            batch_axis=batch_axis, donate_argnums=donate_argnums)


# ----------------------------------------------------------------------------- costs

def allreduce_bytes_per_step(params, *, dtype=jnp.float32) -> int:
    """Bytes of gradient all-reduced per data-parallel step: one gradient per parameter.

    Args:
      params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``).
      dtype: the gradient dtype (float32 by default); ``None`` uses each leaf's own dtype.

    Returns:
      ``sum(leaf.size) * itemsize``. A ring all-reduce moves ``2 (N - 1) / N`` times this
      through each of the N devices' links per step.
    """
    total = 0
    for leaf in jax.tree_util.tree_leaves(params):
        itemsize = np.dtype(leaf.dtype if dtype is None else dtype).itemsize
        total += int(np.prod(np.shape(leaf), dtype=np.int64)) * itemsize
    return total


# ----------------------------------------------------------------------------- multi-host

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _distributed_args(env: Mapping[str, str]) -> dict | None:
    """What ``jax.distributed.initialize`` should get, or ``None`` for a single-process run."""
    switch = env.get("JAXCALC_DISTRIBUTED", "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return None
    if env.get("JAX_COORDINATOR_ADDRESS"):
        have = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if env.get(v)]
        if len(have) == 2:
            return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                    "num_processes": _int_env(env, "JAX_NUM_PROCESSES"),
                    "process_id": _int_env(env, "JAX_PROCESS_ID")}
        if not all(v in env for v in _SLURM_VARS) and "OMPI_MCA_orte_hnp_uri" not in env:
            missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v not in have]
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not: set all three on every host")
        return {}  # the coordinator is given; jax takes the process count and id from Slurm / MPI
    if switch in ("1", "true", "yes", "on"):
        return {}  # JAX's own detection (Cloud TPU, Kubernetes, Slurm, Open MPI)
    if all(v in env for v in _SLURM_VARS) and _int_env(env, "SLURM_NTASKS") > 1:
        return {}
    if "OMPI_MCA_orte_hnp_uri" in env and _int_env(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return {}
    return None


def initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Join a multi-host run when the environment describes one; otherwise do nothing.

    Call it first, before any other JAX call (the CLI does). Detected, in order:

    - ``JAXCALC_DISTRIBUTED=0``: never initialize.
    - ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0) with ``JAX_NUM_PROCESSES`` and
      ``JAX_PROCESS_ID``: the same command on every host, each with its own id.
    - ``JAXCALC_DISTRIBUTED=1``: JAX's auto-detection (Cloud TPU pods, Kubernetes, ...).
    - Slurm with more than one task (``SLURM_NTASKS`` > 1 and the other variables JAX reads),
      Open MPI with ``OMPI_COMM_WORLD_SIZE`` > 1: JAX reads coordinator, count and id from them.

    Args:
      environ: the environment to inspect (default ``os.environ``).

    Returns:
      True if this call ran ``jax.distributed.initialize``; False for a single-process run or
      when it was already initialized.

    Raises:
      ValueError: ``JAX_COORDINATOR_ADDRESS`` without the process count and id, or a
        non-integer count/id.
    """
    env = os.environ if environ is None else environ
    kwargs = _distributed_args(env)
    if kwargs is None or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**kwargs)
    return True
