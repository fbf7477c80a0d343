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
