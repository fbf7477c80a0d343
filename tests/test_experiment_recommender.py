"""Smoke tests: `jaxcalc run recommender` on tiny data, and `jaxcalc recommend`."""
import json

import numpy as np
import pytest

from experiments import recommender as exp

KEYS = {"test_rmse", "test_mae", "global_mean_rmse", "bias_only_rmse", "fit_seconds", "compile_seconds",
        "precision_at_10", "recall_at_10", "noise_floor_rmse", "unseen_test_users", "unseen_test_items"}


def test_run_synthetic_writes_keys_and_plots(tmp_path):
    cfg = exp.Config(users=40, items=30, density=0.3, epochs=3, factors=2, reg=0.1, split="per_user")
    summary = exp.run(cfg, tmp_path)
    assert KEYS <= set(summary)
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
    exp.Config(devices=8)  # ALS: runs on one device, no batch to split
    with pytest.raises(ValueError, match="together"):
        exp.Config(train="a")
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
