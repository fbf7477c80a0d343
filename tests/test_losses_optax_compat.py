"""jaxcalc.losses as a drop-in for optax.losses (0.2.8): optax's own test cases, and optax side by side.

Part 1 re-runs, in jaxcalc's own code, the cases of optax's loss tests (``optax/losses/_regression_test.py``
and ``_classification_test.py``) for every loss both libraries have: the same inputs, the same call
signatures (positional ``axis``, keyword ``where``/``labels``/``delta``, ``jit`` where optax jits), and the
same expected values, re-derived here with numpy. ``python benchmarks/optax_cases.py`` runs optax's test
files themselves against ``jaxcalc.losses`` (38 of their 42 cases pass).

The 4 optax cases that conflict with jaxcalc's value checks run here in a corrected form, and the original
form is asserted to be refused:

* ``SoftmaxCrossEntropyTest.test_mask`` (size 5 and 10) scores ``targets[mask]``, a Dirichlet draw over
  all classes sliced to the masked ones, which no longer sums to 1: not a distribution, so jaxcalc
  refuses it. Corrected: targets that put their mass on the included classes.
* ``SoftmaxCrossEntropyTest.test_axis`` (axis 0 and 1) normalises the targets along the last axis but
  scores them along ``axis`` 0 or 1, where they do not sum to 1 (a wrong class axis, the mistake the
  check is there to catch). Corrected: targets normalised along ``axis``.

No optax case for a shared loss relies on broadcasting predictions against targets, so jaxcalc's "never
silently broadcast (3, 1) against (3,)" contract conflicts with none (optax's ``squared_error`` refuses
mismatched shapes too; its ``huber_loss`` broadcasts them, jaxcalc's refuses, tested below).

Part 2 compares each shared loss with optax's on random inputs, with ``axis`` and ``where`` variants, and
with traced hyperparameters (``delta`` under ``jit`` and ``vmap``).
"""
import functools
import inspect

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import optax
import pytest

from jaxcalc import losses as L

SHARED = ["huber_loss", "l2_loss", "sigmoid_binary_cross_entropy", "softmax_cross_entropy",
          "softmax_cross_entropy_with_integer_labels", "squared_error"]

# Compiled once per shape and reused: eager jax runs each of a loss's ~20 primitives as its own compiled
# program, which costs seconds per new shape on a loaded 2-core machine; one jit costs a fraction of that.
# (Eager calls and their checks are tested in tests/test_losses.py; refused calls here stay eager: they
# fail in the numpy checks before any device work.)
_jit = functools.partial(jax.jit, static_argnames=("axis",))
SCE, SCEI = _jit(L.softmax_cross_entropy), _jit(L.softmax_cross_entropy_with_integer_labels)
OPTAX_SCE = _jit(optax.losses.softmax_cross_entropy)


@functools.partial(jax.jit, static_argnames=("name", "axis"))
def _both(name, *args, axis, where):
    """jaxcalc's and optax's value in one compiled program (one compile per case, not two); ``axis`` and
    ``where`` are passed positionally, as optax's ``test_axes`` passes ``axis``."""
    return getattr(L, name)(*args, axis, where), getattr(optax.losses, name)(*args, axis, where)


def _np_softmax_ce(z, y, axis=-1):  # numpy reference: −Σ y · log_softmax(z) along axis
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=axis, keepdims=True)
    log_softmax = z - m - np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True))
    return -np.sum(np.asarray(y) * log_softmax, axis=axis)


def _np_integer_ce(z, labels):  # numpy reference, class axis last
    return _np_softmax_ce(z, np.eye(np.shape(z)[-1])[labels])


def test_shared_names_are_exactly_these():
    assert set(L.__all__) & set(dir(optax.losses)) == set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_same_signature_as_optax(name):
    ours = inspect.signature(getattr(L, name)).parameters.values()
    theirs = inspect.signature(getattr(optax.losses, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in theirs]


# ---------------------------------------------------------------- part 1: optax's cases, regression

_YS = jnp.array([-2.0, -1.0, 0.5, 1.0])
_TS = jnp.array([-1.5, 0.0, -1, 1.0])


@pytest.mark.parametrize("name, scale", [("squared_error", 1.0), ("l2_loss", 0.5)])
def test_optax_cases_squared_error_and_l2_loss(name, scale):  # test_scalar, test_batched, test_shape_mismatch
    fn = jax.jit(getattr(L, name))
    exp = scale * (np.asarray(_TS) - np.asarray(_YS)) ** 2  # numpy
    np.testing.assert_allclose(fn(_YS[0], _TS[0]), exp[0])
    np.testing.assert_allclose(fn(_YS, _TS), exp)
    with pytest.raises(ValueError):
        fn(_YS, jnp.expand_dims(_TS, axis=-1))


def test_optax_cases_huber_loss():  # test_scalar, test_batched; delta passed to the jitted function: traced
    ys = np.array([-2.0, 0.5, 0.0, 0.5, 2.0, 4.0, 132.0])
    ts = np.array([0.0, -0.5, 0.0, 1.0, 1.0, 2.0, 0.3])
    e = np.abs(ys - ts)
    exp = np.where(e <= 1.0, 0.5 * e**2, e - 0.5)  # numpy, delta=1: [1.5, 0.5, 0, 0.125, 0.5, 1.5, 131.2]
    fn = jax.jit(L.huber_loss)
    np.testing.assert_allclose(fn(ys[0], ts[0], delta=1.0), exp[0])
    np.testing.assert_allclose(fn(ys, ts, delta=1.0), exp, rtol=1e-6)


# ---------------------------------------------------------------- part 1: optax's cases, classification

_YC = np.array([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]], dtype=np.float32)
_TC = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
_EXP_C = _np_softmax_ce(_YC, _TC)  # numpy: [9.00013, 3.0696733] as in optax's test
_ROW_MASK = np.array([True, False])
_LOGIT_MASK = np.array([[1, 0, 0], [0, 0, 0]]).astype(bool)
_LABELS_C = np.array([1, 0], dtype=np.int32)


def test_optax_cases_softmax_cross_entropy():  # test_scalar, test_batched, test_per_logit_mask
    np.testing.assert_allclose(SCE(_YC[0], _TC[0]), _EXP_C[0], atol=1e-4)
    np.testing.assert_allclose(SCE(_YC, _TC), _EXP_C, atol=1e-4)
    out = SCE(_YC, _TC, where=_LOGIT_MASK)
    np.testing.assert_array_equal(np.where(np.any(_LOGIT_MASK, -1), 0.0, out), 0)


def test_optax_case_softmax_cross_entropy_gradient():  # test_gradient: both arguments, then with a mask
    jax.test_util.check_grads(SCE, (_YC[:2], _TC[:2]), order=1)
    gs = jax.jit(jax.grad(lambda *a, **k: jnp.sum(SCE(*a, **k))))(_YC, labels=_TC, where=_ROW_MASK)
    assert jnp.all(jnp.isfinite(gs))


@pytest.mark.parametrize("size", [5, 10])
def test_optax_case_softmax_cross_entropy_mask(size):  # test_mask, corrected (see the module docstring)
    rng = np.random.default_rng(size)
    preds, targets = rng.normal(size=size), rng.dirichlet(np.ones(size))
    mask = np.arange(size) % 3 != 1
    with pytest.raises(ValueError, match=r"labels\.sum\(axis=-1\) = .* is not 1"):
        L.softmax_cross_entropy(preds[mask], targets[mask])  # optax's form: not a distribution
    targets = np.where(mask, targets, 0.0) / np.sum(targets[mask])  # the mass on the included classes
    x = SCE(preds[mask], targets[mask])
    y = SCE(preds, targets, where=mask)
    np.testing.assert_allclose(x, y, atol=1e-4)
    np.testing.assert_allclose(y, OPTAX_SCE(preds, targets, where=mask), atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_optax_case_softmax_cross_entropy_axis(axis):  # test_axis, corrected for axis 0 and 1
    rng = np.random.default_rng(axis)
    shape = [4, 5, 6]
    preds = rng.normal(size=shape)
    last = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])  # optax's targets: a distribution along -1
    if axis != 2:
        with pytest.raises(ValueError, match=rf"labels\.sum\(axis={axis}\)\[0, 0\] = .* is not 1"):
            L.softmax_cross_entropy(preds, last, axis=axis)
    moved = np.moveaxis(rng.dirichlet(np.ones(shape[axis]), size=shape[:axis] + shape[axis + 1:]), -1, axis)
    x, optax_x = _both("softmax_cross_entropy", preds, moved, axis=axis, where=None)
    # optax's reference, the loss of the moved arrays, is numpy's here; and optax's own value
    np.testing.assert_allclose(x, _np_softmax_ce(np.moveaxis(preds, axis, -1), np.moveaxis(moved, axis, -1)),
                               atol=1e-4)
    np.testing.assert_allclose(x, optax_x, rtol=2e-6, atol=1e-6)


def test_optax_cases_integer_labels_consistent_and_masked():
    # test_consistent_with_softmax_cross_entropy_scalar / _batched
    one_hot = np.eye(3, dtype=np.float32)[_LABELS_C]
    np.testing.assert_allclose(SCEI(_YC[0], _LABELS_C[0]), SCE(_YC[0], one_hot[0]), rtol=1e-6)
    np.testing.assert_allclose(SCEI(_YC, _LABELS_C), SCE(_YC, one_hot), rtol=1e-6)
    np.testing.assert_allclose(SCEI(_YC, _LABELS_C), _np_integer_ce(_YC, _LABELS_C), rtol=1e-6)
    # test_per_logit_mask
    out = SCEI(_YC, _LABELS_C, where=_LOGIT_MASK)
    np.testing.assert_array_equal(np.where(np.any(_LOGIT_MASK, -1), 0.0, out), 0)
    # test_gradient
    jax.test_util.check_grads(functools.partial(SCEI, labels=_LABELS_C), (_YC,), order=1)
    gs = jax.jit(jax.grad(lambda *a, **k: jnp.sum(SCEI(*a, **k))))(_YC, labels=_LABELS_C, where=_ROW_MASK)
    assert jnp.all(jnp.isfinite(gs))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_optax_case_integer_labels_axis(axis):  # test_axis
    rng = np.random.default_rng(10 + axis)
    shape = [4, 5, 6]
    preds = rng.normal(size=shape)
    targets = rng.integers(shape[axis], size=shape[:axis] + shape[axis + 1:])
    x, optax_x = _both("softmax_cross_entropy_with_integer_labels", preds, targets, axis=axis, where=None)
    np.testing.assert_allclose(x, _np_integer_ce(np.moveaxis(preds, axis, -1), targets), atol=1e-4)
    np.testing.assert_allclose(x, optax_x, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [(1, 3), (3, 2), (2, 3), (-3, -1), (-1, -2), (-2, -1), (0, 1, 3), (-4, -3, -1)])
def test_optax_case_integer_labels_axes(axis):  # test_axes: a label is a flat index into logits[axis]
    shape = (2, 3, 4, 5)
    logits_axis = tuple(a % 4 for a in axis)
    labels_axis = tuple(a for a in range(4) if a not in logits_axis)
    logits_shape = tuple(shape[a] for a in logits_axis)
    labels_shape = tuple(shape[a] for a in labels_axis)
    k = int(np.prod(logits_shape))
    rng = np.random.default_rng(sum(logits_axis))
    flat = rng.uniform(size=(*labels_shape, k)).astype(np.float32)
    labels = rng.integers(0, k - 1, size=labels_shape)
    desired = _np_integer_ce(flat, labels)
    perm = labels_axis + logits_axis
    logits = flat.reshape(labels_shape + logits_shape).transpose(np.argsort(perm))
    assert logits.shape == shape
    ours, theirs = _both("softmax_cross_entropy_with_integer_labels", logits, labels, axis=axis, where=None)
    np.testing.assert_allclose(ours, desired, rtol=1e-5)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6)


@pytest.mark.parametrize("preds, labels, expected", [  # SigmoidCrossEntropyTest's 10 cases (expected from optax)
    ([-1e09, -1e-09], [1.0, 0.0], 5e08), ([-1e09, -1e-09], [0.0, 1.0], 0.3465736),
    ([1e09, 1e-09], [1.0, 0.0], 0.3465736), ([1e09, 1e-09], [0.0, 1.0], 5e08),
    ([-1e09, 1e-09], [1.0, 0.0], 5e08), ([-1e09, 1e-09], [0.0, 1.0], 0.3465736),
    ([1e09, -1e-09], [1.0, 0.0], 0.3465736), ([1e09, -1e-09], [0.0, 1.0], 5e08),
    ([0.0, 0.0], [1.0, 0.0], 0.6931472), ([0.0, 0.0], [0.0, 1.0], 0.6931472),
])
def test_optax_cases_sigmoid_binary_cross_entropy(preds, labels, expected):
    # by hand: a wrong logit of 1e9 costs 1e9 (mean 5e8); a logit ±1e-9 costs log 2 (mean log(2)/2)
    tested = jnp.mean(L.sigmoid_binary_cross_entropy(np.array(preds), np.array(labels)))
    np.testing.assert_allclose(tested, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- part 2: optax side by side

_RNG = np.random.default_rng(0)
_P = _RNG.normal(size=(4, 3)).astype(np.float32)
_T = (_P + 2 * _RNG.normal(size=(4, 3))).astype(np.float32)


@pytest.mark.parametrize("name", ["squared_error", "l2_loss", "huber_loss"])
def test_regression_losses_match_optax(name):
    kw = {"delta": 0.3} if name == "huber_loss" else {}

    @jax.jit
    def both(p, t):  # batched, targets=None, scalar; jaxcalc's and optax's values in one compiled program
        cases = [(p, t), (p,), (p[0, 0], t[0, 0])]
        return [(getattr(L, name)(*a, **kw), getattr(optax.losses, name)(*a, **kw)) for a in cases]

    for ours, theirs in both(_P, _T):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_huber_delta_traced_under_jit_and_vmap():
    deltas = jnp.array([0.1, 0.5, 1.0, 2.0])
    ours, theirs = jax.jit(lambda ds: [jax.vmap(lambda d, f=f: f(_P, _T, delta=d))(ds)
                                       for f in (L.huber_loss, optax.losses.huber_loss)])(deltas)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    step = jax.jit(lambda p, d: jax.grad(lambda q: jnp.mean(L.huber_loss(q, _T, delta=d)))(p))
    for d in (0.5, 1.5):  # one compile for both deltas; the gradient is e clipped to [-delta, delta] / n
        np.testing.assert_allclose(step(_P, d), np.clip(_P - _T, -d, d) / _P.size, rtol=1e-6)
    assert step._cache_size() == 1


def test_huber_refuses_the_broadcast_optax_allows():
    p, t = _P[:, :1], _P[:, 0]  # (4, 1) and (4,)
    with jax.numpy_rank_promotion("allow"):  # jax's default (the tests raise on it)
        assert jax.eval_shape(optax.losses.huber_loss, p, t).shape == (4, 4)  # optax broadcasts silently
    with pytest.raises(ValueError, match=r"predictions \(4, 1\) vs targets \(4,\)"):
        L.huber_loss(p, t)


_Z = _RNG.normal(size=(3, 4, 5)).astype(np.float32) * 3
_PER_LOGIT = _RNG.uniform(size=_Z.shape) < 0.7


def _distribution(axes):
    e = np.exp(_RNG.normal(size=_Z.shape)).astype(np.float32)
    return e / np.sum(e, axis=axes, keepdims=True)


@pytest.mark.parametrize("axis, where", [(0, "example"), ((0, 2), "logit"), (None, "logit")])
def test_softmax_cross_entropy_matches_optax(axis, where):
    y = _distribution(axis if axis is not None else (0, 1, 2))
    mask = {None: None, "logit": _PER_LOGIT}.get(where)
    if where == "example":
        mask = _RNG.uniform(size=np.delete(_Z.shape, axis)) < 0.7
    ours, theirs = _both("softmax_cross_entropy", _Z, y, axis=axis, where=mask)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("axis, where", [(-1, "logit"), (0, "example"), ((2, 1), "example")])
def test_integer_labels_match_optax(axis, where):
    axes = {a % 3 for a in ((axis,) if isinstance(axis, int) else axis)}
    batch = tuple(s for i, s in enumerate(_Z.shape) if i not in axes)
    k = int(np.prod([_Z.shape[a] for a in axes]))
    labels = _RNG.integers(0, k, size=batch)
    mask = {None: None, "logit": _PER_LOGIT, "example": _RNG.uniform(size=batch) < 0.7}[where]
    ours, theirs = _both("softmax_cross_entropy_with_integer_labels", _Z, labels, axis=axis, where=mask)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6)


def test_sigmoid_binary_cross_entropy_matches_optax():
    z = np.concatenate([_Z[0, 0], [1e4, -1e4, 30.0]]).astype(np.float32)
    y = _RNG.uniform(size=z.shape).astype(np.float32)  # soft labels
    y[:3] = [0.0, 1.0, 1.0]
    fns = (L.sigmoid_binary_cross_entropy, optax.losses.sigmoid_binary_cross_entropy)
    both = jax.jit(lambda q: [(f(q, y), jax.grad(lambda r, f=f: jnp.sum(f(r, y)))(q)) for f in fns])
    (v_ours, g_ours), (v_theirs, g_theirs) = both(z)  # values and gradients, one compiled program
    np.testing.assert_allclose(v_ours, v_theirs, rtol=1e-6)
    np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-6, atol=1e-7)
