"""Smoke tests: finite-differences and stability experiments on tiny settings write the right files and figures."""
import json
import math

import numpy as np
import pytest

from experiments import finite_differences as fd
from experiments import stability as st


def _files(out):
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    return json.loads((out / "summary.json").read_text()), (out / "metrics.jsonl").read_text().splitlines()


def test_finite_differences_smoke(tmp_path, capsys):
    config = fd.Config(num_steps=33, hidden=4, num_examples=8)
    summary = fd.run(config, tmp_path)
    on_disk, lines = _files(tmp_path)
    assert on_disk == summary
    assert (tmp_path / "error_vs_step.png").is_file() and summary["plots"] == ["error_vs_step.png"]
    # one metrics line per (function, method, dtype, h): forward/central x float32/64 + complex float64
    assert len(lines) == 3 * 5 * 33
    assert set(json.loads(lines[0])) == {"function", "method", "dtype", "h", "rel_error"}
    for f in fd.FUNCTIONS:
        for m in fd.METHODS:
            for d in fd.DTYPES:
                for k in ("best_h", "min_error", "raw_min_error", "truncation_slope", "roundoff_slope"):
                    assert f"{f}_{m}_{d}_{k}" in summary
        assert summary[f"{f}_complex_step_error"] < 1e-14          # exact to float64 precision
        assert summary[f"{f}_central_float64_min_error"] < 1e-9     # theory eps^(2/3) = 3.7e-11
        assert summary[f"{f}_forward_float64_min_error"] < 1e-6     # theory sqrt(eps) = 1.5e-8
        assert summary[f"{f}_central_float32_min_error"] < 1e-3     # theory eps32^(2/3) = 2.4e-5
        assert summary[f"{f}_forward_float32_min_error"] > summary[f"{f}_forward_float64_min_error"]
        # truncation slopes: +1 forward, +2 central (Taylor)
        assert summary[f"{f}_forward_float64_truncation_slope"] == pytest.approx(1.0, abs=0.15)
        assert summary[f"{f}_central_float64_truncation_slope"] == pytest.approx(2.0, abs=0.2)
    # measured best h of central float64 within a decade or so of eps^(1/3) = 6.1e-6
    h_th = summary["theory_central_float64_best_h"]
    assert h_th == pytest.approx((2.0 ** -52) ** (1 / 3))
    assert h_th / 30 < summary["exp_central_float64_best_h"] < h_th * 30
    assert "| exp | central | float64 |" in capsys.readouterr().out
    assert "| network | complex step (h=1e-20) | float64 |" in summary["table_markdown"]


def test_finite_differences_config_validation():
    with pytest.raises(ValueError, match="h_min"):
        fd.Config(h_min=1.0, h_max=0.1)
    with pytest.raises(ValueError, match="num_steps"):
        fd.Config(num_steps=3)


def test_stability_smoke(tmp_path):
    summary = st.run(st.Config(num_points=401), tmp_path)
    on_disk, lines = _files(tmp_path)
    assert on_disk == summary
    assert (tmp_path / "stability.png").is_file()
    assert lines and set(json.loads(lines[0])) == {"case", "s", "naive", "stable", "reference"}
    overflow = math.log(float(np.finfo(np.float32).max))  # 88.7228: exp overflows in float32
    assert summary["theory_exp_overflow"] == pytest.approx(overflow)
    # log(1 + exp(s)) first returns inf exactly where exp overflows (refined to float32 resolution)
    assert summary["log1p_exp_naive_first_nonfinite"] == pytest.approx(overflow, abs=1e-3)
    assert summary["log1p_exp_naive_value_there"] == "inf"
    assert summary["log1p_exp_stable_value_there"] == pytest.approx(overflow, abs=1e-3)  # softplus(s) ≈ s
    # naive softmax / log-softmax fail at or before the overflow; the stable forms never do
    for case in st.CASES:
        p = case.name
        assert summary[f"{p}_stable_all_finite"] is True
        assert summary[f"{p}_stable_max_rel_error"] < 1e-5
        if p != "log1p_exp_negative":
            assert 80 < summary[f"{p}_naive_first_nonfinite"] <= overflow + 1e-3
    # log(1 + exp(-s)) never overflows but loses all precision: 1 + e^{-s} rounds to 1 (float32 eps 1.2e-7)
    assert summary["log1p_exp_negative_naive_first_nonfinite"] is None
    assert 5 < summary["log1p_exp_negative_naive_first_rel_error_1pct"] < 17
    assert "| log1p_exp |" in summary["table_markdown"]
