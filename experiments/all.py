"""The main job: every experiment on its built-in data, one report (report.md + report.html)."""
from __future__ import annotations

import dataclasses
import importlib
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from jaxcalc import report as R
from jaxcalc.runio import write_json_atomic

NAME = "all"


@dataclass(frozen=True)
class Config:
    seed: int = 0
    quick: bool = False
    only: tuple[str, ...] = ()  # run just these experiments (names as in `jaxcalc list`)

    def __post_init__(self):
        known = set(EXPECTED_SECONDS)
        bad = [n for n in self.only if n not in known]
        if bad:
            raise ValueError(f"--only names unknown experiment(s) {', '.join(bad)}; valid: {', '.join(sorted(known))}")


QUICK = {"quick": True}

# Wall times (quick, full) in seconds, compile included.
EXPECTED_SECONDS = {  # measured on this project's 2-core CPU, cold compilation cache
    "gradients": (18, 20),
    "finite-differences": (6, 10),
    "integrals": (8, 10),
    "stability": (3, 5),
    "linear": (9, 30),
    "optimizers": (15, 60),
    "mlp": (17, 40),
    "cnn": (8, 16),
    "recommender": (6, 15),
    "diagnose": (14, 16),
}


@dataclass(frozen=True)
class Section:
    title: str
    experiment: str
    checked: str            # what was checked against what
    keys: tuple = ()        # summary keys shown first (others follow unless `only_keys`)
    match: tuple = ()       # if given, show only keys containing one of these substrings
    plots: bool = True


SECTIONS = (
    Section("Losses", "gradients",
            "Each loss equals optax's twin (tests); its gradient is checked against central finite "
            "differences in float64; the article's (3, 1) vs (3,) shape slip is refused with a ValueError.",
            keys=("shape_check_message", "all_passed", "losses_worst_rel_error", "models_worst_rel_error"),
            plots=False),
    Section("Derivatives and finite differences", "finite-differences",
            "Forward/central differences against the exact derivative (closed form) over step sizes, "
            "float32 and float64: the measured best h and error beside the theory (eps^(1/2), eps^(1/3)); "
            "complex step to float64 precision.",
            keys=("exp_complex_step_error", "sin_complex_step_error", "network_complex_step_error")),
    Section("Integrals", "integrals",
            "Trapezoid, Simpson, Gauss–Legendre and Monte Carlo against closed forms (∫₀^π sin = 2, "
            "∫₋₁¹ eˣ = e − 1/e); measured convergence orders against O(h²), O(h⁴); the fundamental "
            "theorem of calculus through jax.grad."),
    Section("Batch gradient descent", "linear",
            "The article's example 1 as written (numpy broadcasting (3, 1) − (3,) to (3, 3)) against jaxcalc's "
            "shape-checked version; gradient descent on the diabetes data against the closed-form "
            "least-squares solution (jnp.linalg.lstsq).",
            keys=("seed_as_written_w", "seed_as_written_b", "shape_check_refusal", "w", "b",
                  "rel_diff_to_lstsq.batch", "max_rel_diff_to_lstsq", "hessian_condition_number")),
    Section("Stochastic and mini-batch gradient descent", "linear",
            "SGD (one example per step, per-example order reshuffled each epoch) and mini-batch descent reach "
            "the same least-squares solution; the recovered parameters of a synthetic set lie within the noise.",
            match=("sgd", "minibatch", "synthetic"), plots=False),
    Section("Backpropagation", "mlp",
            "A hand-written backward pass (chain rule, layer by layer) against jax.grad; the article's "
            "example 2 over 5 seeds and with a tuned learning rate; digits accuracy; gradient norms per layer.",
            keys=("backprop_vs_autodiff_max_rel_diff", "vjp_vs_autodiff_max_rel_diff", "trajectory_max_param_diff",
                  "seed_final_loss", "seed_final_loss_max", "tuned_final_loss_max", "article_compile_s",
                  "article_train_ms", "digits_test_accuracy", "diabetes_mlp_test_r2", "diabetes_linear_test_r2",
                  "gradnorm_sigmoid_first_over_last", "gradnorm_sigmoid_glorot_first_over_last",
                  "gradnorm_relu_he_max_over_min")),
    Section("Numerical stability", "stability",
            "Naive softmax, log(softmax) and log(1 + eˣ) in float32 against the stable forms jaxcalc uses: "
            "the input at which each naive form first overflows.",
            keys=("theory_exp_overflow", "theory_exp_underflow_normal")),
    Section("Convergence and optimizers", "optimizers",
            "GD, momentum, Nesterov, RMSProp and Adam (from scratch, each tested step by step against optax) on an "
            "ill-conditioned quadratic, Rosenbrock and logistic regression; the largest stable learning rate "
            "against the theory 2/λ_max of the Hessian.",
            keys=("quadratic_lambda_max", "lr_max_theory", "lr_max_measured", "lr_max_measured_over_theory",
                  "lr_find_suggested_lr")),
    Section("Image recognition", "cnn",
            "The article's CNN in flax NNX, trained on logits with softmax cross-entropy (the article hands logits "
            "to a loss that expects probabilities); test accuracy on held-out images.",
            keys=("dataset", "epochs", "param_count", "test_accuracy", "train_images_per_second",
                  "compile_seconds")),
    Section("Recommendation", "recommender",
            "Biased matrix factorization trained by gradient descent on synthetic low-rank ratings with a known "
            "noise floor, beside the global-mean and biases-only predictors.",
            keys=("data", "method", "test_rmse", "noise_floor_rmse", "rmse_over_noise_floor", "bias_only_rmse",
                  "global_mean_rmse", "test_mae", "precision_at_10", "recall_at_10", "fit_seconds",
                  "compile_seconds")),
    Section("Diagnosis: the line that breaks a gradient", "diagnose",
            "jaxcalc.diagnose on small losses with the classic defects planted (the where-trap, naive softmax, "
            "log(1 + x) and (1 − cos x)/x² at small x, a custom_vjp rule 1% off, sqrt and norm at 0): the reported "
            "kind and file:line against the marked line of each defect; each fix and every jaxcalc loss and model "
            "at ordinary inputs diagnose clean. Local error = log2(1 + |op32(round32(x)) − op64(x)| / ulp32) "
            "per equation, x exact (float64 shadow).",
            keys=("defects_found", "all_defects_found", "fixes_clean", "healthy_clean", "healthy_checked")),
)


MARKDOWN_TABLE_KEYS = ("table_markdown", "table", "tables")


def _scalar_items(summary: dict, section: Section):
    """The figures a section shows: its ``keys`` if given, else every scalar (``match``-filtered)."""
    def shown(v):
        return not isinstance(v, (dict, list)) and not (isinstance(v, str) and "\n" in v)

    flat = {}
    for k, v in summary.items():  # one level of dicts of scalars becomes "key.sub"
        if isinstance(v, dict) and all(shown(x) for x in v.values()):
            flat.update({f"{k}.{sub}": x for sub, x in v.items()})
        else:
            flat[k] = v
    if section.keys:
        return [(k, flat[k]) for k in section.keys if k in flat and shown(flat[k])]
    items = [(k, v) for k, v in flat.items() if k != "plots" and shown(v)]
    if section.match:
        items = [(k, v) for k, v in items if any(m in k for m in section.match)]
    return items


def _run_one(name: str, quick: bool, seed: int, out_dir: Path):
    module = importlib.import_module(f"experiments.{name.replace('-', '_')}")
    overrides = dict(getattr(module, "QUICK", {})) if quick else {}
    if "seed" in {f.name for f in dataclasses.fields(module.Config)}:
        overrides["seed"] = seed
    config = module.Config(**overrides)
    return module.run(config, out_dir)


def run(config: Config, out_dir) -> dict:
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "config.json", config)
    names = list(dict.fromkeys(s.experiment for s in SECTIONS))
    if config.only:
        names = [n for n in names if n in config.only]
    column = 0 if config.quick else 1
    expected = sum(EXPECTED_SECONDS[n][column] for n in names)
    print(f"jaxcalc run all{' --quick' if config.quick else ''}: {len(names)} experiments, "
          f"expected about {expected // 60} min {expected % 60} s on a 2-core CPU", file=sys.stderr)

    results, timings, failures = {}, {}, {}
    bar = tqdm(names, desc="experiments", unit="exp", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            results[name] = _run_one(name, config.quick, config.seed, out_dir / name)
        except Exception as e:  # one failing experiment must not lose the others' results
            failures[name] = f"{type(e).__name__}: {e}"
            (out_dir / name).mkdir(parents=True, exist_ok=True)
            (out_dir / name / "error.txt").write_text(traceback.format_exc())
        timings[name] = time.perf_counter() - start
        with open(out_dir / "metrics.jsonl", "a") as f:
            ok = str(name not in failures).lower()
            f.write(f'{{"experiment": "{name}", "seconds": {timings[name]:.3f}, "ok": {ok}}}\n')

    blocks = build_report(config, results, timings, failures)
    md, html_path = R.write_report(blocks, out_dir)
    summary = {
        "experiments": names,
        "failed": sorted(failures),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "total_seconds": round(sum(timings.values()), 2),
        "report_md": md.name,
        "report_html": html_path.name,
        "summaries": results,
    }
    write_json_atomic(out_dir / "summary.json", summary)
    if failures:
        raise RuntimeError(f"{len(failures)} experiment(s) failed: {', '.join(failures)}; "
                           f"see {out_dir}/<name>/error.txt "
                           f"(the report was written to {md})")
    return {k: v for k, v in summary.items() if k != "summaries"}


def build_report(config: Config, results: dict, timings: dict, failures: dict) -> list:
    import jax

    blocks = [("h1", "jaxcalc: the calculus of machine learning, run as experiments"),
              ("p", f"Mode: {'quick' if config.quick else 'full'}; seed {config.seed}; "
                    f"jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)); "
                    f"total {sum(timings.values()):.1f} s."),
              ("table", ["experiment", "seconds", "status"],
               [[n, round(t, 1), "FAILED" if n in failures else "ok"] for n, t in timings.items()])]
    for section in SECTIONS:
        name = section.experiment
        if name not in timings:
            continue
        blocks.append(("h2", section.title))
        blocks.append(("p", f"**Checked:** {section.checked} (experiment `{name}`: `jaxcalc run {name}`)"))
        if name in failures:
            blocks.append(("p", f"**FAILED:** {failures[name]}"))
            continue
        summary = results[name]
        items = _scalar_items(summary, section)
        if items:
            blocks.append(("table", ["figure", "value"], [[k, v] for k, v in items]))
        for key in MARKDOWN_TABLE_KEYS:
            if isinstance(summary.get(key), str) and section.plots:
                blocks.append(("md", summary[key]))
        if section.plots:
            for plot in summary.get("plots", []):
                blocks.append(("img", f"{name}/{plot}", f"{name}: {Path(plot).stem}"))
        if name == "gradients" and section.title == "Losses" and "checks" in summary:
            blocks.append(("h2", "Gradient checks (float64 central differences)"))
            blocks.append(("table", ["function", "kind", "method", "worst relative error", "passed"],
                           [[c["name"], c["kind"], c["method"], c["worst_rel_error"], c["passed"]]
                            for c in summary["checks"]]))
    return blocks
