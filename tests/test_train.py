"""Tests for jaxcalc.train (fit / sweep / lr_find) and jaxcalc.data.synthetic."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcalc import DivergenceError, batchstep, losses, train
from jaxcalc.data import synthetic
from jaxcalc.models.linear import init_linear, least_squares, mse_loss


@pytest.fixture(scope="module")
def reg():
    data, truth = synthetic.linear_regression(jax.random.key(0), 10, 3, noise=0.1)
    return data, truth, init_linear(None, 3)


# ----------------------------------------------------------------- the three methods


def test_batch_equals_optax_loop(reg):
    data, _, p0 = reg
    opt = optax.sgd(0.05)
    params, hist = train.fit(mse_loss, p0, data, optimizer=opt, method="batch", epochs=20,
                             full_loss=True)
    # reference: a plain Python loop of optax updates on the full data
    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(mse_loss)(p, data)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    p, s, losses = p0, opt.init(p0), []
    for _ in range(20):
        p, s, loss = step(p, s)
        losses.append(float(loss))
    np.testing.assert_allclose(params["w"], p["w"], rtol=1e-5)
    np.testing.assert_allclose(params["b"], p["b"], rtol=1e-5)
    np.testing.assert_allclose(hist["loss"], losses, rtol=1e-5)
    # full_loss: the loss after each epoch = the loss before the next one
    np.testing.assert_allclose(hist["full_loss"], [*losses[1:], float(mse_loss(p, data))], rtol=1e-5)
    assert hist["loss"].shape == (20,) and hist["grad_norm"].shape == (20,)
    assert hist["status"] == "completed" and hist["epochs_run"] == 20


def _count_loss(params, batch):
    """-Σ c[i] over the batch's example indices: with sgd(1.0), c counts how often each example
    was used (the gradient w.r.t. c[i] is -1 per use)."""
    return -jnp.sum(params["c"][batch["i"]]) + 0.0 * jnp.sum(batch["x"])


@pytest.mark.parametrize("method,batch_size,drop_last,steps", [
    ("sgd", None, False, 7), ("minibatch", 3, False, 3), ("minibatch", 3, True, 2)])
def test_every_example_once_per_epoch(method, batch_size, drop_last, steps):
    n = 7
    data = {"i": jnp.arange(n), "x": jnp.ones((n, 2))}
    params, hist = train.fit(_count_loss, {"c": jnp.zeros(n)}, data, optimizer=optax.sgd(1.0),
                             method=method, batch_size=batch_size, drop_last=drop_last, epochs=2,
                             key=jax.random.key(3), history_every="step")
    counts = np.asarray(params["c"])
    assert hist["steps_per_epoch"] == steps and hist["step_loss"].shape == (2 * steps,)
    if drop_last:  # 6 of the 7 examples per epoch, a fresh order each epoch
        assert counts.sum() == 12 and counts.max() <= 2
    else:
        np.testing.assert_array_equal(counts, np.full(n, 2.0))


def test_order_is_fresh_each_epoch_and_key_driven(reg):
    data, _, p0 = reg
    kw = dict(optimizer=optax.sgd(0.1), method="sgd", epochs=2, history_every="step")
    _, h1 = train.fit(mse_loss, p0, {"x": data["x"], "y": data["y"]}, key=jax.random.key(5), **kw)
    # the same examples in another order give other per-step losses
    _, h2 = train.fit(mse_loss, p0, data, key=jax.random.key(6), **kw)
    assert not np.array_equal(h1["step_loss"], h2["step_loss"])


def test_same_key_bitwise_and_jit_equals_eager():
    data, _ = synthetic.linear_regression(jax.random.key(1), 4, 2)
    p0 = init_linear(None, 2)
    kw = dict(optimizer=optax.sgd(0.1), method="minibatch", batch_size=2, epochs=1,
              key=jax.random.key(7), history_every="step")
    pa, ha = train.fit(mse_loss, p0, data, **kw)
    pb, hb = train.fit(mse_loss, p0, data, **kw)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    np.testing.assert_array_equal(ha["step_loss"], hb["step_loss"])
    with jax.disable_jit():
        pc, hc = train.fit(mse_loss, p0, data, **kw)
    for k in pa:
        np.testing.assert_allclose(pa[k], pc[k], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ha["step_loss"], hc["step_loss"], rtol=1e-6)


def test_callback_path_equals_scan_path_and_can_stop(reg):
    data, _, p0 = reg
    opt = optax.sgd(0.05)
    p_scan, h_scan = train.fit(mse_loss, p0, data, optimizer=opt, epochs=6)
    seen = []
    p_cb, h_cb = train.fit(mse_loss, p0, data, optimizer=opt, epochs=6,
                           callback=lambda e, p, m: seen.append((e, m["loss"])) and False)
    np.testing.assert_allclose(p_cb["w"], p_scan["w"], rtol=1e-6)
    np.testing.assert_allclose(h_cb["loss"], h_scan["loss"], rtol=1e-6)
    assert [e for e, _ in seen] == list(range(6))
    _, h_stop = train.fit(mse_loss, p0, data, optimizer=opt, epochs=6, progress=True,
                          callback=lambda e, p, m: e == 2)
    assert h_stop["epochs_run"] == 3


# ----------------------------------------------------------------- divergence / early stop


def _blow_up_loss(params, batch):
    """-p, which turns NaN once p >= 5; with sgd(1.0) p grows by 1 per step (p_t = t)."""
    p = params["p"]
    return jnp.where(p >= 5.0, jnp.nan, -p) + 0.0 * jnp.sum(batch["x"])


@pytest.mark.parametrize("method,batch_size,epoch,step", [("batch", None, 5, 0), ("minibatch", 2, 2, 1)])
def test_divergence_raises_with_location(method, batch_size, epoch, step):
    data = {"x": jnp.ones((4, 1))}
    kw = dict(optimizer=optax.sgd(1.0), method=method, batch_size=batch_size, epochs=10,
              key=jax.random.key(0))
    with pytest.raises(DivergenceError, match=f"epoch {epoch}, step {step}") as info:
        train.fit(_blow_up_loss, {"p": jnp.zeros(())}, data, **kw)
    err = info.value
    # by hand: the loss at step t is -t, so the last finite loss is -4 and the diverging step
    # started from p = 5
    assert (err.epoch, err.step, err.last_finite_loss) == (epoch, step, -4.0)
    assert float(err.last_finite_params["p"]) == 5.0
    assert err.history["loss"].shape == (epoch + 1,)
    params, hist = train.fit(_blow_up_loss, {"p": jnp.zeros(())}, data, on_divergence="return", **kw)
    assert hist["status"] == "diverged" and float(params["p"]) == 5.0
    assert (hist["stop_epoch"], hist["stop_step"]) == (epoch, step)


def test_divergence_on_a_quadratic(reg):
    data, _, p0 = reg
    with pytest.raises(DivergenceError, match="Try a smaller learning rate") as info:
        train.fit(mse_loss, p0, data, optimizer=optax.sgd(5.0), epochs=200)
    err = info.value
    assert np.isfinite(err.last_finite_loss)
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(err.last_finite_params))


def test_grad_tol_early_stop():
    # f(p) = p²/2 with lr 0.5: p_k = 0.5^k, gradient p_k; first k with 0.5^k <= 0.01 is 7 (by hand)
    data = {"x": jnp.ones((1, 1))}
    loss = lambda p, b: 0.5 * p["p"] ** 2 + 0.0 * jnp.sum(b["x"])
    params, hist = train.fit(loss, {"p": jnp.ones(())}, data, optimizer=optax.sgd(0.5),
                             epochs=50, grad_tol=0.01)
    assert hist["status"] == "converged" and hist["stop_epoch"] == 7
    assert float(params["p"]) == 0.5**7 and hist["epochs_run"] == 8


# ----------------------------------------------------------------- sweep and lr_find


def test_sweep_lrs_equals_separate_fits_and_flags_divergence(reg):
    data, _, p0 = reg
    lrs = [0.01, 0.3, 50.0]
    kw = dict(method="minibatch", batch_size=4, epochs=6, key=jax.random.key(2))
    params, hist = train.sweep(mse_loss, p0, data, make_optimizer=optax.sgd, learning_rates=lrs, **kw)
    assert params["w"].shape == (3, 3) and hist["loss"].shape == (3, 6)
    for i, lr in enumerate(lrs[:2]):
        p, h = train.fit(mse_loss, p0, data, optimizer=optax.sgd(lr), **kw)
        np.testing.assert_allclose(params["w"][i], p["w"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(hist["loss"][i], h["loss"], rtol=1e-5)
    assert list(hist["status"]) == ["completed", "completed", "diverged"]
    assert list(hist["stop_epoch"][:2]) == [-1, -1] and hist["stop_epoch"][2] >= 0


def test_sweep_new_learning_rates_do_not_recompile(reg, caplog):
    data, _, p0 = reg
    kw = dict(make_optimizer=optax.sgd, epochs=3)
    train.sweep(mse_loss, p0, data, learning_rates=[0.1, 0.2], **kw)
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        _, hist = train.sweep(mse_loss, p0, data, learning_rates=[0.05, 0.3], **kw)
    assert not [r for r in caplog.records if r.getMessage().startswith("Compiling")]
    np.testing.assert_allclose(hist["learning_rates"], [0.05, 0.3])


def test_sweep_seeds_equals_separate_fits(reg):
    data, _, p0 = reg
    opt = optax.sgd(0.05)
    kw = dict(method="sgd", epochs=3)
    params, hist = train.sweep(mse_loss, p0, data, optimizer=opt, seeds=[4, 9], **kw)
    assert list(hist["seeds"]) == [4, 9]
    for i, s in enumerate([4, 9]):
        p, _ = train.fit(mse_loss, p0, data, optimizer=opt, key=jax.random.key(s), **kw)
        np.testing.assert_allclose(params["b"][i], p["b"], rtol=1e-5, atol=1e-6)


def test_lr_find_stops_past_the_stability_limit():
    # f(p) = λ/2 |p|², GD is stable for lr < 2/λ (closed form); λ = 4 -> 0.5
    lam = 4.0
    data = {"x": jnp.ones((3, 1))}
    loss = lambda p, b: 0.5 * lam * jnp.sum(p["p"] ** 2) + 0.0 * jnp.sum(b["x"])
    res = train.lr_find(loss, {"p": jnp.ones(2)}, data, optimizer_fn=optax.sgd, min_lr=1e-3,
                        max_lr=10.0, steps=60, key=jax.random.key(0), smoothing=0.9)
    assert res["stopped_step"] > 0 and res["lrs"][-1] > 2 / lam
    assert res["suggested_lr"] < 2 / lam and res["lr_min_over_10"] < 2 / lam
    # the smoothed curve is the bias-corrected EMA of the raw losses (numpy reference)
    ema, ref = 0.0, []
    for t, v in enumerate(res["losses"]):
        ema = 0.9 * ema + 0.1 * v
        ref.append(ema / (1 - 0.9 ** (t + 1)))
    np.testing.assert_allclose(res["smoothed"], ref, rtol=1e-4)
    np.testing.assert_allclose(res["lrs"][:3], 1e-3 * (1e4 ** (np.arange(3) / 59)), rtol=1e-5)


# ----------------------------------------------------------------- bad input


def test_bad_data_leading_lengths_named():
    data = {"x": jnp.ones((5, 2)), "y": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"\['x'\]: 5.*\['y'\]: 4"):
        train.fit(mse_loss, init_linear(None, 2), data, optimizer=optax.sgd(0.1), epochs=1)


@pytest.mark.parametrize("data,match", [
    ({}, "empty"), ({"x": jnp.ones((0, 2)), "y": jnp.ones(0)}, "empty"),
    ({"x": jnp.ones((3, 2)).at[1, 0].set(jnp.nan).at[2, 1].set(jnp.inf), "y": jnp.ones(3)},
     r"\['x'\] holds 2 non-finite")])
def test_bad_data(data, match):
    with pytest.raises(ValueError, match=match):
        train.fit(mse_loss, init_linear(None, 2), data, optimizer=optax.sgd(0.1), epochs=1)


@pytest.mark.parametrize("kw,match", [
    (dict(method="minibatch", batch_size=0), "batch_size must be positive"),
    (dict(method="minibatch", batch_size=-2), "batch_size must be positive"),
    (dict(method="minibatch", batch_size=6), "larger than the data"),
    (dict(method="minibatch"), "needs batch_size"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(method="newton"), "method must be one of"),
    (dict(method="sgd", key=None), "needs a key"),
    (dict(history_every="batch"), "history_every"),
    (dict(clip_norm=0.0), "clip_norm must be positive")])
def test_bad_options(kw, match):
    data = {"x": jnp.ones((5, 2)), "y": jnp.ones(5)}
    args = dict(optimizer=optax.sgd(0.1), epochs=1, key=jax.random.key(0))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        train.fit(mse_loss, init_linear(None, 2), data, **args)


# ----------------------------------------------------------------- synthetic data


def test_synthetic_regression_truth_recovered_within_noise():
    data, truth = synthetic.linear_regression(jax.random.key(3), 2000, 4, noise=0.1, b=1.5)
    again, _ = synthetic.linear_regression(jax.random.key(3), 2000, 4, noise=0.1, b=1.5)
    np.testing.assert_array_equal(data["x"], again["x"])
    sol = least_squares(data["x"], data["y"])
    # standard error of each coefficient ≈ noise / sqrt(n) ≈ 0.0022; allow 5 sigma
    np.testing.assert_allclose(sol["w"], truth["w"], atol=0.012)
    np.testing.assert_allclose(sol["b"], 1.5, atol=0.012)
    resid = data["y"] - data["x"] @ truth["w"] - truth["b"]
    assert 0.09 < float(jnp.std(resid)) < 0.11


def test_blobs():
    data, centers = synthetic.blobs(jax.random.key(0), 50, num_classes=3, d=2)
    assert data["x"].shape == (50, 2) and data["y"].dtype == jnp.int32
    assert centers.shape == (3, 2) and set(np.unique(data["y"])) <= {0, 1, 2}
    with pytest.raises(ValueError):
        synthetic.blobs(jax.random.key(0), 5, num_classes=1)


# ----------------------------------------------------------------- per-example clipping / noise scale


def _linreg_per_example_grads_at_zero(data):
    """Closed form (by hand): at θ = 0 the one-example MSE gradient is -2 y_i [x_i, 1]."""
    x, y = np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64)
    return -2.0 * y[:, None] * np.c_[x, np.ones(len(y))]


def test_clip_norm_batch_step_matches_closed_form(reg):
    data, _, p0 = reg
    g = _linreg_per_example_grads_at_zero(data)
    c = 0.5 * np.median(np.linalg.norm(g, axis=1))
    clipped = g * np.minimum(1.0, c / np.linalg.norm(g, axis=1))[:, None]
    params, hist = train.fit(mse_loss, p0, data, optimizer=optax.sgd(0.1), epochs=1, clip_norm=float(c),
                             log_noise_scale=True)
    np.testing.assert_allclose(params["w"], -0.1 * clipped.mean(0)[:3], rtol=1e-5)
    np.testing.assert_allclose(params["b"], -0.1 * clipped.mean(0)[3], rtol=1e-5)
    # B_simple = tr(Σ)/|G|² with the unbiased estimators (McCandlish et al. 2018), in numpy
    n = len(g)
    tr = np.sum((g - g.mean(0)) ** 2) / (n - 1)
    np.testing.assert_allclose(hist["noise_scale"], [tr / (np.sum(g.mean(0) ** 2) - tr / n)], rtol=1e-4)


def test_clip_noise_is_key_driven(reg):
    data, _, p0 = reg
    kw = dict(optimizer=optax.sgd(0.05), method="minibatch", batch_size=5, epochs=2)
    noisy = [train.fit(mse_loss, p0, data, key=jax.random.key(k), clip_norm=1.0, noise_multiplier=1.0,
                       **kw)[0]["w"] for k in (1, 1, 2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])
    assert not np.allclose(noisy[0], noisy[2])
    with pytest.raises(ValueError, match="batches of >= 2"):
        train.fit(mse_loss, p0, data, optimizer=optax.sgd(0.1), method="sgd", epochs=1,
                  key=jax.random.key(0), log_noise_scale=True)


# ----------------------------------------------------------------- large batches: layout and chunks


def _mlp_ce(params, batch):
    from jaxcalc import losses
    from jaxcalc.models.mlp import mlp_apply

    return losses.cross_entropy(mlp_apply(params, batch["x"]), batch["y"])


@pytest.fixture(scope="module")
def cls():
    from jaxcalc.models.mlp import init_mlp

    data, _ = synthetic.blobs(jax.random.key(1), 13, num_classes=3, d=4)
    return data, init_mlp(jax.random.key(2), (4, 6, 3))


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


SGD = optax.sgd(0.1)  # one optimizer object: fits with the same options share a compiled program


@pytest.mark.parametrize("problem,method,batch_size", [
    ("mse", "batch", None), ("cross_entropy", "minibatch", 9), ("mlp", "batch", None)])
def test_chunked_step_equals_whole_batch_step(problem, method, batch_size, reg, cls):
    if problem == "mse":
        data, _, p0 = reg
        loss = mse_loss
    elif problem == "cross_entropy":  # a linear softmax classifier
        from jaxcalc import losses

        data, _ = cls
        p0 = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
        loss = lambda p, b: losses.cross_entropy(b["x"] @ p["w"] + p["b"][None, :], b["y"])
    else:
        data, p0 = cls
        loss = _mlp_ce
    kw = dict(optimizer=SGD, method=method, batch_size=batch_size, epochs=4, key=jax.random.key(0),
              history_every="step")
    whole_p, whole_h = train.fit(loss, p0, data, chunked=False, **kw)
    # chunks of 3 (several chunks per step, and a smaller last chunk): same result to float32 rounding
    chunk_p, chunk_h = train.fit(loss, p0, data, chunked=True, chunk_size=3, **kw)
    _assert_trees_close(chunk_p, whole_p)
    np.testing.assert_allclose(chunk_h["step_loss"], whole_h["step_loss"], rtol=1e-5)
    assert not np.allclose(whole_p["w"] if problem != "mlp" else whole_p[0][0],
                           p0["w"] if problem != "mlp" else p0[0][0])  # it trained


def test_auto_cuts_large_batch_data_into_chunks(monkeypatch):
    # "auto" cuts method="batch" data of >= 2 chunks of SPLIT_CHUNK_L2 L2 caches; shrink the chunk so
    # that this small problem qualifies, then compare with the whole-batch step
    x = jax.random.normal(jax.random.key(5), (64, 3))
    data = {"x": x, "y": (x[:, 0] > 0).astype(jnp.float32)}
    p0 = init_linear(None, 3)
    kw = dict(optimizer=SGD, epochs=5, full_loss=True)
    ref_p, ref_h = train.fit(_logistic, p0, data, chunked=False, **kw)
    monkeypatch.setattr(train, "SPLIT_CHUNK_L2", 300 / batchstep.cpu_cache_bytes()[0])  # 300-byte chunks
    train._FIT_CACHE.clear()
    train._compiled.cache_clear()
    p, h = train.fit(_logistic, p0, data, **kw)
    loop = next(v[1] for k, v in train._FIT_CACHE.items() if k[0] is _logistic)
    how = loop.prepare(p0, data, allow_fold=True)
    assert how.split == (16, 16, 16, 16) and how.fold == (True, False)  # 16 bytes per example
    _assert_trees_close(p, ref_p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(h["full_loss"], ref_h["full_loss"], rtol=1e-6)
    train._FIT_CACHE.clear()
    train._compiled.cache_clear()


def test_chunked_falls_back_where_the_loss_is_not_a_mean(reg):
    data, _, p0 = reg
    summed = lambda p, b: jnp.sum((b["x"] @ p["w"] + p["b"] - b["y"]) ** 2)
    kw = dict(optimizer=optax.sgd(0.01), epochs=3)
    ref, _ = train.fit(summed, p0, data, chunked=False, **kw)
    with pytest.warns(UserWarning, match="not provably a mean"):
        got, _ = train.fit(summed, p0, data, chunked=True, chunk_size=3, **kw)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)  # the whole-batch step, bit for bit


def _logistic(params, batch):
    """Logistic regression whose loss checks its binary labels (as jaxcalc.losses do)."""
    from jaxcalc import checks

    z = batch["x"] @ params["w"] + params["b"]
    y = batch["y"]
    bad = (y < 0) | (y > 1)
    checks.check_entries(bad, y, name="labels", condition="is not in [0, 1]")
    return jnp.mean(checks.poison(jnp.logaddexp(0.0, z) - y * z, bad))


def test_feature_major_layout_equals_layout_as_given():
    x = jax.random.normal(jax.random.key(4), (64, 3))
    data = {"x": x, "y": (x[:, 0] > 0).astype(jnp.float32)}
    p0 = init_linear(None, 3)
    kw = dict(optimizer=SGD, epochs=5, full_loss=True)
    p_auto, h_auto = train.fit(_logistic, p0, data, **kw)  # X stored (3, 64): products on the transpose
    p_given, h_given = train.fit(_logistic, p0, data, layout="as_given", **kw)
    _assert_trees_close(p_auto, p_given, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(h_auto["loss"], h_given["loss"], rtol=1e-6)
    np.testing.assert_allclose(h_auto["full_loss"], h_given["full_loss"], rtol=1e-6)
    # the loss's value check still runs on the re-laid-out program
    with pytest.raises(ValueError, match=r"labels\[5\] = 2\.0 is not in \[0, 1\]"):
        train.fit(_logistic, p0, {"x": x, "y": data["y"].at[5].set(2.0)}, **kw)


# ----------------------------------------------------------------- warm calls


def test_warm_call_history_is_the_cold_calls(reg):
    data, _, p0 = reg
    kw = dict(optimizer=optax.sgd(0.05), method="minibatch", batch_size=4, epochs=3, key=jax.random.key(1),
              history_every="step", full_loss=True, log_noise_scale=True)
    train._FIT_CACHE.clear()
    p1, h1 = train.fit(mse_loss, p0, data, **kw)  # cold: validates, compiles
    p2, h2 = train.fit(mse_loss, p0, data, **kw)  # warm: cached options, data known finite
    assert h1.keys() == h2.keys() == {"loss", "grad_norm", "noise_scale", "full_loss", "step_loss",
                                      "step_grad_norm", "status", "steps_per_epoch", "stop_epoch", "stop_step",
                                      "epochs_run", "last_finite_loss"}
    for k in h1:
        np.testing.assert_array_equal(h1[k], h2[k])
    assert h1["step_loss"].shape == (9,) and h1["loss"].dtype == np.float32
    _assert_trees_close(p1, p2, rtol=0, atol=0)
    # the per-epoch path (callback) reports the same history
    _, h3 = train.fit(mse_loss, p0, data, callback=lambda e, p, m: None, **kw)
    for k in ("loss", "grad_norm", "noise_scale", "full_loss", "step_loss"):
        np.testing.assert_allclose(h3[k], h1[k], rtol=1e-6)


def test_numpy_data_is_checked_every_call_jax_arrays_once():
    x = np.ones((5, 2), np.float32)
    data = {"x": x, "y": np.ones(5, np.float32)}
    kw = dict(optimizer=optax.sgd(0.1), epochs=1)
    train.fit(mse_loss, init_linear(None, 2), data, **kw)
    x[2, 1] = np.nan  # changed in place: a numpy array can be; the next call must see it
    with pytest.raises(ValueError, match=r"\['x'\] holds 1 non-finite"):
        train.fit(mse_loss, init_linear(None, 2), data, **kw)
    good = jnp.ones((5, 2))
    train.fit(mse_loss, init_linear(None, 2), {"x": good, "y": jnp.ones(5)}, **kw)
    assert train._FINITE[id(good)]() is good  # remembered while it lives


# ----------------------------------------------------------------- value checks inside the run


def _checked_softmax_ce(params, batch):
    """Linear softmax classifier trained with jaxcalc.losses.cross_entropy (which checks its labels)."""
    return losses.cross_entropy(batch["x"] @ params["w"] + params["b"][None, :], batch["y"])


def _plain_softmax_ce(params, batch):
    """The same loss written without any label check (for valid labels the runs must agree)."""
    logits = batch["x"] @ params["w"] + params["b"][None, :]
    picked = jnp.take_along_axis(logits, batch["y"][:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


@pytest.mark.parametrize("method,batch_size", [("batch", None), ("sgd", None), ("minibatch", 5)])
def test_bad_label_raises_naming_the_example(cls, method, batch_size):
    data, _ = cls
    p0 = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    kw = dict(optimizer=SGD, method=method, batch_size=batch_size, epochs=2, key=jax.random.key(0))
    for label in (-1, 10):  # -1 used to train silently, 10 to end in a DivergenceError blaming the lr
        bad = {"x": data["x"], "y": data["y"].at[7].set(label)}
        msg = rf"labels\[7\] = {label} is outside the valid class range \[0, 3\) \(1 bad label\(s\) in all\)"
        with pytest.raises(ValueError, match=msg):
            train.fit(_checked_softmax_ce, p0, bad, **kw)
    # valid labels: trains (same compiled program), as the same loss without its check does
    _, h = train.fit(_checked_softmax_ce, p0, data, **kw)
    assert h["status"] == "completed"
    if method == "batch":
        _, ref = train.fit(_plain_softmax_ce, p0, data, **kw)
        np.testing.assert_array_equal(h["loss"], ref["loss"])


def test_bad_label_in_sweep_and_lr_find(cls):
    data, _ = cls
    p0 = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    bad = {"x": data["x"], "y": data["y"].at[11].set(3)}
    with pytest.raises(ValueError, match=r"labels\[11\] = 3 is outside"):
        train.sweep(_checked_softmax_ce, p0, bad, make_optimizer=optax.sgd, learning_rates=[0.1, 0.2], epochs=2,
                    method="minibatch", batch_size=5, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"labels\[11\] = 3 is outside"):
        train.lr_find(_checked_softmax_ce, p0, bad, optimizer_fn=optax.sgd, steps=5, key=jax.random.key(0),
                      batch_size=4)


def test_nan_from_the_first_step_blames_the_data_not_the_learning_rate(reg):
    data, _, p0 = reg
    log_loss = lambda p, b: jnp.mean(jnp.log(b["x"] @ p["w"] + p["b"]))
    with pytest.raises(DivergenceError, match="already non-finite at the initial parameters") as info:
        train.fit(log_loss, p0, data, optimizer=optax.sgd(0.1), epochs=3)
    assert "learning rate is not the cause" in str(info.value)
