"""`jaxcalc run all`: the report names every section it ran and every plot it shows exists."""
import json
import re
from pathlib import Path

import pytest

from experiments import all as run_all
from jaxcalc import report


def _md_images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("all")
    config = run_all.Config(quick=True, only=("integrals", "stability"))
    return out, run_all.run(config, out)


def test_quick_run_writes_report_with_its_sections_and_plots(quick_run):
    out, summary = quick_run
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert summary["failed"] == [] and summary["experiments"] == ["integrals", "stability"]
    titles = [s.title for s in run_all.SECTIONS if s.experiment in summary["experiments"]]
    for title in titles:
        assert f"## {title}" in md and f"<h2>{title}</h2>" in html
    images = _md_images(md)
    assert images, "the report shows no plot"
    for rel in images:
        assert (out / rel).is_file(), rel
    assert html.count("data:image/png;base64,iVBOR") == len(images)  # every plot embedded as a PNG
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        assert (out / name).is_file()


def test_quick_run_figures_match_theory(quick_run):
    out, _ = quick_run
    integrals = json.loads((out / "integrals" / "summary.json").read_text())
    assert integrals["trapezoid_order"] == pytest.approx(2.0, abs=0.1)   # O(h^2)
    assert integrals["simpson_order"] == pytest.approx(4.0, abs=0.2)     # O(h^4)
    assert integrals["monte_carlo_order"] == pytest.approx(0.5, abs=0.15)  # O(n^-1/2)
    assert integrals["ftc_max_error"] < 1e-6
    assert integrals["gauss_legendre_exp_error_n5"] < 1e-8  # ∫_{-1}^{1} e^x = e - 1/e (closed form)


def test_every_section_renders_from_summaries(tmp_path):
    """All ten concept sections, with a plot each, from summaries shaped like the experiments'."""
    results, timings = {}, {}
    for section in run_all.SECTIONS:
        name = section.experiment
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        results[name] = {"figure": 1.0, "table_markdown": "| a | b |\n|---|---|\n| 1 | 2 |", "plots": ["plot.png"],
                         "checks": [{"name": "mse", "kind": "loss", "method": "full", "worst_rel_error": 1e-10,
                                     "passed": True}]}
        timings[name] = 1.0
    blocks = run_all.build_report(run_all.Config(quick=True), results, timings, {})
    md_path, html_path = report.write_report(blocks, tmp_path)
    md = md_path.read_text()
    for section in run_all.SECTIONS:
        assert f"## {section.title}" in md
    assert "## Gradient checks" in md
    for rel in _md_images(md):
        assert (tmp_path / rel).is_file()
    assert "<table><tr><th>a</th><th>b</th></tr>" in html_path.read_text()


def test_a_failing_experiment_keeps_the_others_and_fails_the_run(tmp_path, monkeypatch):
    calls = []

    def fake(name, quick, seed, out_dir):
        calls.append(name)
        if name == "stability":
            raise FloatingPointError("simulated failure")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return {"figure": 2.0, "plots": []}

    monkeypatch.setattr(run_all, "_run_one", fake)
    with pytest.raises(RuntimeError, match="1 experiment\\(s\\) failed: stability"):
        run_all.run(run_all.Config(quick=True, only=("stability", "integrals")), tmp_path)
    assert calls == ["integrals", "stability"]
    md = (tmp_path / "report.md").read_text()
    assert "**FAILED:** FloatingPointError: simulated failure" in md
    assert "simulated failure" in (tmp_path / "stability" / "error.txt").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == ["stability"]


def test_only_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown experiment"):
        run_all.Config(only=("nope",))
