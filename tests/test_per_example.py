"""Per-example gradients, DP-SGD clipping, gradient noise scale, and the MLP ghost-norm path."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcalc import losses
from jaxcalc import per_example as pe
from jaxcalc.models.linear import mse_loss
from jaxcalc.models.mlp import mlp_apply


def _linear_problem(n=12, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=(d, 1)), jnp.float32), "b": jnp.zeros((1,), jnp.float32)}

    def loss(p, batch):
        return losses.mse(batch["x"] @ p["w"] + p["b"][None, :], batch["y"])

    return loss, params, {"x": x, "y": y}


def test_per_example_grads_match_loop_and_batch_gradient():
    loss, params, batch = _linear_problem()
    g = jax.jit(pe.per_example_grads, static_argnums=0)(loss, params, batch)
    assert g["w"].shape == (12, 3, 1) and g["b"].shape == (12, 1)
    # reference: jax.grad on each one-example batch, one at a time
    grad = jax.jit(jax.grad(loss))
    for i in (0, 5, 11):
        gi = grad(params, {"x": batch["x"][i : i + 1], "y": batch["y"][i : i + 1]})
        np.testing.assert_allclose(g["w"][i], gi["w"], rtol=1e-6)
        np.testing.assert_allclose(g["b"][i], gi["b"], rtol=1e-6)
    # the mean of per-example gradients is the gradient of the mean loss
    full = jax.grad(loss)(params, batch)
    np.testing.assert_allclose(g["w"].mean(0), full["w"], rtol=1e-5, atol=1e-6)
    # closed form for squared error: dℓ_i/dw = 2 (x_i·w + b − y_i) x_i  (by hand)
    r = batch["x"] @ np.asarray(params["w"]) - batch["y"]
    np.testing.assert_allclose(g["w"][:, :, 0], 2 * r * batch["x"], rtol=1e-5)


def test_per_example_grad_norms_match_numpy():
    loss, params, batch = _linear_problem()
    norms = pe.per_example_grad_norms(loss, params, batch)
    g = pe.per_example_grads(loss, params, batch)
    flat = np.concatenate([np.asarray(g["b"]).reshape(12, -1), np.asarray(g["w"]).reshape(12, -1)], axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(flat, axis=1), rtol=1e-6)


def test_linear_model_mse_loss_from_models():
    """Works with the project's own linear model loss (batch = {"x", "y"})."""
    rng = np.random.default_rng(1)
    batch = {"x": rng.normal(size=(6, 2)).astype(np.float32), "y": rng.normal(size=(6,)).astype(np.float32)}
    from jaxcalc.models.linear import init_linear

    params = init_linear(jax.random.key(0), 2)
    g = pe.per_example_grads(mse_loss, params, batch)
    full = jax.grad(mse_loss)(params, batch)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(a.mean(0), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clip_norm", [0.05, 0.5, 1e9])
def test_clipped_mean_grad_matches_optax(clip_norm):
    loss, params, batch = _linear_problem()
    grad, aux = jax.jit(pe.clipped_mean_grad, static_argnums=0)(loss, params, batch, clip_norm=clip_norm)
    g = pe.per_example_grads(loss, params, batch)
    # reference: optax's DP-SGD clipping (sum of clipped per-example grads)
    leaves, treedef = jax.tree.flatten(g)
    ref_sum, num_clipped = optax.per_example_global_norm_clip(leaves, clip_norm)
    ref = jax.tree.unflatten(treedef, [s / 12 for s in ref_sum])
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(aux["clipped_fraction"]) == pytest.approx(int(num_clipped) / 12)
    assert aux["norms"].shape == (12,)
    # every clipped example has norm <= C
    assert np.all(np.asarray(aux["norms"] * aux["clip_factors"]) <= clip_norm * (1 + 1e-6))


def test_noise_has_dp_sgd_scale_and_follows_key():
    loss, params, batch = _linear_problem(n=8, d=2000)
    f = jax.jit(pe.clipped_mean_grad, static_argnums=0)
    clean, _ = f(loss, params, batch, clip_norm=1.0)
    noisy, _ = f(loss, params, batch, clip_norm=1.0, noise_multiplier=2.0, key=jax.random.key(3))
    again, _ = f(loss, params, batch, clip_norm=1.0, noise_multiplier=2.0, key=jax.random.key(3))
    other, _ = f(loss, params, batch, clip_norm=1.0, noise_multiplier=2.0, key=jax.random.key(4))
    diff = np.asarray(noisy["w"] - clean["w"]).ravel()
    # std σ·C/n = 2·1/8 = 0.25; 2000 samples, sample std within ~5% (3.2 std errors)
    assert np.std(diff) == pytest.approx(0.25, rel=0.05)
    np.testing.assert_array_equal(noisy["w"], again["w"])
    assert not np.allclose(noisy["w"], other["w"])


def test_gradient_noise_scale_matches_numpy_and_truth():
    rng = np.random.default_rng(0)
    # per-example grads g_i = G + ξ_i, ξ ~ N(0, s² I): tr Σ = d s², |G|² known (by construction)
    n, d, s = 4000, 10, 0.5
    G = np.linspace(-0.3, 0.3, d)
    g = G[None, :] + s * rng.normal(size=(n, d))
    tree = {"a": jnp.asarray(g[:, :4], jnp.float32), "b": jnp.asarray(g[:, 4:].reshape(n, 3, 2), jnp.float32)}
    parts = pe.gradient_noise_scale(tree, return_parts=True)
    # numpy reference of the same estimators
    tr = np.var(g, axis=0, ddof=1).sum()
    gsq = np.sum(g.mean(0) ** 2) - tr / n
    np.testing.assert_allclose(parts["trace_sigma"], tr, rtol=1e-4)
    np.testing.assert_allclose(parts["grad_sq_norm"], gsq, rtol=1e-3)
    np.testing.assert_allclose(pe.gradient_noise_scale(tree), tr / gsq, rtol=1e-3)
    # and close to the truth d s² / |G|²
    truth = d * s**2 / np.sum(G**2)
    assert float(parts["b_simple"]) == pytest.approx(truth, rel=0.1)


# --------------------------------------------------------------------------- ghost norms


# jitted once per module; the loss functions are static (hashable) arguments
_vmap_norms = jax.jit(pe.per_example_grad_norms, static_argnums=0)
_vmap_clip = jax.jit(pe.clipped_mean_grad, static_argnums=0)  # clip_norm, noise_multiplier traced
_ghost_norms = jax.jit(pe.mlp_ghost_norms, static_argnames=("per_example_loss", "activation"))
_ghost_clip = jax.jit(pe.mlp_clipped_mean_grad, static_argnames=("per_example_loss", "activation"))

MLP_CASES = [
    # (sizes, activation, per-example loss, batch loss, targets)
    ((6, 5, 4, 3), "relu", losses.softmax_cross_entropy_with_integer_labels, losses.cross_entropy, "int"),
    ((4, 7, 2), "tanh", losses.squared_error, losses.mse, "float"),
]


def _mlp_case(sizes, target_kind, n=9, seed=0):
    """float64 MLP params and batch from numpy (no eager jax.random: fast in tests)."""
    rng = np.random.default_rng(seed)
    params = [
        (jnp.asarray(rng.normal(size=(m, k)) * np.sqrt(2.0 / m)), jnp.asarray(0.1 * rng.normal(size=k)))
        for m, k in itertools.pairwise(sizes)
    ]
    x = jnp.asarray(rng.normal(size=(n, sizes[0])))
    if target_kind == "int":
        y = jnp.asarray(rng.integers(0, sizes[-1], size=n), jnp.int32)
    else:
        y = jnp.asarray(rng.normal(size=(n, sizes[-1])))
    return params, {"x": x, "y": y}


@pytest.mark.parametrize("sizes,activation,per_ex,batch_loss,kind", MLP_CASES, ids=["relu-ce", "tanh-mse"])
def test_ghost_path_equals_vmap_path(x64, sizes, activation, per_ex, batch_loss, kind):
    params, batch = _mlp_case(sizes, kind)

    def loss_fn(p, b):
        return batch_loss(mlp_apply(p, b["x"], activation=activation), b["y"])

    ref_norms = _vmap_norms(loss_fn, params, batch)
    norms = _ghost_norms(params, batch, per_example_loss=per_ex, activation=activation)
    assert norms.dtype == jnp.float64
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-10)

    clip = float(np.median(ref_norms))  # about half the examples are clipped
    key = jax.random.key(7)
    for sigma in (0.0, 1.5):  # traced: one compilation for both (σ = 0 adds 0·ξ)
        ref, ref_aux = _vmap_clip(loss_fn, params, batch, clip_norm=clip, noise_multiplier=sigma, key=key)
        got, aux = _ghost_clip(
            params, batch, per_example_loss=per_ex, clip_norm=clip, noise_multiplier=sigma, key=key,
            activation=activation
        )
        assert 0.0 < float(aux["clipped_fraction"]) < 1.0
        assert jax.tree.structure(got) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(aux["norms"], ref_aux["norms"], rtol=1e-10)


def test_ghost_unclipped_equals_batch_gradient(x64):
    params, batch = _mlp_case((5, 8, 3), "int", n=16)
    got, aux = _ghost_clip(
        params, batch, per_example_loss=losses.softmax_cross_entropy_with_integer_labels, clip_norm=np.inf
    )
    ref = jax.jit(jax.grad(lambda p: losses.cross_entropy(mlp_apply(p, batch["x"]), batch["y"])))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    assert float(aux["clipped_fraction"]) == 0.0


# --------------------------------------------------------------------------- bad input


def test_bad_batches_raise():
    loss, params, batch = _linear_problem()
    with pytest.raises(ValueError, match=r"different leading.*\['x'\]: 12.*\['y'\]: 5"):
        pe.per_example_grads(loss, params, {"x": batch["x"], "y": batch["y"][:5]})
    with pytest.raises(ValueError, match="empty"):
        pe.per_example_grads(loss, params, {"x": batch["x"][:0], "y": batch["y"][:0]})
    with pytest.raises(ValueError, match="scalar"):
        pe.per_example_grads(loss, params, {"x": batch["x"], "y": np.float32(1.0)})


def test_bad_clip_arguments_raise():
    loss, params, batch = _linear_problem()
    with pytest.raises(ValueError, match="clip_norm"):
        pe.clipped_mean_grad(loss, params, batch, clip_norm=0.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        pe.clipped_mean_grad(loss, params, batch, clip_norm=1.0, noise_multiplier=-1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        pe.clipped_mean_grad(loss, params, batch, clip_norm=1.0, noise_multiplier=1.0)


def test_gradient_noise_scale_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        pe.gradient_noise_scale({"a": jnp.ones((1, 3))})
    with pytest.raises(ValueError, match="leading"):
        pe.gradient_noise_scale({"a": jnp.ones((4, 3)), "b": jnp.ones((3, 3))})


def test_ghost_bad_input_raises():
    params = [(jnp.ones((4, 3)), jnp.zeros(3)), (jnp.ones((3, 2)), jnp.zeros(2))]
    x = jnp.ones((5, 4))
    y = jnp.zeros((5,), jnp.int32)
    ce = losses.softmax_cross_entropy_with_integer_labels
    with pytest.raises(TypeError, match="list of"):
        pe.mlp_ghost_norms({"w": 1}, {"x": x, "y": y}, per_example_loss=ce)
    with pytest.raises(ValueError, match=r"params\[0\]"):
        pe.mlp_ghost_norms([(jnp.ones((4, 3)), jnp.ones(2))], {"x": x, "y": y}, per_example_loss=ce)
    with pytest.raises(TypeError, match="'x'"):
        pe.mlp_ghost_norms(params, (x, y), per_example_loss=ce)
    with pytest.raises(ValueError, match="one value per example"):
        pe.mlp_ghost_norms(params, {"x": x, "y": y}, per_example_loss=losses.cross_entropy)  # a batch mean
    with pytest.raises(ValueError, match="key"):
        pe.mlp_clipped_mean_grad(params, {"x": x, "y": y}, per_example_loss=ce, clip_norm=1.0, noise_multiplier=1.0)
