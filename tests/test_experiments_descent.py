"""Smoke tests for the descent experiments (`linear`, `optimizers`) on tiny settings."""
import json

import numpy as np
import pytest

from experiments import linear


def test_article_example_1_as_written_is_the_broadcast_artefact():
    # numpy reference: (3, 1) - (3,) broadcasts to (3, 3), so the fit is the best constant:
    # w -> 0, b -> mean(y) = 4 (closed form of min Σ_ij (w x_i + b - y_j)²)
    w, b = linear.article_example_1()
    assert np.ndim(w) == 0 and abs(w) < 1e-3 and abs(b - 4.0) < 1e-3


def test_linear_smoke(tmp_path):
    cfg = linear.Config(batch_epochs=50, sgd_epochs=2, sgd_constant_epochs=1, minibatch_epochs=3,
                        minibatch_constant_epochs=1, synthetic_n=64, synthetic_epochs=4)
    summary = linear.run(cfg, tmp_path)
    for key in ("seed_as_written_w", "seed_as_written_b", "w", "b", "max_rel_diff_to_lstsq"):
        assert key in summary
    # Part A is the full run in any config: the shape-checked fit reaches y = 2x
    assert abs(summary["w"] - 2) <= 0.02 and abs(summary["b"]) <= 0.03
    assert "(3, 1)" in summary["shape_check_refusal"] and "(3,)" in summary["shape_check_refusal"]
    assert summary["grad_at_zero"] == summary["article_grad_at_zero"]
    assert len(summary["lstsq_w"]) == 10  # diabetes has 10 features
    assert (tmp_path / "diabetes_loss.png").exists() and (tmp_path / "config.json").exists()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["seed_as_written_b"] == pytest.approx(summary["seed_as_written_b"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("method") == "batch" and r["part"] == "diabetes" for r in rows) == 50


def test_linear_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        linear.Config(batch_size=0)


def test_optimizers_smoke(tmp_path):
    from experiments import optimizers

    cfg = optimizers.Config(dim=4, quadratic_steps=40, rosenbrock_steps=40, logistic_steps=40,
                            grid_points=3, stability_steps=300, stability_rounds=3,
                            lr_find_steps=30, optimizers="gd")
    summary = optimizers.run(cfg, tmp_path)
    # theory: 2/λ_max with λ_max = condition = 1000 by construction (eigenvalues log-spaced to it)
    assert summary["quadratic_lambda_max"] == pytest.approx(1000.0, rel=1e-3)
    assert abs(summary["lr_max_measured_over_theory"] - 1) <= 0.02
    assert set(summary["steps_to_tol"]) == {"quadratic", "rosenbrock", "logistic"}
    assert set(summary["best_lr"]["rosenbrock"]) == {"gd"}
    assert summary["table"].startswith("| optimizer |") and summary["table"].count("\n") == 2
    assert summary["logistic_newton_grad_norm"] < 1e-8 and summary["lr_find_suggested_lr"] > 0
    for name in ("loss_vs_step", "rosenbrock_trajectories", "lr_find_logistic"):
        assert (tmp_path / f"{name}.png").exists()
    with pytest.raises(ValueError, match="optimizers"):
        optimizers.Config(optimizers="gd,lbfgs")
