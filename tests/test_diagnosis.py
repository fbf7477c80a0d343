"""jaxcalc.diagnose: each finding kind at the exact planted line (also nested in scan, jit, an NNX module and
control flow), no false alarms on jaxcalc's losses and models, custom rules 1% off caught and correct ones
passed, clear errors for bad input, the check_grads hint and the CLI."""
import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcalc
from jaxcalc import cli
from jaxcalc.diagnosis import Finding, Report, diagnose

HERE = inspect.getsourcefile(lambda: None)


def line_of(marker: str) -> int:
    """The line of this file that ends with ``# <marker>`` (the planted defect)."""
    with open(HERE) as f:
        lines = f.read().splitlines()
    hits = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, marker
    return hits[0]


def assert_at(finding: Finding, kind: str, marker: str):
    assert finding is not None
    assert (finding.kind, finding.file, finding.line) == (kind, HERE, line_of(marker)), finding.short()


# ------------------------------------------------------------------------------------------ nested defects


def scan_where_trap(x):
    def body(carry, xi):
        return carry + jnp.where(xi > 0, jnp.log(xi), 0.0), None  # scan-trap
    return jax.lax.scan(body, 0.0, x)[0]


@jax.jit
def _jitted_softmax(z):
    return jnp.exp(z) / jnp.sum(jnp.exp(z))  # jit-softmax


def jit_softmax_ce(z):
    return -jnp.log(_jitted_softmax(z)[0])


class Distance(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        h = self.linear(x)
        return jnp.sqrt(jnp.sum((h - h) ** 2))  # nnx-sqrt


def test_nested_defects_inside_scan_jit_and_nnx_module():
    report = diagnose(scan_where_trap, jnp.array([0.0, 1.0, 2.0]))
    assert_at(report.top, "where_nan", "scan-trap")
    assert "double-where" in report.top.detail and report.top.primitive == "log"

    report = diagnose(jit_softmax_ce, jnp.array([1000.0, 0.0]))
    assert_at(report.top, "nonfinite_forward", "jit-softmax")
    assert report.top.primitive == "exp" and "softmax" in report.top.detail

    graphdef, state = nnx.split(Distance(nnx.Rngs(0)))
    report = diagnose(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.ones((2, 3)))
    assert_at(report.top, "nonfinite_backward", "nnx-sqrt")
    assert report.top.pass_ == "backward" and "sqrt" in report.top.detail


def while_log(x):
    def body(state):
        i, acc = state
        return i + 1, acc + jnp.sum(jnp.log(x - 1.0))  # while-log
    return jax.lax.while_loop(lambda s: s[0] < 3, body, (0, 0.0))[1]


def cond_exp(x):
    return jax.lax.cond(jnp.sum(x) > 0, lambda a: jnp.sum(jnp.exp(a)), jnp.sum, x)  # cond-exp


def remat_log1p(x):
    return jax.checkpoint(lambda a: jnp.sum(jnp.log(1.0 + a)))(x)  # remat-log


def test_control_flow_while_cond_remat():
    report = diagnose(while_log, jnp.array([1.0, 2.0]))   # no reverse mode through while: forward only
    assert_at(report.top, "nonfinite_forward", "while-log")
    assert any("gradient could not be traced" in n for n in report.notes)

    report = diagnose(cond_exp, jnp.array([100.0, 2.0]))
    assert_at(report.top, "nonfinite_forward", "cond-exp")

    report = diagnose(remat_log1p, jnp.array([1e-5, 2e-5, 3e-6]))
    assert_at(report.top, "precision_loss", "remat-log")
    assert "log1p" in report.top.detail and report.top.bits_lost > 10
    assert report.value_bits_lost > 10     # end to end: log(1 + x) keeps ~10 of 24 bits near 1e-5


# ------------------------------------------------------------------------------------------ custom rules


def _custom_jvp_exp(scale):
    @jax.custom_jvp
    def exp(x):
        return jnp.exp(x)

    exp.defjvp(lambda p, t: (jnp.exp(p[0]), scale * jnp.exp(p[0]) * t[0]))
    return exp


_exp_off, _exp_ok = _custom_jvp_exp(1.01), _custom_jvp_exp(1.0)


def test_custom_jvp_rule_one_percent_off_is_caught_correct_one_passes():
    x = jnp.array([0.1, -0.5, 0.7])
    report = diagnose(lambda x: jnp.sum(_exp_off(x) ** 2), x)  # jvp-off
    assert_at(report.top, "wrong_derivative", "jvp-off")
    assert 0.005 < report.top.rel_error < 0.02   # 1% off: relative error 0.01/1.01
    assert report.rules[0]["method"] == "full" and not report.rules[0]["passed"]

    report = diagnose(lambda x: jnp.sum(_exp_ok(x) ** 2), x)
    assert report.ok and report.rules[0]["passed"] and report.rules[0]["rel_error"] < 1e-8


def test_check_grads_error_names_the_diagnosed_rule():
    x = jnp.array([0.1, -0.5, 0.7])
    with pytest.raises(jaxcalc.GradientCheckError) as e:
        jaxcalc.check_grads(lambda x: jnp.sum(_exp_off(x) ** 2), x)
    message = str(e.value)
    assert "diagnosis: wrong_derivative" in message and f"{HERE}:" in message


# ------------------------------------------------------------------------------------------ no false alarms


@pytest.fixture(scope="module")
def healthy_reports():
    from experiments.diagnose import healthy_cases

    out = {}
    for name, fn, args in healthy_cases(jax.random.key(0)):
        out[name] = (diagnose(fn, *args), fn, args)
    return out


def test_every_jaxcalc_loss_and_model_diagnoses_clean(healthy_reports):
    names = " ".join(healthy_reports)
    for model in ("linear", "MLP", "CNN", "recommender", "cross_entropy", "mse"):
        assert model in names
    for name, (report, fn, args) in healthy_reports.items():
        assert report.ok, f"{name}:\n{report}"
        np.testing.assert_allclose(report.value, np.asarray(jax.jit(fn)(*args)), rtol=1e-6)  # the run is f's own
        assert report.value_bits_lost < 5 and report.grad_bits_lost < 5


def test_cnn_fused_conv_relu_pool_rule_is_checked_and_passes(healthy_reports):
    report = next(r for name, (r, _, _) in healthy_reports.items() if name.startswith("CNN"))
    rules = {r["primal"]: r for r in report.rules}
    assert "_conv_relu_pool" in rules    # jaxcalc.ops' custom_vjp: argmax-only max-pool backward, relu kinks
    assert rules["_conv_relu_pool"]["passed"] and rules["_conv_relu_pool"]["rel_error"] < 1e-6


# ------------------------------------------------------------------------------------------ report, errors


def test_report_table_and_dict_are_readable_and_json():
    from experiments.diagnose import where_trap

    report = diagnose(where_trap, jnp.array([0.0, 1.0]))
    assert isinstance(report, Report) and not report.ok
    text = str(report)
    assert "where_nan" in text and "diagnose.py:" in text and "double-where" in text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False and d["findings"][0]["kind"] == "where_nan" and d["findings"][0]["unit"] == "count"


def test_bad_input_gives_clear_errors():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="must return a scalar"):
        diagnose(lambda x: x * 2, x)
    with pytest.raises(TypeError, match="nothing to differentiate"):
        diagnose(lambda n: jnp.sum(n * 1.0), jnp.arange(3))
    with pytest.raises(ValueError, match="could not be traced"):
        diagnose(lambda x: jnp.sum(x) if x[0] > 0 else 0.0, x)   # Python branch on a traced value
    with pytest.raises(ValueError, match="NaN/inf"):
        diagnose(jnp.sum, jnp.array([1.0, jnp.nan]))
    with pytest.raises(ValueError, match="threshold_bits"):
        diagnose(jnp.sum, x, threshold_bits=0)


def test_integer_labels_pass_through_undifferentiated():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.1, 0.2, 3.0]])
    report = diagnose(jaxcalc.losses.cross_entropy, logits, jnp.array([1, 2]))
    assert report.ok


def test_cli_exit_codes(tmp_path, capsys):
    spec = tmp_path / "case.py"
    spec.write_text(
        "import jax.numpy as jnp\n"
        "def trap(x):\n"
        "    return jnp.sum(jnp.where(x > 0, jnp.log(x), 0.0))\n"
        "def bad():\n"
        "    return trap, (jnp.array([0.0, 1.0]),)\n"
        "def good():\n"
        "    return trap, (jnp.array([2.0, 1.0]),)\n")
    assert cli.main(["diagnose", f"{spec}:bad"]) == 1
    out = capsys.readouterr().out
    assert "where_nan" in out and "case.py:3" in out
    assert cli.main(["diagnose", f"{spec}:good"]) == 0
    assert cli.main(["diagnose", f"{spec}:missing"]) == 2
    assert "no module-level function 'missing'" in capsys.readouterr().err


def test_experiment_finds_every_planted_defect_at_its_line(tmp_path):
    from experiments import diagnose as exp

    summary = exp.run(exp.Config(fixes=False, healthy=False), tmp_path)
    assert summary["all_defects_found"], summary["table_markdown"]
    rows = {r["defect"]: r for r in summary["defects"]}
    assert "jnp.log1p" in rows["log(1 + x)"]["detail"] and "sin(x/2)" in rows["(1 − cos x)/x²"]["detail"]
    assert "double-where" in rows["where-trap"]["detail"]
    assert rows["norm of a zero vector"]["detail"].count("norm") >= 1
    for name in ("config.json", "summary.json", "metrics.jsonl", "local_error.png"):
        assert (tmp_path / name).exists()
