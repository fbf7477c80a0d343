"""`jaxcalc run all`: the report reads as an article, every section with its figures, no raw metric keys.

Most tests build the report from ``report_summaries.json``, the summaries of a real
``jaxcalc run all --quick`` (regenerate it with ``python tests/test_report.py RUN_DIR`` after an
experiment's summary changes), so they cost no experiment run; one real quick run of two cheap
experiments checks the whole path end to end.
"""
import copy
import json
import re
import sys
from pathlib import Path

import pytest

from experiments import all as run_all
from jaxcalc import report

SNAPSHOT = Path(__file__).with_name("report_summaries.json")
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # enough for the HTML to embed


def _md_images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def _sections(md: str) -> dict[str, str]:
    """``{title: markdown}`` of each ``## `` section."""
    parts = re.split(r"^## (.+)$", md, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _summary_keys(obj, prefix="") -> set[str]:
    """Every key of a summary, nested ones also joined with dots (``rel_diff_to_lstsq.batch``)."""
    keys = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            keys |= {k, f"{prefix}{k}"} | _summary_keys(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for v in obj:
            keys |= _summary_keys(v, prefix)
    return keys


def _prose_and_tables(md: str) -> str:
    """The report's words: code spans, image links and the per-section file note taken out."""
    text = re.sub(r"!\[[^\]]*\]\([^)]+\)", "", md)
    text = re.sub(r"<sub>.*?</sub>", "", text)
    return re.sub(r"`[^`]*`", "", text)


def _raw_keys_in(md: str, summaries: dict) -> list[str]:
    words = _prose_and_tables(md)
    keys = {k for s in summaries.values() for k in _summary_keys(s) if len(k) > 3 and ("_" in k or "." in k)}
    found = sorted(k for k in keys if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", words))
    # any snake_case identifier at all (z_y, p_y: formula subscripts, too short to be keys)
    found += sorted(t for t in set(re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", words)) if len(t) > 3)
    return found


def _write_plots(out: Path, summaries: dict) -> None:
    for name, summary in summaries.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for plot in summary.get("plots", []):
            (out / name / plot).write_bytes(PNG)


def _build(out: Path, summaries: dict, failures=None):
    _write_plots(out, summaries)
    timings = dict.fromkeys(list(summaries) + list(failures or {}), 1.0)
    blocks = run_all.build_report(run_all.Config(quick=True), summaries, timings, failures or {})
    md_path, html_path = report.write_report(blocks, out)
    return md_path.read_text(), html_path.read_text()


@pytest.fixture(scope="module")
def snapshot():
    return json.loads(SNAPSHOT.read_text())


@pytest.fixture(scope="module")
def built(snapshot, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    md, html = _build(out, snapshot)
    return out, md, html


def test_snapshot_covers_every_experiment(snapshot):
    assert set(snapshot) == set(run_all.experiment_names())


def test_every_section_has_prose_figures_and_a_table(built):
    out, md, html = built
    sections = _sections(md)
    assert list(sections) == [s.title for s in run_all.SECTIONS]
    for section in run_all.SECTIONS:
        body = sections[section.title]
        paragraphs = [p for p in body.split("\n\n") if p.strip() and not p.lstrip().startswith(("|", "!", "<sub>"))]
        words = [p for p in paragraphs if len(p) > 200]
        assert len(words) >= 2, f"{section.title}: the idea and what the numbers show"
        images = _md_images(body)
        assert images, f"{section.title} has no figure"
        for rel in images:
            assert (out / rel).is_file(), rel
            assert rel in {f"{section.experiment}/{f}" for f, _ in section.figures}, rel
        assert "\n| " in body, f"{section.title} has no table"
        assert "could not be built" not in body
    images = _md_images(md)
    assert html.count('src="data:image/png;base64,iVBOR') == len(images)  # every figure embedded
    assert html.count("<figcaption>") == len(images)


def test_no_raw_metric_keys_in_prose_or_tables(built, snapshot):
    _, md, _ = built
    assert _raw_keys_in(md, snapshot) == []


def test_the_raw_key_check_catches_a_raw_key(snapshot):
    md = "## Losses\n\n| figure | value |\n|---|---|\n| gradnorm_sigmoid_glorot_first_over_last | 6e-6 |\n"
    assert "gradnorm_sigmoid_glorot_first_over_last" in _raw_keys_in(md, snapshot)
    assert _raw_keys_in("the closest is `losses_worst_rel_error` in code", snapshot) == []


def test_prose_quotes_the_measured_numbers(built):
    _, md, _ = built
    sections = _sections(md)
    assert "All 11 checks pass" in sections["Gradient checks"]
    assert "bit for bit" in sections["Backpropagation"] or "relative difference of" in sections["Backpropagation"]
    assert re.search(r"all three end within \d\.\de-\d of the least-squares solution",
                     sections["Stochastic and mini-batch gradient descent"])
    assert re.search(r"convergence orders are 2\.0\d for the trapezoid rule and 4\.\d+ for Simpson's",
                     sections["Integrals"])


def test_prose_follows_the_summary_not_hard_coded_settings(snapshot, tmp_path):
    """The recommender's method, the CNN's data set and epochs come from the summaries."""
    summaries = copy.deepcopy(snapshot)
    texts = {}
    for method in ("als", "sgd", "some_new_method"):
        summaries["recommender"]["method"] = method
        summaries["cnn"].update(dataset="cifar10", epochs=3, image_shape=[32, 32, 3])
        md, _ = _build(tmp_path / method, summaries)
        texts[method] = _sections(md)
    assert "alternating least squares" in texts["als"]["Recommendation"]
    assert "stochastic gradient descent" in texts["sgd"]["Recommendation"]
    assert "alternating" not in texts["sgd"]["Recommendation"]
    assert "`some_new_method`" in texts["some_new_method"]["Recommendation"]
    for sections in texts.values():
        assert "gradient descent on synthetic" not in sections["Recommendation"]
        cnn = sections["Image recognition"]
        assert "Trained on CIFAR-10" in cnn and "for 3 epochs" in cnn
        assert "32 × 32 × 3" in sections["Image recognition"]
        assert "On the same digits" not in sections["Image recognition"]  # the MLP peer only on digits


def test_a_summary_missing_figures_drops_sentences_not_the_report(snapshot, tmp_path):
    """Other versions of an experiment may rename keys: sentences drop out, every section still renders."""
    bare = {name: {"plots": s.get("plots", [])} for name, s in snapshot.items()}
    md, _ = _build(tmp_path, bare)
    sections = _sections(md)
    assert list(sections) == [s.title for s in run_all.SECTIONS]
    for section in run_all.SECTIONS:
        assert _md_images(sections[section.title]), section.title
        assert "could not be built" not in sections[section.title]
        assert "None" not in _prose_and_tables(sections[section.title]), section.title


def test_renamed_plots_still_give_each_section_a_figure(snapshot, tmp_path):
    summaries = copy.deepcopy(snapshot)
    summaries["recommender"]["plots"] = ["rmse_by_epoch.png"]
    md, _ = _build(tmp_path, summaries)
    assert _md_images(_sections(md)["Recommendation"]) == ["recommender/rmse_by_epoch.png"]


def test_a_broken_builder_is_reported_in_its_section(snapshot, tmp_path, monkeypatch):
    def broken(summary, results):
        raise KeyError("renamed")

    sections = list(run_all.SECTIONS)
    sections[0] = run_all.dataclasses.replace(sections[0], prose=broken)
    monkeypatch.setattr(run_all, "SECTIONS", tuple(sections))
    md, _ = _build(tmp_path, copy.deepcopy(snapshot))
    assert "(The text could not be built from this summary: KeyError: 'renamed'.)" in _sections(md)["Losses"]
    assert _md_images(_sections(md)["Losses"])


# --- a real quick run, end to end -------------------------------------------------------------


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
    assert list(_sections(md)) == titles
    for title in titles:
        assert f"<h2>{title}</h2>" in html
        assert _md_images(_sections(md)[title]), title
    images = _md_images(md)
    for rel in images:
        assert (out / rel).is_file(), rel
    assert html.count("data:image/png;base64,iVBOR") == len(images)  # every plot embedded as a PNG
    for name in ("config.json", "summary.json", "metrics.jsonl", "integrals/console.txt"):
        assert (out / name).is_file()
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in summary["experiments"]}
    assert _raw_keys_in(md, summaries) == []


def test_quick_run_figures_match_theory(quick_run):
    out, _ = quick_run
    integrals = json.loads((out / "integrals" / "summary.json").read_text())
    assert integrals["trapezoid_order"] == pytest.approx(2.0, abs=0.1)   # O(h^2)
    assert integrals["simpson_order"] == pytest.approx(4.0, abs=0.2)     # O(h^4)
    assert integrals["monte_carlo_order"] == pytest.approx(0.5, abs=0.15)  # O(n^-1/2)
    assert integrals["ftc_max_error"] < 1e-6
    assert integrals["gauss_legendre_exp_error_n5"] < 1e-8  # ∫_{-1}^{1} e^x = e - 1/e (closed form)
    # the leading error terms (see the report's Integrals table): h²/6 and h⁴/90 for ∫_0^π sin, h = π/64
    h = 3.141592653589793 / integrals["error_panels"]
    assert integrals["trapezoid_error_n64"] == pytest.approx(h**2 / 6, rel=1e-3)
    assert integrals["simpson_error_n64"] == pytest.approx(h**4 / 90, rel=1e-2)


# --- running: console, failures, time estimates ------------------------------------------------


def _fake_run(calls, fail=()):
    def fake(name, quick, seed, out_dir):
        calls.append(name)
        print(f"{name}: noisy experiment output")
        print(f"{name}: noisy progress", file=sys.stderr)
        if name in fail:
            raise FloatingPointError("simulated failure")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return {"plots": []}

    return fake


def test_a_failing_experiment_keeps_the_others_and_fails_the_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_all, "_run_one", _fake_run(calls, fail=("stability",)))
    monkeypatch.setattr(run_all, "durations_path", lambda: None)
    with pytest.raises(RuntimeError, match="1 experiment\\(s\\) failed: stability"):
        run_all.run(run_all.Config(quick=True, only=("stability", "integrals")), tmp_path)
    assert calls == ["integrals", "stability"]
    md = (tmp_path / "report.md").read_text()
    assert "**FAILED:** `jaxcalc run stability` raised FloatingPointError: simulated failure" in md
    assert "simulated failure" in (tmp_path / "stability" / "error.txt").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == ["stability"]


def test_console_shows_an_estimate_and_one_line_per_experiment(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(run_all, "_run_one", _fake_run(calls))
    monkeypatch.setattr(run_all, "durations_path", lambda: tmp_path / "cache" / run_all.DURATIONS_FILE)
    run_all.run(run_all.Config(quick=True, only=("stability", "integrals")), tmp_path / "out")
    captured = capsys.readouterr()
    assert "noisy" not in captured.out + captured.err  # experiments' prints go to NAME/console.txt
    console = (tmp_path / "out" / "integrals" / "console.txt").read_text()
    assert "integrals: noisy experiment output" in console and "integrals: noisy progress" in console
    built_in = sum(run_all.EXPECTED_SECONDS[n][0] for n in ("integrals", "stability")) + run_all.REPORT_SECONDS
    assert f"2 experiments, expected about {run_all.format_seconds(built_in)} (built-in figures" in captured.err
    assert re.search(r"✓ integrals +\d+\.\d s", captured.err) and re.search(r"✓ stability +\d+\.\d s", captured.err)
    # the second run announces what the first one measured
    run_all.run(run_all.Config(quick=True, only=("stability", "integrals")), tmp_path / "out2")
    assert "(from earlier runs on this machine (2 of 2 experiments))" in capsys.readouterr().err


def test_estimates_learn_from_measured_durations(tmp_path, monkeypatch):
    path = tmp_path / run_all.DURATIONS_FILE
    monkeypatch.setattr(run_all, "durations_path", lambda: path)
    assert run_all.estimate_seconds("mlp", True, False) == (run_all.EXPECTED_SECONDS["mlp"][0], False)
    assert run_all.estimate_seconds("mlp", False, True) == (run_all.EXPECTED_SECONDS["mlp"][3], False)
    assert run_all.estimate_seconds("no-such", True, True) == (run_all.DEFAULT_SECONDS[1], False)
    for seconds in (10.0, 50.0, 12.0):
        run_all.record_seconds("mlp", True, True, seconds)
    assert run_all.estimate_seconds("mlp", True, True) == (12.0, True)  # the median of the last runs
    assert run_all.estimate_seconds("mlp", True, False)[1] is False     # cold runs are kept apart
    for seconds in range(20):
        run_all.record_seconds("mlp", True, True, float(seconds))
    assert len(json.loads(path.read_text())["mlp quick warm"]) == run_all.DURATIONS_KEPT
    path.write_text("{not json")
    assert run_all.estimate_seconds("mlp", True, True) == (run_all.EXPECTED_SECONDS["mlp"][1], False)
    run_all.record_seconds("mlp", True, True, 7.0)  # a damaged file is replaced, never fatal
    assert run_all.estimate_seconds("mlp", True, True) == (7.0, True)


def test_only_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown experiment"):
        run_all.Config(only=("nope",))


def _refresh_snapshot(run_dir: str) -> None:
    """Write report_summaries.json from a ``jaxcalc run all --quick --out RUN_DIR`` run (long lists cut)."""
    def trim(v):
        if isinstance(v, dict):
            return {k: trim(x) for k, x in v.items()}
        if isinstance(v, list):
            return [trim(x) for x in v[:12]]
        return v

    summaries = json.loads((Path(run_dir) / "summary.json").read_text())["summaries"]
    SNAPSHOT.write_text(json.dumps(trim(summaries), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    _refresh_snapshot(sys.argv[1])
