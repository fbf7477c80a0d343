"""Results on disk: every experiment writes config.json, metrics.jsonl, summary.json and plots.

Writes are crash-safe: JSON files are written to a temporary file and renamed into place
(a rename is atomic), and each metrics line is flushed as soon as it is logged, so a run
killed mid-way leaves complete files behind, never half-written ones.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/JAX scalars and arrays, dataclasses, paths and tuples to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        arr = np.asarray(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return to_jsonable(arr.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return to_jsonable(float(obj))
    return str(obj)


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` via a temp file + atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(to_jsonable(obj), f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class RunWriter:
    """Writes one experiment run's files into ``out_dir``.

    >>> w = RunWriter(out_dir, config)       # writes config.json   # doctest: +SKIP
    >>> w.log(epoch=1, train_loss=0.3)       # appends a metrics.jsonl line
    >>> w.savefig(fig, "loss")               # writes loss.png, returns its path
    >>> w.finish({"test_accuracy": 0.98})    # writes summary.json, returns the dict
    """

    def __init__(self, out_dir: Path | str, config: Any):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        write_json_atomic(self.out_dir / "config.json", config)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.plots: list[str] = []

    def log(self, **metrics: Any) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(to_jsonable(metrics)) + "\n")
            f.flush()

    def log_many(self, rows) -> None:
        with open(self.metrics_path, "a") as f:
            for row in rows:
                f.write(json.dumps(to_jsonable(row)) + "\n")
            f.flush()

    def savefig(self, fig, name: str) -> str:
        """Save a matplotlib figure as ``<name>.png`` (atomically) and close it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / f"{name}.png"
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)
        self.plots.append(path.name)
        return path.name

    def finish(self, summary: dict) -> dict:
        summary = dict(summary)
        summary.setdefault("plots", list(self.plots))
        summary = to_jsonable(summary)
        write_json_atomic(self.out_dir / "summary.json", summary)
        if not self.metrics_path.exists():
            self.metrics_path.touch()
        return summary


def figure(*args, **kwargs):
    """A matplotlib figure on the non-interactive Agg backend (safe on headless machines)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)
