"""Smoke tests: `jaxcalc run recommender` on tiny data, and `jaxcalc recommend`."""
import json

import numpy as np
import pytest

from experiments import recommender as exp

KEYS = {"test_rmse", "test_mae", "global_mean_rmse", "bias_only_rmse", "fit_seconds", "compile_seconds",
        "precision_at_10", "recall_at_10", "noise_floor_rmse", "unseen_test_users", "unseen_test_items"}


def test_run_synthetic_writes_keys_and_plots(tmp_path):
    cfg = exp.Config(users=40, items=30, density=0.3, epochs=3, factors=2, split="per_user")  # default: bpmf
    summary = exp.run(cfg, tmp_path)
    assert set(summary) >= KEYS
    assert summary["method"] == "bpmf" and summary["reg"] is None and "selection_seconds" not in summary
    assert (summary["burn_in"], summary["samples"]) == (1, 2) and 0 < summary["noise_precision"] < 100
    assert summary["total_fit_seconds"] == summary["fit_seconds"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["test_rmse"] == pytest.approx(summary["test_rmse"])
    assert (tmp_path / "rmse.png").exists() and (tmp_path / "predicted_vs_true.png").exists()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and {"train_rmse", "test_rmse"} <= set(rows[0])
    assert summary["train_ratings"] + summary["test_ratings"] == 40 * 20  # 20 ratings per user at least, as ml-100k
    assert summary["test_rmse"] < summary["global_mean_rmse"]
    assert 0 <= summary["precision_at_10"] <= 1
    assert summary["unseen_test_users"] == 0  # per-user holdout keeps every user in training
    assert summary["test_ratings"] == 40 * 4  # floor(0.2 * 20) held out per user


def test_run_given_train_test_files_counts_unseen(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{u}\t{i}\t{rng.integers(1, 6)}\t0" for u in range(1, 21) for i in range(1, 16) if rng.random() < 0.5]
    (tmp_path / "u1.base").write_text("\n".join(lines) + "\n")
    (tmp_path / "u1.test").write_text("1\t2\t4\t0\n999\t3\t5\t0\n2\t777\t1\t0\n3\t4\t3\t0\n")
    cfg = exp.Config(train=str(tmp_path / "u1.base"), test=str(tmp_path / "u1.test"), epochs=2, factors=2,
                     reg=0.1, method="minibatch", batch_size=32)
    summary = exp.run(cfg, tmp_path / "out")
    assert summary["unseen_test_users"] == 1 and summary["unseen_test_items"] == 1
    assert summary["test_ratings"] == 4 and np.isfinite(summary["test_rmse"])


def test_config_validation():
    with pytest.raises(ValueError, match="preset"):
        exp.Config(preset="netflix")
    with pytest.raises(ValueError, match="devices must be >= 1"):
        exp.Config(devices=0)
    with pytest.raises(ValueError, match="batch_size 100 is not a multiple of devices 8"):
        exp.Config(method="minibatch", batch_size=100, devices=8)
    exp.Config(devices=8)  # bpmf (the default): runs on one device, no batch to split
    with pytest.raises(ValueError, match="together"):
        exp.Config(train="a")
    with pytest.raises(ValueError, match="bpmf learns its regularisation"):
        exp.Config(reg=0.1)
    with pytest.raises(ValueError, match="burn_in must be < epochs"):
        exp.Config(epochs=3, burn_in=3)
    with pytest.raises(ValueError, match="noise_precision must be > 0"):
        exp.Config(noise_precision=0.0)
    assert exp.settings(exp.Config()) == {
        "method": "bpmf", "factors": 10, "epochs": 20, "lr": 0.0, "reg": None, "reg_bias": None,
        "init_scale": 0.1, "batch_size": 4096, "burn_in": 1, "noise_precision": None}  # α sampled
    fixed = exp.settings(exp.Config(noise_precision=2.0, epochs=1))
    assert (fixed["burn_in"], fixed["noise_precision"]) == (0, 2.0)  # burn-in capped below epochs
    assert exp.settings(exp.Config(preset="surprise")) == {
        "method": "sgd", "factors": 100, "epochs": 20, "lr": 0.005, "reg": 0.02, "reg_bias": None,
        "init_scale": 0.1, "batch_size": 4096}


def test_recommend_command_prints_titles(tmp_path, capsys):
    rng = np.random.default_rng(1)
    lines = [f"{u}\t{i}\t{rng.integers(1, 6)}\t0" for u in range(1, 13) for i in range(1, 10) if rng.random() < 0.6]
    lines.append("5\t1\t5\t0")
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    (tmp_path / "u.item").write_bytes("".join(f"{i}|Film {i} (199{i})|x\n" for i in range(1, 10)).encode("latin-1"))
    rated = {int(x.split("\t")[1]) for x in lines if x.split("\t")[0] == "5"}
    code = exp.recommend_command(["--ratings", str(tmp_path / "u.data"), "--user", "5", "--top", "3",
                                  "--epochs", "2", "--factors", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    listed = [ln for ln in out[1:] if ln.strip()]
    assert len(listed) == min(3, 9 - len(rated))
    for ln in listed:
        item = int(ln.split("item")[1].split()[0])
        assert item not in rated and f"Film {item}" in ln
    assert exp.recommend_command(["--ratings", str(tmp_path / "u.data"), "--user", "4242"]) == 2
    assert "user id 4242" in capsys.readouterr().err


# --------------------------------------------------------------------------- --devices N (8 simulated CPU devices)

_DEVICES_SCRIPT = r'''
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)  # before any other JAX use
jax.config.update("jax_numpy_rank_promotion", "raise")
import numpy as np
from jaxcalc import parallel
from jaxcalc.models import recommender as rec
from experiments import recommender as exp

out = {"n_devices": jax.device_count()}
rng = np.random.default_rng(0)
U, I, n = 24, 16, 203  # 203 ratings: a whole-data batch is not a multiple of 8 (padded, masked)
train = {"user": rng.integers(0, U, n).astype(np.int32), "item": rng.integers(0, I, n).astype(np.int32),
         "rating": rng.integers(1, 6, n).astype(np.float32)}
mesh = parallel.make_mesh(8)
# (the unpadded mini-batch path is compared through exp.run below, batch_size=64)
cases = {"minibatch_padded": dict(method="minibatch", batch_size=4096),
         "fullbatch_dense_sharded": dict(method="fullbatch")}
for name, kw in cases.items():
    fits = [rec.fit(train, U, I, factors=3, epochs=3, lr=0.05, reg=0.05, key=jax.random.key(1), mesh=m, **kw)
            for m in (None, mesh)]
    out[name] = {"params": [{k: np.asarray(v).tolist() for k, v in f.params.items()} for f in fits],
                 "history": [f.history.tolist() for f in fits],
                 "replicated": all(v.sharding.is_fully_replicated and len(v.sharding.device_set) == 8
                                   for v in fits[1].params.values())}
table, mu = rec.pack(rec.init(jax.random.key(0), U, I, factors=3))
args = parallel.replicate((table, rec.gradient.optimizer_direction("adam").init(table), jax.random.key(2), mu,
                           train["user"], train["item"] + U, train["rating"]), mesh)
hlo = rec.gradient.minibatch_epoch.lower(*args, np.float32(0.01), np.float32(0.05), np.float32(0.05),
                                 optimizer="adam", batch_size=64, mesh=mesh).compile().as_text()
out["all_reduce_in_epoch"] = "all-reduce" in hlo
try:
    rec.fit(train, U, I, method="als", epochs=1, key=jax.random.key(1), mesh=mesh)
    out["als_error"] = None
except ValueError as e:
    out["als_error"] = str(e)
tiny = dict(users=32, items=24, density=0.4, epochs=3, factors=2, reg=0.1, batch_size=64)
out["runs"] = {f"minibatch_{d}": exp.run(exp.Config(method="minibatch", devices=d, **tiny), sys.argv[1] + f"/{d}")
               for d in (1, 8)}
out["als_facts"] = exp._mesh(exp.Config(devices=8), "als")[1]  # what run() adds to an ALS summary
print(json.dumps(out, default=str))
'''


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """Run _DEVICES_SCRIPT in a fresh interpreter with 8 simulated CPU devices."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = os.environ.get("JAXCALC_TEST_XLA_FLAGS", "")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, str(tmp_path_factory.mktemp("dev"))],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["minibatch_padded", "fullbatch_dense_sharded"])
def test_fit_on_8_devices_matches_1_device(eight_devices, case):
    assert eight_devices["n_devices"] == 8
    one, eight = eight_devices[case]["params"]
    assert eight_devices[case]["replicated"]  # params come back as a full copy on each of the 8 devices
    for k in one:  # same math, gradient summed in another order: float32 rounding apart
        np.testing.assert_allclose(eight[k], one[k], rtol=1e-5, atol=1e-6, err_msg=f"{case}: {k}")
    np.testing.assert_allclose(*eight_devices[case]["history"], rtol=1e-5)
    assert not np.allclose(one["user_factors"], 0)  # it trained: a real comparison


def test_minibatch_epoch_on_a_mesh_all_reduces(eight_devices):
    assert eight_devices["all_reduce_in_epoch"]  # the batch really is split: XLA sums the gradient


def test_als_with_a_mesh_raises(eight_devices):
    assert "not data-parallel" in eight_devices["als_error"] and "minibatch" in eight_devices["als_error"]


def test_run_devices_8_gives_the_1_device_figures(eight_devices):
    runs = eight_devices["runs"]
    one, eight = runs["minibatch_1"], runs["minibatch_8"]
    for k in ("test_rmse", "test_mae", "train_rmse", "bias_only_rmse", "precision_at_10"):
        assert eight[k] == pytest.approx(one[k], rel=1e-5), k
    assert (one["devices"], one["devices_used"], one["data_parallel"]) == (1, 1, False)
    assert (eight["devices"], eight["devices_used"], eight["data_parallel"]) == (8, 8, True)
    # every trained parameter's float32 gradient: (U + I) * (factors + 1) * 4 bytes
    assert eight["allreduce_bytes_per_step"] == one["allreduce_bytes_per_step"] == (32 + 24) * 3 * 4
    als = eight_devices["als_facts"]  # ALS with --devices 8 runs, on one device, and says so
    assert (als["devices"], als["devices_used"], als["data_parallel"]) == (8, 1, False)
    assert "als is not data-parallel" in als["devices_note"]
