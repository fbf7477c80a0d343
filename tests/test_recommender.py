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


@pytest.mark.parametrize("slice_rows", [False, True])  # one 2-row gather, or two dynamic slices (big tables)
def test_sgd_epoch_row_reads_match_numpy_reference(small, slice_rows):
    batch, params = small
    table, mu = rec.pack(params)
    out = rec.sgd_epoch(table, mu, batch["user"], batch["item"] + 30, batch["rating"], 0.05, 0.02, 0.02,
                        unroll=2, slice_rows=slice_rows)
    want = surprise_sgd_reference(np_params(params), batch, lr=0.05, reg=0.02, epochs=1)
    got = rec.unpack(out, mu, 30)
    for name in ("user_bias", "item_bias", "user_factors", "item_factors"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5, err_msg=name)


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


# --------------------------------------------------------------------------- bpmf: Gibbs sampling

from jaxcalc.models.recommender import bpmf  # noqa: E402


def spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T + d * np.eye(d))


def test_sample_rows_is_the_gaussian_conditional(x64):
    """Each row's draw is mean + L⁻ᵀε with P = LLᵀ, mean = P⁻¹(Λm + α·rhs): numpy.linalg, float64."""
    rng = np.random.default_rng(0)
    S, d, alpha = 4, 3, 1.7
    z = rng.normal(size=(S, 6, d))
    gram, rhs = np.einsum("snd,sne->sde", z, z), rng.normal(size=(S, d))
    gram[2], rhs[2] = 0.0, 0.0  # a row with no ratings: its draw comes from the prior alone
    m, lam, eps = rng.normal(size=d), spd(rng, d), rng.normal(size=(S, d))
    x, mean = jax.jit(bpmf.sample_rows)(gram, rhs, alpha, m, lam, eps)
    for s in range(S):
        P = alpha * gram[s] + lam
        want_mean = np.linalg.solve(P, lam @ m + alpha * rhs[s])
        L = np.linalg.cholesky(P)
        np.testing.assert_allclose(mean[s], want_mean, rtol=1e-10)
        np.testing.assert_allclose(x[s], want_mean + np.linalg.solve(L.T, eps[s]), rtol=1e-10)
    np.testing.assert_allclose(mean[2], m, rtol=1e-10)  # prior mean where there is no data


def test_conditional_mean_minimises_the_row_negative_log_posterior(x64):
    """mean = argmin α/2 Σ(y − zᵀx)² + ½(x − m)ᵀΛ(x − m): jax.grad vanishes there, jax.hessian = P;
    with Λ = n·reg·I, m = 0 it is ALS's ridge solution."""
    rng = np.random.default_rng(1)
    d, n, alpha = 4, 9, 2.0
    z, y = rng.normal(size=(n, d)), rng.normal(size=n)
    m, lam = rng.normal(size=d), spd(rng, d)

    def neg_log_post(x):
        return alpha / 2 * jnp.sum((y - z @ x) ** 2) + 0.5 * (x - m) @ lam @ (x - m)

    _, mean = bpmf.sample_rows((z.T @ z)[None], (z.T @ y)[None], alpha, m, lam, np.zeros((1, d)))
    np.testing.assert_allclose(jax.grad(neg_log_post)(mean[0]), 0.0, atol=1e-10)
    np.testing.assert_allclose(jax.hessian(neg_log_post)(mean[0]), alpha * z.T @ z + lam, rtol=1e-10)
    reg = 0.3
    _, ridge = bpmf.sample_rows((z.T @ z)[None], (z.T @ y)[None], 1.0, np.zeros(d), n * reg * np.eye(d),
                                np.zeros((1, d)))
    counts = np.array([float(n)])
    np.testing.assert_allclose(ridge, rec.als.solve_rows((z.T @ z)[None], (z.T @ y)[None], counts, reg, reg),
                               rtol=1e-8)


def test_wishart_and_normal_wishart_draws_have_the_closed_form_moments():
    """4000 draws: E[Λ] = ν W and Var(Λ_jl) = ν (W_jl² + W_jj W_ll) for the Wishart; for the
    Normal-Wishart posterior E[Λ] = ν* W*, E[m] = m*, Cov(m) = E[(β*Λ)⁻¹] = (W*)⁻¹ / (β*(ν* − d − 1))."""
    rng = np.random.default_rng(2)
    d, df, n_draws = 3, 7, 4000
    W = spd(rng, d, 0.1)
    C = np.linalg.cholesky(np.linalg.inv(W)).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), n_draws)
    draw = jax.jit(jax.vmap(lambda k: bpmf.wishart(C, df, *bpmf._normals(k, [(d, df), (d, d)], jnp.float32))[0]))
    lam = np.asarray(draw(keys), np.float64)
    sd_mean = np.sqrt(df * (W ** 2 + np.outer(np.diag(W), np.diag(W))))
    np.testing.assert_array_less(np.abs(lam.mean(0) - df * W), 5 * sd_mean / np.sqrt(n_draws))
    np.testing.assert_allclose(lam.var(0), df * (W ** 2 + np.outer(np.diag(W), np.diag(W))), rtol=0.15)

    rows = rng.normal(0.5, 1.0, size=(12, d)).astype(np.float32)
    N, beta0 = rows.shape[0], bpmf.BETA0
    mean = rows.mean(0)
    inv_w = np.eye(d) + (rows - mean).T @ (rows - mean) + beta0 * N / (beta0 + N) * np.outer(mean, mean)
    hyper = jax.jit(jax.vmap(lambda k: bpmf.sample_hyper(
        rows, *bpmf._normals(k, bpmf.hyper_noise_shapes(N, d), jnp.float32))))
    m, lam = (np.asarray(a, np.float64) for a in hyper(keys))
    nu, beta = d + N, beta0 + N
    np.testing.assert_allclose(lam.mean(0), nu * np.linalg.inv(inv_w), rtol=0.05, atol=0.05 * nu / np.trace(inv_w))
    cov_m = inv_w / (beta * (nu - d - 1))
    np.testing.assert_array_less(np.abs(m.mean(0) - N * mean / beta), 5 * np.sqrt(np.diag(cov_m) / n_draws))
    np.testing.assert_allclose(np.cov(m.T), cov_m, rtol=0.15, atol=0.1 * np.abs(cov_m).max())


def test_dense_and_sparse_statistics_match_numpy(small):
    """Σ z zᵀ and Σ z (r − μ − b_other) per row, z = [q, 1]: dense GEMMs, chunked scatter, numpy loops."""
    batch, params = small
    table, mu = rec.pack(params)
    U = 30
    items = table[U:]
    mask, rmat, _, _ = bpmf.dense_inputs(batch["user"], batch["item"], batch["rating"], mu, num_users=U,
                                         num_items=20)
    d = table.shape[1]
    dense = bpmf._stats_dense(mask, rmat, items, tuple(np.triu_indices(d)))
    sparse = bpmf._stats_sparse(items[batch["item"]], batch["rating"] - mu, batch["user"], U, 64)
    z = np.concatenate([np.asarray(items[:, :-1]), np.ones((20, 1))], axis=1).astype(np.float64)
    gram, rhs = np.zeros((U, d, d)), np.zeros((U, d))
    for u, i, r in zip(batch["user"], batch["item"], batch["rating"], strict=True):
        gram[u] += np.outer(z[i], z[i])
        rhs[u] += z[i] * (r - float(mu) - float(items[i, -1]))
    for got in (dense, sparse):
        np.testing.assert_allclose(got[0], gram, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1], rhs, rtol=1e-5, atol=1e-5)


def test_bpmf_start_biases_are_mean_residuals(small):
    """Items' mean of r − μ, then users' mean of r − μ − b_i (numpy); users' factors zero, items' factors
    of full rank k = 4 (the spectral start's subspace)."""
    batch, _ = small
    u, i, r = batch["user"], batch["item"], batch["rating"].astype(np.float64)
    mu = r.mean()
    mask, rmat, _, _ = bpmf.dense_inputs(u, i, batch["rating"], np.float32(mu), num_users=30, num_items=20)
    start = np.asarray(bpmf.spectral_start(jnp.zeros((50, 5)), mask, rmat, jax.random.key(0), num_users=30))
    bi = np.bincount(i, r - mu, minlength=20) / np.maximum(np.bincount(i, minlength=20), 1)
    bu = np.bincount(u, r - mu - bi[i], minlength=30) / np.maximum(np.bincount(u, minlength=30), 1)
    np.testing.assert_allclose(start[30:, -1], bi, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(start[:30, -1], bu, rtol=1e-5, atol=1e-6)
    assert not np.any(start[:30, :-1]) and np.linalg.matrix_rank(start[30:, :-1]) == 4
    # the same start from per-rating segment sums (sets too big for the dense matrices)
    sparse = np.asarray(bpmf.sparse_start(jnp.zeros((50, 5)), u, i, batch["rating"] - np.float32(mu),
                                          jax.random.key(0), num_users=30))
    np.testing.assert_allclose(sparse[:, -1], start[:, -1], rtol=1e-5, atol=1e-6)
    items_gram = start[30:, :-1] @ start[30:, :-1].T  # invariant to the sign of each singular vector
    np.testing.assert_allclose(sparse[30:, :-1] @ sparse[30:, :-1].T, items_gram, rtol=1e-3, atol=1e-4)


def test_posterior_mean_params_predict_the_average_of_the_draws():
    rng = np.random.default_rng(3)
    S, U, n_items, d = 4, 5, 6, 3
    users = rng.normal(size=(S, U, d)).astype(np.float32)
    items = rng.normal(size=(S, n_items, d)).astype(np.float32)
    users[3], items[3] = 0.0, 0.0  # an unfilled slot: count = 3 ignores it
    params = bpmf.posterior_mean_params(users, items, np.zeros(S, np.float32), 3, 3.5)
    assert params["user_factors"].shape == (U, S * (d - 1))
    uu, ii = np.meshgrid(np.arange(U), np.arange(n_items), indexing="ij")
    got = np.asarray(rec.predict(params, uu.ravel(), ii.ravel())).reshape(U, n_items)
    per_draw = [3.5 + users[s, :, -1][:, None] + items[s, :, -1][None, :] + users[s, :, :-1] @ items[s, :, :-1].T
                for s in range(3)]
    np.testing.assert_allclose(got, np.mean(per_draw, axis=0), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def synthetic_split():
    from jaxcalc.data import movielens as ml

    syn = ml.synthetic_ratings(jax.random.key(0), num_users=60, num_items=40, density=0.4, rank=2, noise=0.5,
                               factor_std=1.0, integer=False)
    tr, te, _, ite = ml.random_split(syn.data, test_fraction=0.2, key=jax.random.key(1), return_index=True)
    return tr, te, syn.expected[ite]


@pytest.fixture(scope="module")
def bpmf_fits(synthetic_split):
    """Five fits, three compiled programs: α sampled (keys 5, 5, 6), α fixed from a random start on the
    dense and the sparse path."""
    tr, _, _ = synthetic_split
    kw = dict(method="bpmf", factors=3, epochs=12, burn_in=3)
    fits = {name: rec.fit(tr.as_batch(), tr.num_users, tr.num_items, key=jax.random.key(seed),
                          noise_precision=None, **kw) for name, seed in (("a", 5), ("b", 5), ("c", 6))}
    for name, lim in (("dense", 2 ** 25), ("sparse", 0)):
        fits[name] = rec.fit(tr.as_batch(), tr.num_users, tr.num_items, key=jax.random.key(5), dense_limit=lim,
                             chunk=64, spectral_init=False, noise_precision=2.0, **kw)
    return fits


def test_bpmf_fit_finds_the_low_rank_structure_and_is_deterministic(synthetic_split, bpmf_fits):
    """768 continuous ratings of a rank-2 model (noise σ = 0.5, factor term std 1): the posterior mean
    lands far below the global mean, within 35% of the Bayes-optimal RMSE (the noise floor, from the
    true parameters; estimation error of 100 rows from 768 ratings accounts for the rest)."""
    tr, te, expected = synthetic_split
    a, b, c = bpmf_fits["a"], bpmf_fits["b"], bpmf_fits["c"]
    for name in rec.PARAM_KEYS:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)  # same key, same bits
    assert not np.allclose(a.params["user_bias"], c.params["user_bias"])
    assert a.params["user_factors"].shape == (tr.num_users, 9 * 3) and a.details["samples"] == 9
    ev = rec.evaluate(a.params, te.as_batch(), scale=tr.scale)
    floor = float(np.sqrt(np.mean((expected - te.ratings) ** 2)))
    global_mean = float(np.sqrt(np.mean((tr.ratings.mean() - te.ratings) ** 2)))
    assert ev["rmse"] < 1.35 * floor and ev["rmse"] < 0.6 * global_mean
    # from the same start, the sparse (scatter) path draws the same chain as the dense one, to float32 rounding
    np.testing.assert_allclose(bpmf_fits["sparse"].params["user_bias"], bpmf_fits["dense"].params["user_bias"],
                               rtol=1e-3, atol=1e-3)


def test_bpmf_sampled_noise_precision_finds_the_true_noise(synthetic_split, bpmf_fits):
    """Continuous ratings with noise σ = 0.5: the sampled α settles near 1/σ² = 4 (clipping to [1, 5]
    and finite data move it a little); a fixed α stays fixed."""
    tr, _, _ = synthetic_split
    assert 3.0 < float(np.median(bpmf_fits["a"].details["noise_precision"][3:])) < 6.0
    np.testing.assert_array_equal(bpmf_fits["dense"].details["noise_precision"], 2.0)
    with pytest.raises(ValueError, match="burn_in"):
        rec.fit(tr.as_batch(), tr.num_users, tr.num_items, method="bpmf", epochs=3, burn_in=3, key=jax.random.key(0))
