"""Smoke test of `jaxcalc run mlp` on tiny settings: files, summary keys, shapes, param counts."""
import json

import numpy as np
import pytest

from experiments import mlp


def test_mlp_experiment_smoke(tmp_path, capsys):
    config = mlp.Config(**{**mlp.QUICK, "epochs": 30, "digits_epochs": 1, "diabetes_epochs": 3, "depth": 3})
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
    assert len(summary["seed_final_losses"]) == config.n_seeds
    assert len(summary["gradnorm_relu_he"]) == config.depth
    assert "(2, 1)" in summary["article_shape_refusal"] and "(2,)" in summary["article_shape_refusal"]
    # the hand-written backward pass is jax.grad's, at any training length
    assert summary["backprop_vs_autodiff_max_rel_diff"] <= 1e-10
    assert summary["trajectory_max_param_diff"] <= 1e-4
    weights = json.loads((tmp_path / "weights.json").read_text())
    shapes = [(2, 10), (10,), (10, 10), (10,), (10, 1), (1,)]  # Keras get_weights() order
    assert [np.shape(w) for w in weights[f"lr_{config.lr:g}"]] == shapes
    assert "Final weights:" in capsys.readouterr().out
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["part"] == "A" for line in lines) == config.epochs + 1


def test_mlp_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr"):
        mlp.Config(lr=0.0)
    with pytest.raises(ValueError, match="depth"):
        mlp.Config(depth=1)
    with pytest.raises(ValueError, match="digits_hidden"):
        mlp.Config(digits_hidden=(0,))
