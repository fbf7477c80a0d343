"""jaxcalc.optim against its optax twins (whole 1,000-step trajectories), convergence, compilation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcalc import losses, optim

STEPS = 1000

# (name, ours, optax twin, learning rate for the matching problem)
TWINS = [
    ("gd", lambda lr: optim.gd(lr), lambda lr: optax.sgd(lr), 0.5),
    ("momentum", lambda lr: optim.momentum(lr, 0.9), lambda lr: optax.sgd(lr, momentum=0.9), 0.05),
    ("nesterov", lambda lr: optim.nesterov(lr, 0.9), lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True), 0.05),
    ("adagrad", lambda lr: optim.adagrad(lr), lambda lr: optax.adagrad(lr), 0.1),
    ("rmsprop", lambda lr: optim.rmsprop(lr), lambda lr: optax.rmsprop(lr), 1e-3),
    ("adam", lambda lr: optim.adam(lr), lambda lr: optax.adam(lr), 1e-2),
    ("adamw", lambda lr: optim.adamw(lr, weight_decay=1e-2), lambda lr: optax.adamw(lr, weight_decay=1e-2), 1e-2),
]


def _logistic_problem():
    """Logistic regression on a fixed synthetic set: a convex problem with a non-trivial gradient."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    w_true = np.array([1.5, -2.0, 0.5, 0.0, 1.0], np.float32)
    y = (x @ w_true + 0.3 * rng.normal(size=64) > 0).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=5) * 0.1, jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def loss(p):
        return losses.binary_cross_entropy(x @ p["w"] + p["b"], y) + 1e-3 * jnp.sum(p["w"] ** 2)

    return loss, params


def _trajectory(opt, loss, params, steps=STEPS):
    """All iterates of ``steps`` updates, in one jitted lax.scan: a pytree with a leading (steps,) axis."""

    @jax.jit
    def run(params):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), p

        _, traj = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return traj

    return run(params)


@pytest.mark.parametrize("name,ours,twin,lr", TWINS, ids=[t[0] for t in TWINS])
def test_matches_optax_twin_over_1000_steps(name, ours, twin, lr):
    loss, params = _logistic_problem()
    mine = _trajectory(ours(lr), loss, params)
    ref = _trajectory(twin(lr), loss, params)
    for leaf_mine, leaf_ref in zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True):
        assert leaf_mine.shape[0] == STEPS
        np.testing.assert_allclose(leaf_mine, leaf_ref, rtol=1e-6, atol=1e-7)
    # the run went somewhere: the last iterate differs from the start
    assert not np.allclose(mine["w"][-1], params["w"], atol=1e-2)


# one per state family (velocity, accumulator, Adam moments + weight decay); all share _lr_at
SCHEDULE_TWINS = [t[:3] for t in TWINS if t[0] in ("momentum", "adagrad", "adamw")]


@pytest.mark.parametrize("name,ours,twin", SCHEDULE_TWINS, ids=[t[0] for t in SCHEDULE_TWINS])
def test_matches_optax_with_schedule(name, ours, twin):
    """A learning-rate schedule is evaluated at the same step count as optax does."""
    loss, params = _logistic_problem()
    sched = optax.exponential_decay(0.05, transition_steps=10, decay_rate=0.7)
    mine = _trajectory(ours(sched), loss, params, steps=50)
    ref = _trajectory(twin(sched), loss, params, steps=50)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_inject_hyperparams_accepts_ours():
    """optax.inject_hyperparams wraps our optimizers: the lr lives in the state, changeable."""
    loss, params = _logistic_problem()
    opt = optax.inject_hyperparams(optim.adam)(learning_rate=1e-2)
    ref = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    state = opt.init(params)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-2)
    a = _trajectory(opt, loss, params, steps=20)
    b = _trajectory(ref, loss, params, steps=20)
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- convergence

def _parabola(p):
    # minimum 0 at (1, -2); Hessian diag(2, 20)
    return (p[0] - 1.0) ** 2 + 10.0 * (p[1] + 2.0) ** 2


def _rosenbrock(p):
    # minimum 0 at (1, 1)
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


@functools.partial(jax.jit, static_argnames=("opt", "loss", "steps"))
def _final(opt, loss, p0, steps):
    def step(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)
    return p


# name -> (optimizer on the parabola, on Rosenbrock, Rosenbrock steps)
CONVERGE = {
    "gd": (optim.gd(0.04), optim.gd(1e-3), 20000),
    "momentum": (optim.momentum(0.02), optim.momentum(1e-3), 5000),
    "nesterov": (optim.nesterov(0.02), optim.nesterov(1e-3), 5000),
    "adagrad": (optim.adagrad(0.5), optim.adagrad(0.5), 20000),
    "rmsprop": (optim.rmsprop(1e-2), optim.rmsprop(optax.exponential_decay(1e-2, 1000, 0.5)), 20000),
    "adam": (optim.adam(0.05), optim.adam(0.02), 5000),
    "adamw": (optim.adamw(0.05, weight_decay=0.0), optim.adamw(0.02, weight_decay=0.0), 5000),
}


@pytest.mark.parametrize("name", sorted(CONVERGE))
def test_converges_on_parabola_and_rosenbrock(name):
    para, rosen, rosen_steps = CONVERGE[name]
    p = _final(para, _parabola, jnp.array([-3.0, 3.0]), 2000)
    np.testing.assert_allclose(p, [1.0, -2.0], atol=1e-3)  # closed-form minimiser
    p = _final(rosen, _rosenbrock, jnp.array([-1.5, 2.0]), rosen_steps)
    np.testing.assert_allclose(p, [1.0, 1.0], atol=2e-2)  # closed-form minimiser


# --------------------------------------------------------------------------- compilation


def test_changing_learning_rate_does_not_recompile():
    loss, params = _logistic_problem()
    traces = []

    @jax.jit
    def train(lr, params):
        traces.append(1)  # Python side effect: runs once per trace (= per compilation)
        opt = optim.adam(lr)

        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=20)
        return p

    finals = [train(jnp.float32(lr), params) for lr in (1e-3, 1e-2, 1e-1)]
    assert len(traces) == 1
    assert train._cache_size() == 1
    # and the learning rate was really used: three different results
    assert not np.allclose(finals[0]["w"], finals[1]["w"])
    assert not np.allclose(finals[1]["w"], finals[2]["w"])
    # same as a fresh non-traced run at one of them
    ref = _trajectory(optim.adam(1e-2), loss, params, steps=20)
    np.testing.assert_allclose(finals[1]["w"], ref["w"][-1], rtol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make,msg",
    [
        (lambda: optim.gd(-0.1), "learning_rate"),
        (lambda: optim.gd(0.0), "learning_rate"),
        (lambda: optim.gd(float("nan")), "learning_rate"),
        (lambda: optim.gd(jnp.ones(2)), "scalar"),
        (lambda: optim.momentum(0.1, beta=1.0), "beta"),
        (lambda: optim.nesterov(0.1, beta=-0.1), "beta"),
        (lambda: optim.adagrad(0.1, initial_accumulator_value=-1.0), "initial_accumulator_value"),
        (lambda: optim.rmsprop(0.1, decay=1.5), "decay"),
        (lambda: optim.adam(0.1, b1=1.0), "b1"),
        (lambda: optim.adam(0.1, b2=-0.5), "b2"),
        (lambda: optim.adam(0.1, eps=-1.0), "eps"),
        (lambda: optim.adamw(0.1, weight_decay=-1.0), "weight_decay"),
    ],
)
def test_bad_hyperparameters_raise(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_bad_learning_rate_type():
    with pytest.raises(TypeError, match="learning_rate"):
        optim.gd("fast")


def test_adamw_needs_params():
    opt = optim.adamw(0.1)
    p = jnp.ones(3)
    with pytest.raises(ValueError, match="params"):
        opt.update(p, opt.init(p))


def test_states_are_namedtuples_with_count():
    p = {"a": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    for make in (optim.gd, optim.momentum, optim.nesterov, optim.adagrad, optim.rmsprop, optim.adam, optim.adamw):
        opt = make(0.1)
        s = opt.init(p)
        assert hasattr(s, "_fields") and s.count.shape == ()
        _, s2 = opt.update(p, s, p)
        assert int(s2.count) == 1
        assert jax.tree.structure(s2) == jax.tree.structure(s)
