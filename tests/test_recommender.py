"""Biased matrix factorization: loss gradients, the four fitting methods against references."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcalc
from jaxcalc.models import recommender as rec

U, N_ITEMS, K = 7, 6, 3  # users, items, factors


@pytest.fixture(scope="module")
def small():
    """~300 ratings over 30 users x 20 items (every pair at most once), and initial params."""
    rng = np.random.default_rng(0)
    pairs = rng.choice(30 * 20, size=300, replace=False)
    batch = {"user": (pairs // 20).astype(np.int32), "item": (pairs % 20).astype(np.int32),
             "rating": rng.integers(1, 6, size=300).astype(np.float32)}
    params = rec.init(jax.random.key(1), 30, 20, factors=4, init_scale=0.1,
                      global_mean=float(batch["rating"].mean()))
    return batch, params


def np_params(params):
    return {k: np.array(v, np.float64) for k, v in params.items()}


def test_init_shapes_and_module_round_trip():
    params = rec.init(jax.random.key(0), U, N_ITEMS, factors=K, init_scale=0.1, global_mean=3.5)
    assert {k: tuple(v.shape) for k, v in params.items()} == {
        "mu": (), "user_bias": (U,), "item_bias": (N_ITEMS,), "user_factors": (U, K), "item_factors": (N_ITEMS, K)}
    assert float(params["mu"]) == 3.5 and not np.any(np.asarray(params["user_bias"]))
    module = rec.to_module(params)
    users, items = jnp.array([0, 3, 6]), jnp.array([5, 0, 2])
    np.testing.assert_allclose(module(users, items), rec.predict(params, users, items), rtol=1e-6)
    # the module built directly (same key) holds the same parameters
    from flax import nnx

    direct = rec.BiasedMF(U, N_ITEMS, factors=K, init_scale=0.1, global_mean=3.5,
                          rngs=nnx.Rngs(params=jax.random.key(0)))
    np.testing.assert_allclose(direct.item_factors[...], params["item_factors"], rtol=1e-6)
    with pytest.raises(ValueError, match="factors"):
        rec.init(jax.random.key(0), U, N_ITEMS, factors=-1)


def test_predict_formula_and_unknown_fallback():
    params = rec.init(jax.random.key(0), U, N_ITEMS, factors=K, init_scale=0.5, global_mean=3.0)
    params = dict(params, user_bias=jnp.arange(U, dtype=jnp.float32) / 10,
                  item_bias=-jnp.arange(N_ITEMS, dtype=jnp.float32) / 10)
    p = np_params(params)
    users = np.array([2, -1, 4, -1])
    items = np.array([1, 3, -1, -1])
    got = np.asarray(rec.predict(params, users, items))
    want = [3.0 + p["user_bias"][2] + p["item_bias"][1] + p["user_factors"][2] @ p["item_factors"][1],
            3.0 + p["item_bias"][3],   # unknown user: μ + b_i
            3.0 + p["user_bias"][4],   # unknown item: μ + b_u
            3.0]                       # both unknown: μ
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_loss_value_by_hand_and_gradients_check(small):
    batch, params = small
    p = np_params(params)
    u, i, r = batch["user"], batch["item"], batch["rating"]
    pred = p["mu"] + p["user_bias"][u] + p["item_bias"][i] + np.sum(p["user_factors"][u] * p["item_factors"][i], 1)
    want = np.mean((pred - r) ** 2 + 0.1 * (np.sum(p["user_factors"][u] ** 2, 1) + np.sum(p["item_factors"][i] ** 2, 1))
                   + 0.3 * (p["user_bias"][u] ** 2 + p["item_bias"][i] ** 2))
    np.testing.assert_allclose(rec.loss(params, batch, reg=0.1, reg_bias=0.3), want, rtol=1e-5)
    # gradients vs central differences in float64, on a 5 x 4 model with rank 2 (29 parameters)
    tiny = rec.init(jax.random.key(5), 5, 4, factors=2, init_scale=0.5, global_mean=3.0)
    tiny_batch = {"user": np.array([0, 1, 4, 4, 2, 0]), "item": np.array([3, 3, 0, 1, 2, 1]),
                  "rating": np.array([5.0, 1.0, 2.0, 4.0, 3.0, 5.0], np.float32)}
    report = jaxcalc.check_grads(lambda prm: rec.loss(prm, tiny_batch, reg=0.1, reg_bias=0.3), tiny)
    assert report.passed


def surprise_sgd_reference(p, batch, lr, reg, epochs):
    """Surprise's SVD.sgd loop (surprise/prediction_algorithms/matrix_factorization.pyx), in numpy."""
    mu, bu, bi, pu, qi = p["mu"], p["user_bias"], p["item_bias"], p["user_factors"], p["item_factors"]
    for _ in range(epochs):
        for u, i, r in zip(batch["user"], batch["item"], batch["rating"], strict=True):
            dot = np.dot(qi[i], pu[u])
            err = r - (mu + bu[u] + bi[i] + dot)
            bu[u] += lr * (err - reg * bu[u])
            bi[i] += lr * (err - reg * bi[i])
            puf, qif = pu[u].copy(), qi[i].copy()
            pu[u] += lr * (err * qif - reg * puf)
            qi[i] += lr * (err * puf - reg * qif)
    return p


def test_per_rating_sgd_matches_numpy_reference(small):
    batch, params = small
    res = rec.fit(batch, 30, 20, method="sgd", epochs=3, lr=0.05, reg=0.02, params=params, key=jax.random.key(0))
    want = surprise_sgd_reference(np_params(params), batch, lr=0.05, reg=0.02, epochs=3)
    for name in ("user_bias", "item_bias", "user_factors", "item_factors"):
        np.testing.assert_allclose(res.params[name], want[name], rtol=2e-4, atol=2e-5, err_msg=name)
    assert np.isfinite(res.history[-1])


def test_one_sgd_step_is_half_the_loss_gradient(small):
    batch, params = small
    one = {k: v[:1] for k, v in batch.items()}
    res = rec.fit(one, 30, 20, method="sgd", epochs=1, lr=0.1, reg=0.05, reg_bias=0.2, params=params,
                  key=jax.random.key(0))
    g = jax.grad(rec.loss)(params, one, reg=0.05, reg_bias=0.2)
    for name in ("user_bias", "item_bias", "user_factors", "item_factors"):
        np.testing.assert_allclose(res.params[name], params[name] - 0.1 * 0.5 * g[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dense_limit", [2 ** 25, 0])  # dense (U, I) products; gathers + scatter-add
def test_fullbatch_gd_step_equals_loss_gradient_step(small, dense_limit):
    batch, params = small
    res = rec.fit(batch, 30, 20, method="fullbatch", optimizer="sgd", epochs=1, lr=0.5, reg=0.1,
                  params=params, key=jax.random.key(0), dense_limit=dense_limit)
    g = jax.grad(rec.loss)(params, batch, reg=0.1)
    for name in ("user_bias", "item_bias", "user_factors", "item_factors"):
        np.testing.assert_allclose(res.params[name], params[name] - 0.5 * g[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.history[0], rec.loss(params, batch, reg=0.1), rtol=1e-6)


def test_minibatch_adam_matches_optax_adam(small):
    batch, params = small
    # batch_size = n: one step per epoch, shuffling irrelevant -> two steps of optax.adam
    res = rec.fit(batch, 30, 20, method="minibatch", epochs=2, lr=0.01, reg=0.05, batch_size=300,
                  params=params, key=jax.random.key(0))
    trainable = {k: v for k, v in params.items() if k != "mu"}
    opt = optax.adam(0.01)
    state = opt.init(trainable)
    for _ in range(2):
        g = jax.grad(lambda t: rec.loss(dict(t, mu=params["mu"]), batch, reg=0.05))(trainable)
        upd, state = opt.update(g, state, trainable)
        trainable = optax.apply_updates(trainable, upd)
    for name, v in trainable.items():
        np.testing.assert_allclose(res.params[name], v, rtol=1e-5, atol=1e-6, err_msg=name)


def test_minibatch_fits_and_shuffles_reproducibly(small):
    batch, _params = small
    a = rec.fit(batch, 30, 20, method="minibatch", epochs=5, lr=0.02, reg=0.05, batch_size=64, factors=4,
                key=jax.random.key(3))
    b = rec.fit(batch, 30, 20, method="minibatch", epochs=5, lr=0.02, reg=0.05, batch_size=64, factors=4,
                key=jax.random.key(3))
    np.testing.assert_array_equal(a.params["user_factors"], b.params["user_factors"])
    assert a.history[-1] < a.history[0]


def test_als_sweep_solves_each_side_exactly(small):
    batch, params = small
    res = rec.fit(batch, 30, 20, method="als", epochs=1, reg=0.1, reg_bias=0.05, params=params, key=jax.random.key(0))
    g = jax.grad(rec.loss)(res.params, batch, reg=0.1, reg_bias=0.05)
    # items are solved last with users fixed: the item gradient vanishes (float32 solve)
    assert float(jnp.max(jnp.abs(g["item_factors"]))) < 1e-5
    assert float(jnp.max(jnp.abs(g["item_bias"]))) < 1e-5
    more = rec.fit(batch, 30, 20, method="als", epochs=8, reg=0.1, reg_bias=0.05, params=params, key=jax.random.key(0))
    assert np.all(np.diff(more.history) <= 1e-6)  # ALS never increases the objective
    sparse = rec.fit(batch, 30, 20, method="als", epochs=8, reg=0.1, reg_bias=0.05, params=params,
                     key=jax.random.key(0), dense_limit=0, chunk=64)
    for name in ("user_bias", "item_factors"):
        np.testing.assert_allclose(sparse.params[name], more.params[name], rtol=1e-3, atol=1e-4)


def test_biases_only_model_and_unseen_rows(small):
    batch, _ = small
    # user 29 / item 19 absent from training: zero biases (their penalty alone), finite fit
    keep = (batch["user"] != 29) & (batch["item"] != 19)
    train = {k: v[keep] for k, v in batch.items()}
    res = rec.fit(train, 30, 20, method="als", factors=0, epochs=3, reg=0.1, key=jax.random.key(0))
    assert res.params["user_factors"].shape == (30, 0)
    assert float(res.params["user_bias"][29]) == 0.0 and float(res.params["item_bias"][19]) == 0.0
    ev = rec.evaluate(res.params, batch, scale=(1, 5), seen_users=np.arange(30) != 29, seen_items=np.arange(20) != 19)
    assert ev["unseen_users"] == int((batch["user"] == 29).sum())
    assert ev["unseen_items"] == int((batch["item"] == 19).sum())
    assert ev["predictions"].min() >= 1 and ev["predictions"].max() <= 5


def test_evaluate_clips_to_scale():
    params = rec.init(jax.random.key(0), 2, 2, factors=1, init_scale=0.0, global_mean=6.0)
    ev = rec.evaluate(params, {"user": np.array([0, 1]), "item": np.array([0, 1]), "rating": np.array([5.0, 4.0])},
                      scale=(1, 5))
    np.testing.assert_allclose(ev["predictions"], [5.0, 5.0])
    np.testing.assert_allclose(ev["rmse"], np.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(ev["mae"], 0.5, rtol=1e-6)


def test_top_n_skips_rated_items_and_matches_brute_force():
    params = rec.init(jax.random.key(2), 5, 9, factors=3, init_scale=1.0, global_mean=3.0)
    p = np_params(params)
    scores = p["mu"] + p["user_bias"][:, None] + p["item_bias"][None, :] + p["user_factors"] @ p["item_factors"].T
    exclude = {1: np.array([0, 4, 8]), 3: np.array([2])}
    s, top = rec.top_n(params, np.array([1, 3, 0]), exclude, n=4, chunk=2)
    for row, u in enumerate([1, 3, 0]):
        cand = [i for i in np.argsort(-scores[u]) if i not in set(exclude.get(u, []))][:4]
        np.testing.assert_array_equal(top[row], cand)
        np.testing.assert_allclose(s[row], scores[u, cand], rtol=1e-5)


def test_fit_rejects_bad_input(small):
    batch, _ = small
    with pytest.raises(ValueError, match="unknown method"):
        rec.fit(batch, 30, 20, method="svdpp", key=jax.random.key(0))
    with pytest.raises(ValueError, match="training indices"):
        rec.fit(dict(batch, user=batch["user"] - 1), 30, 20, key=jax.random.key(0))
    with pytest.raises(ValueError, match="optimizer"):
        rec.fit(batch, 30, 20, method="minibatch", optimizer="rmsprop", key=jax.random.key(0))


def test_als_spectral_start_fits_low_rank_data_in_few_sweeps():
    # noiseless, fully observed: 20 x 15 ratings = 3 + rank-2 product (biases absorbed by ALS)
    rng = np.random.default_rng(0)
    full = 3.0 + rng.normal(size=(20, 2)) @ rng.normal(size=(2, 15))
    uu, ii = np.meshgrid(np.arange(20), np.arange(15), indexing="ij")
    batch = {"user": uu.ravel().astype(np.int32), "item": ii.ravel().astype(np.int32),
             "rating": full.ravel().astype(np.float32)}
    res = rec.fit(batch, 20, 15, method="als", factors=2, epochs=3, reg=1e-6, key=jax.random.key(0))
    pred = rec.predict(res.params, batch["user"], batch["item"])
    assert float(jnp.sqrt(jnp.mean((pred - batch["rating"]) ** 2))) < 1e-3
