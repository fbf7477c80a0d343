"""Smoke test of `jaxcalc run mlp` on tiny settings: files, summary keys, shapes, param counts."""
import json

import numpy as np
import pytest

from experiments import mlp

# Small enough for a smoke test: every part runs, with tiny networks and few epochs.
TINY = {"epochs": 60, "n_seeds": 2, "digits_hidden": (16,), "digits_epochs": 2, "digits_batch_size": 128,
        "diabetes_hidden": (4,), "diabetes_epochs": 5, "depth": 4, "depth_width": 16, "depth_batch": 32}


def test_mlp_experiment_smoke(tmp_path, capsys):
    config = mlp.Config(**{**TINY, "epochs": 30, "digits_epochs": 1, "diabetes_epochs": 3, "depth": 3})
    summary = mlp.run(config, tmp_path)
    for name in ("config.json", "metrics.jsonl", "summary.json", "weights.json", "loss_curves.png",
                 "digits_loss.png", "grad_norms_per_layer.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    for key in ("seed_final_loss", "tuned_final_loss_max", "backprop_vs_autodiff_max_rel_diff",
                "digits_test_accuracy", "diabetes_mlp_test_r2", "diabetes_linear_test_r2",
                "trajectory_max_param_diff", "gradnorm_sigmoid_first_over_last"):
        assert isinstance(summary[key], float), key
    assert summary["article_param_count"] == 151  # (2*10+10) + (10*10+10) + (10+1), Keras' count
    assert summary["digits_param_count"] == 64 * 16 + 16 + 16 * 10 + 10
    assert summary["digits_n_train"] + summary["digits_n_test"] == 1797
    assert summary["devices"] == 1 and summary["digits_data_parallel"] is False
    assert summary["allreduce_bytes_per_step"] == 4 * summary["digits_param_count"]  # float32 grads
    assert set(summary["data_parallel"]) == {"article_example_2", "digits", "diabetes"}
    assert len(summary["seed_final_losses"]) == config.n_seeds
    assert len(summary["gradnorm_relu_he"]) == config.depth
    assert "(2, 1)" in summary["article_shape_refusal"] and "(2,)" in summary["article_shape_refusal"]
    # the hand-written backward pass is jax.grad's, at any training length
    assert summary["backprop_vs_autodiff_max_rel_diff"] <= 1e-10
    assert summary["trajectory_max_param_diff"] <= 1e-4
    weights = json.loads((tmp_path / "weights.json").read_text())
    shapes = [(2, 10), (10,), (10, 10), (10,), (10, 1), (1,)]  # Keras get_weights() order
    assert [np.shape(w) for w in weights[f"lr_{config.lr:g}"]] == shapes
    out = capsys.readouterr().out  # one progress line per part; the weights go to weights.json, not the console
    assert "(final weights in weights.json)" in out and "array(" not in out
    assert len(out.splitlines()) == 5 and all(len(line) < 160 for line in out.splitlines())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["part"] == "A" for line in lines) == config.epochs + 1


def test_mlp_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr"):
        mlp.Config(lr=0.0)
    with pytest.raises(ValueError, match="depth"):
        mlp.Config(depth=1)
    with pytest.raises(ValueError, match="digits_hidden"):
        mlp.Config(digits_hidden=(0,))


def test_mlp_config_rejects_bad_devices(tmp_path):
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="devices"):
            mlp.Config(devices=bad)
    # more devices than this process has: a one-line ValueError (CLI exit 2) before any output
    import jax

    with pytest.raises(ValueError, match="devices"):
        mlp.run(mlp.Config(devices=jax.device_count() + 1), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_parallel_batch_size_rounds_down_to_a_multiple():
    assert mlp.parallel_batch_size(100, 1438, 8) == 96
    assert mlp.parallel_batch_size(64, 1438, 8) == 64
    assert mlp.parallel_batch_size(5, 1438, 8) == 8      # at least one example per device
    assert mlp.parallel_batch_size(5000, 1438, 8) == 1432  # capped at n, then rounded
    assert mlp.parallel_batch_size(100, 1438, 1) == 100


# Runs in a fresh process: the device count is fixed when JAX starts.
_PARALLEL_SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import jax
from experiments import mlp
from jaxcalc import parallel
from jaxcalc.runio import RunWriter

assert jax.device_count() == 8, jax.devices()
tiny = dict(json.loads(sys.argv[1]), digits_epochs=2, diabetes_epochs=4)
out = {}

def part(fn, devices, **overrides):
    config = mlp.Config(**{**tiny, **overrides, "devices": devices})
    mesh = parallel.make_mesh(devices) if devices > 1 else None
    writer = RunWriter(tempfile.mkdtemp(), config)
    summary = fn(config, writer, mesh)
    rows = [json.loads(line) for line in (Path(writer.out_dir) / "metrics.jsonl").read_text().splitlines()]
    summary["losses"] = [[r[k] for k in ("train_loss", "test_loss") if k in r] for r in rows]
    return summary

for devices, batch in ((1, 96), (8, 100)):  # 100 is rounded down to 96 on 8 devices
    out[f"digits_{devices}"] = part(mlp._digits, devices, digits_batch_size=batch)
for devices in (1, 2):  # 354 training examples: split over 2 ...
    out[f"diabetes_{devices}"] = part(mlp._diabetes, devices)
out["diabetes_8_split"] = mlp._split_mesh(parallel.make_mesh(8), 354) is not None  # ... not over 8
json.dump(out, sys.stdout)
"""


def test_mlp_data_parallel_8_devices_matches_1_device():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
           + os.environ.get("JAXCALC_TEST_XLA_FLAGS", ""),
           "JAX_PLATFORMS": "cpu"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _PARALLEL_SCRIPT, json.dumps(TINY)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one, eight = out["digits_1"], out["digits_8"]
    assert one["digits_data_parallel"] is False and eight["digits_data_parallel"] is True
    assert one["digits_batch_size"] == eight["digits_batch_size"] == 96
    assert eight["allreduce_bytes_per_step"] == 4 * eight["digits_param_count"]  # float32 grads
    n_test = one["digits_n_test"]
    for key in ("digits_test_accuracy", "nnx_digits_test_accuracy", "digits_train_accuracy"):
        # float32 rounding may flip at most one borderline image
        n = n_test if "test" in key else one["digits_n_train"]
        assert abs(one[key] - eight[key]) <= 1.0 / n + 1e-9, key
    assert len(one["losses"]) == 2  # (train, test) loss per epoch
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-4)
    assert out["diabetes_2"]["diabetes_data_parallel"] is True
    assert out["diabetes_1"]["diabetes_n_train"] == 354
    assert out["diabetes_8_split"] is False  # 354 % 8 != 0: the full batch runs on one device
    np.testing.assert_allclose(out["diabetes_2"]["diabetes_mlp_test_r2"],
                               out["diabetes_1"]["diabetes_mlp_test_r2"], rtol=1e-4)
    np.testing.assert_allclose(out["diabetes_2"]["losses"], out["diabetes_1"]["losses"], rtol=1e-4)
