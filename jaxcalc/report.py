"""A tiny document model rendered twice: Markdown (report.md) and self-contained HTML (report.html).

Blocks are plain tuples, so a report is data first and text second:
``("h1", text)``, ``("h2", text)``, ``("p", text)``, ``("note", text)`` (a small-print paragraph),
``("table", header, rows)``, ``("img", relative_path, caption)``, ``("code", text)``, ``("md", markdown with
pipe tables)``. Paragraph text may use Markdown's `code` and **bold**. The HTML embeds images as base64 so the
file opens anywhere on its own.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

CSS = """body{font-family:Georgia,serif;font-size:17px;line-height:1.5;max-width:56em;margin:2em auto;padding:0 1em;
color:#222}h1,h2{font-family:system-ui,sans-serif}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em;font-family:system-ui,sans-serif}
td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f0f0f0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555;font-family:system-ui,sans-serif}code{font-size:.9em;background:#f4f4f4}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}p.note{font-size:.8em;color:#666}"""


def fmt(value) -> str:
    """Format a figure for a table: floats to 4 significant digits, lists shortened, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(fmt(v) for v in value[:6])
        return f"[{inner}{', …' if len(value) > 6 else ''}]"
    return str(value)


def to_markdown(blocks) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "h3":
            out.append(f"### {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "note":
            out.append(f"<sub>{block[1]}</sub>\n")
        elif kind == "code":
            out.append(f"```\n{block[1]}\n```\n")
        elif kind == "md":
            out.append(f"{block[1].strip()}\n")
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n\n{block[2]}\n" if block[2] else f"![]({block[1]})\n")
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n".join(out)


def to_html(blocks, base_dir: Path | str, title: str = "jaxcalc report") -> str:
    base_dir = Path(base_dir)
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "note":
            body.append(f'<p class="note">{_inline(block[1])}</p>')
        elif kind == "code":
            body.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "md":
            body.append(_markdown_fragment_to_html(block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            trs = "".join("<tr>" + "".join(f"<td>{_inline(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><tr>{head}</tr>{trs}</table>")
        elif kind == "img":
            path = base_dir / block[1]
            data = base64.b64encode(path.read_bytes()).decode() if path.exists() else ""
            body.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _markdown_fragment_to_html(text: str) -> str:
    """Pipe tables become ``<table>``; other lines become paragraphs (enough for experiment tables)."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table
                     if not set(row.replace("|", "").strip()) <= set("-: ")]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
            table.clear()

    for line in text.strip().splitlines():
        if line.strip().startswith("|"):
            table.append(line)
        else:
            flush()
            if line.strip():
                out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape text, keeping `code` spans and **bold** readable."""
    parts = html.escape(text).split("`")
    parts = [f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)]
    out = "".join(parts)
    bold = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(bold))


def write_report(blocks, out_dir: Path | str, name: str = "report", title: str = "jaxcalc report") -> tuple[Path, Path]:
    """Write ``name.md`` and ``name.html`` into ``out_dir`` (atomically); return both paths."""
    out_dir = Path(out_dir)
    paths = []
    for suffix, text in ((".md", to_markdown(blocks)), (".html", to_html(blocks, out_dir, title=title))):
        path = out_dir / f"{name}{suffix}"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


def image_paths(blocks) -> list[str]:
    return [b[1] for b in blocks if b[0] == "img"]


# Human names of summary keys, for the console summary of `jaxcalc run NAME` (a key without an entry
# is shown with its underscores as spaces). Units in parentheses.
LABELS = {
    "plots": "figures",
    "all_passed": "all checks passed",
    "checks_run": "checks run",
    "losses_worst_rel_error": "losses: worst relative error",
    "models_worst_rel_error": "models: worst relative error",
    "shape_check_message": "(3, 1) vs (3,) slip",
    "smooth_rtol": "tolerance, smooth functions",
    "kink_rtol": "tolerance, near kinks",
    "trapezoid_order": "trapezoid: convergence order",
    "simpson_order": "Simpson: convergence order",
    "error_panels": "panels for the errors below",
    "trapezoid_error_n64": "trapezoid: error",
    "simpson_error_n64": "Simpson: error",
    "gauss_legendre_exp_error_n5": "Gauss-Legendre, 5 nodes: error",
    "ftc_max_error": "d/dx of the integral vs f: error",
    "monte_carlo_order": "Monte Carlo: convergence order",
    "seed_as_written_w": "example 1 as printed: w",
    "seed_as_written_b": "example 1 as printed: b",
    "seed_as_written_printed": "example 1 as printed, output",
    "shape_check_refusal": "jaxcalc's refusal",
    "grad_at_zero": "gradient at w = b = 0",
    "article_grad_at_zero": "article's gradient at 0",
    "w": "example 1, shapes checked: w",
    "b": "example 1, shapes checked: b",
    "article_final_loss": "example 1: final loss",
    "lr_batch": "batch GD learning rate (1/λ_max)",
    "hessian_condition_number": "Hessian condition number",
    "lstsq_w": "least squares: w",
    "lstsq_b": "least squares: b",
    "lstsq_mse": "least squares: MSE",
    "rel_diff_to_lstsq": "distance to least squares",
    "max_rel_diff_to_lstsq": "largest distance to least squares",
    "all_within_1e-3": "all within 1e-3 of least squares",
    "diabetes_final_loss": "diabetes: final MSE",
    "synthetic_max_abs_err": "synthetic: largest coefficient error",
    "synthetic_max_z": "synthetic: largest error (standard errors)",
    "synthetic_recovered_within_noise": "synthetic: recovered within noise",
    "article_shape_refusal": "(2, 1) vs (2,) slip",
    "article_param_count": "example 2: parameters",
    "seed_final_loss": "example 2: median final MSE",
    "seed_final_losses": "example 2: final MSE per seed",
    "seed_final_loss_max": "example 2: worst final MSE",
    "tuned_final_loss_max": "example 2, tuned lr: worst final MSE",
    "backprop_vs_autodiff_max_rel_diff": "hand-written vs jax.grad",
    "vjp_vs_autodiff_max_rel_diff": "per-layer vjp vs jax.grad",
    "trajectory_max_param_diff": "trajectory difference (params)",
    "article_compile_s": "example 2: compile (s)",
    "article_train_ms": "example 2: training (ms)",
    "digits_test_accuracy": "digits: test accuracy",
    "digits_train_accuracy": "digits: training accuracy",
    "nnx_digits_test_accuracy": "digits, NNX twin: test accuracy",
    "diabetes_mlp_test_r2": "diabetes: MLP test R²",
    "diabetes_linear_test_r2": "diabetes: linear test R²",
    "gradnorm_sigmoid_first_over_last": "grad norm first/last, sigmoid N(0,1)",
    "gradnorm_sigmoid_glorot_first_over_last": "grad norm first/last, sigmoid Glorot",
    "gradnorm_relu_he_max_over_min": "grad norm max/min, relu He",
    "theory_exp_overflow": "theory: exp overflows at",
    "theory_exp_underflow_normal": "theory: exp(-s) flushes to 0 at",
    "theory_exp_underflow_subnormal": "theory: exp(-s) underflows at",
    "quadratic_lambda_max": "quadratic: λ_max",
    "lr_max_theory": "largest stable lr, theory 2/λ_max",
    "lr_max_measured": "largest stable lr, measured",
    "lr_first_unstable": "first unstable lr",
    "lr_max_measured_over_theory": "measured / theory",
    "lr_find_suggested_lr": "lr_find: suggested lr",
    "test_accuracy": "test accuracy",
    "train_accuracy": "training accuracy",
    "test_loss": "test loss",
    "train_images_per_second": "training images per second",
    "param_count": "parameters",
    "compile_seconds": "compilation (s)",
    "test_rmse": "test RMSE",
    "test_mae": "test MAE",
    "global_mean_rmse": "global mean: test RMSE",
    "bias_only_rmse": "biases only: test RMSE",
    "noise_floor_rmse": "noise floor RMSE",
    "rmse_over_noise_floor": "RMSE / noise floor",
    "precision_at_10": "precision@10",
    "recall_at_10": "recall@10",
    "fit_seconds": "fitting (s)",
    "total_seconds": "total (s)",
    "expected_seconds": "expected (s)",
    "seconds": "seconds per experiment",
    "report_md": "report (Markdown)",
    "report_html": "report (HTML)",
}


# Families of keys, "<case>_<suffix>" (finite-differences: exp_central_float64_min_error; stability:
# log1p_exp_naive_first_nonfinite): the case with spaces, then the suffix's name.
SUFFIX_LABELS = {
    "_naive_first_nonfinite": "naive form, first inf/NaN at s",
    "_naive_value_there": "naive form's value there",
    "_stable_value_there": "stable form's value there",
    "_naive_first_rel_error_1pct": "naive form, error > 1% from s",
    "_naive_grad_first_nonfinite": "naive gradient, first inf/NaN at s",
    "_stable_max_rel_error": "stable form, worst relative error",
    "_stable_all_finite": "stable form always finite",
    "_raw_min_error": "smallest error (raw)",
    "_min_error": "smallest relative error",
    "_best_h": "best step h",
    "_truncation_slope": "truncation slope",
    "_roundoff_slope": "round-off slope",
    "_complex_step_error": "complex step, relative error",
    "_error": "error",
}


def label(key: str) -> str:
    """A human name for a summary key: its ``LABELS`` entry, else ``"<case>: <suffix name>"`` for a key
    family of ``SUFFIX_LABELS``, else the key with its underscores as spaces."""
    if key in LABELS:
        return LABELS[key]
    for suffix, name in SUFFIX_LABELS.items():
        if key.endswith(suffix) and len(key) > len(suffix):
            return f"{key[: -len(suffix)].replace('_', ' ')}: {name}"
    return key.replace("_", " ")
