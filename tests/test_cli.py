"""The command line: names, options from the Config dataclass, one-line errors with exit code 2."""
import subprocess
import sys

import pytest

from jaxcalc import cli


def test_list_names_every_experiment(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("all", "integrals"):
        assert name in out


def test_info_prints_versions_and_devices(capsys):
    import jax

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"jax     {jax.__version__}" in out and "devices" in out and "backend" in out


def test_unknown_experiment_exits_2_with_valid_names(capsys):
    assert cli.main(["run", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-thing'" in err and "integrals" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_command_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "valid commands" in capsys.readouterr().err


def test_bad_option_type_exits_2_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "integrals", "--max-doublings", "many"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid int value" in err[0]


def test_bad_option_value_exits_2_from_config_validation(capsys, tmp_path):
    assert cli.main(["run", "integrals", "--max-doublings", "99", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_doublings must be in [2, 14]" in err[0]


def test_config_fields_become_options():
    import argparse

    from experiments import get

    parser = argparse.ArgumentParser()
    exposed = cli._add_config_options(parser, get("all").Config)
    assert "only" in exposed and "quick" not in exposed  # --quick is the CLI's own flag
    args = parser.parse_args(["--only", "stability,integrals"])
    assert args.only == ("stability", "integrals")


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "jaxcalc", "run", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown experiment" in result.stderr and "Traceback" not in result.stderr


def test_compilation_cache_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCALC_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.default_cache_dir() == tmp_path / "cache"


# --- option help from the Config docstrings ------------------------------------------------------


def test_attribute_docs_reads_google_style_attributes():
    class Config:
        """Settings.

        Attributes:
          lr (float): learning rate,
            > 0.
          epochs: passes over the data.

        Note:
          not an attribute.
        """

    assert cli.attribute_docs(Config) == {"lr": "learning rate, > 0.", "epochs": "passes over the data."}


def test_every_option_of_every_experiment_has_help():
    """Each option's help says what it does, not only its default (from the Config's Attributes section)."""
    from experiments import get, registry

    missing = []
    for name in registry():
        parser, exposed = cli.build_run_parser(name, get(name))
        assert exposed, name
        for action in parser._actions:
            if action.dest == "help":
                continue
            text = (action.help or "").strip()
            if not text or text.startswith("(default"):
                missing.append(f"{name} {'/'.join(action.option_strings)}")
    assert not missing, f"options without help text: {', '.join(missing)}"


def test_help_lists_the_option_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "linear", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("--sgd-decay FLOAT SGD's learning-rate factor per epoch after the constant phase, in (0, 1] "
            "(default: 0.993)") in out


# --- out-of-range values are refused, one line, exit 2 -------------------------------------------

OUT_OF_RANGE = [  # (experiment, option, value, what the one-line error says)
    ("all", "--only", "integrals,nope", "unknown experiment(s) nope"),
    ("gradients", "--batch", "0", "batch must be in [1, 256]"),
    ("finite-differences", "--h-min", "2", "need 0 < h_min < h_max"),
    ("integrals", "--mc-samples-max", "8", "mc_samples_max must be in [16,"),
    ("stability", "--num-points", "5", "num_points must be in [11, 1000000]"),
    ("linear", "--batch-size", "500", "batch_size must be at most 442"),
    ("linear", "--sgd-constant-epochs", "-1", "sgd_constant_epochs must be >= 0"),
    ("optimizers", "--lr-find-batch-size", "600", "lr_find_batch_size must be at most 569"),
    ("mlp", "--digits-batch-size", "5000", "digits_batch_size must be at most 1438"),
    ("cnn", "--epochs", "0", "epochs must be >= 1"),
    ("recommender", "--test-fraction", "1.5", "test_fraction must be in (0, 1)"),
    ("diagnose", "--threshold-bits", "30", "threshold_bits must be in [1, 24]"),
]


@pytest.mark.parametrize(("name", "option", "value", "message"), OUT_OF_RANGE, ids=[r[0] for r in OUT_OF_RANGE])
def test_out_of_range_value_is_refused(name, option, value, message, capsys, tmp_path):
    assert cli.main(["run", name, option, value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_every_experiment_has_an_out_of_range_case():
    from experiments import registry

    assert set(registry()) <= {r[0] for r in OUT_OF_RANGE}


# --- the console summary ----------------------------------------------------------------------


def test_summary_lines_are_one_line_each_and_never_raw_arrays():
    summary = {
        "test_accuracy": 0.958217263,
        "printed": "Final weights: 2.8e-05\nFinal bias: 3.99",           # multi-line value
        "rel_diff_to_lstsq": {"batch": 6.2e-05, "sgd": 2.8e-04},           # dict of scalars
        "steps_to_tol": {"quadratic": {"gd": 1123}},                       # nested: left to summary.json
        "gradnorm_relu_he": [0.81, 0.79, 0.91, 1.04, 1.07, 1.22, 1.31, 1.07, 0.84, 0.68],  # long list
        "digits_sizes": [64, 128, 10],
        "checks": [{"name": "mse", "passed": True}],                      # list of dicts
        "table_markdown": "| a | b |\n|---|---|\n| 1 | 2 |",
        "data": "x" * 300,
        "plots": ["loss.png", "accuracy.png"],
    }
    lines = cli.summary_lines(summary)
    text = "\n".join(lines)
    assert len(lines) == 7 and all(len(line) <= cli.SUMMARY_WIDTH for line in lines)
    assert "  test accuracy" in text and "0.9582" in text
    assert "Final weights: 2.8e-05 …" in text and "Final bias" not in text
    assert "batch 6.2e-05, sgd 0.00028" in text
    assert "10 values from 0.68 to 1.31" in text and "64, 128, 10" in text
    assert "figures" in text and "loss.png, accuracy.png" in text
    for hidden in ("steps", "checks", "|---|", "array(", "[0.81"):
        assert hidden not in text


def test_summary_lines_are_capped():
    lines = cli.summary_lines({f"k{i}": float(i) for i in range(100)}, max_lines=10)
    assert len(lines) == 11 and "90 more figures in summary.json" in lines[-1]


def test_a_run_prints_progress_and_a_readable_summary(capsys, tmp_path):
    assert cli.main(["run", "stability", "--quick", "--out", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert "jaxcalc run stability --quick: about" in captured.err  # the estimate, up front
    out = captured.out.splitlines()
    assert any(line.startswith("Numerical stability: naive softmax fails at s = 88.7") for line in out)
    assert any("theory: exp overflows at" in line and "88.72" in line for line in out)
    assert out[-1].startswith(f"wrote {tmp_path / 's'}/ in ")
    figures = [line for line in out if line.startswith("  ")]
    assert figures and all(len(line) <= cli.SUMMARY_WIDTH for line in figures)
    assert "softmax large: stable form, worst relative error" in captured.out and "array(" not in captured.out
