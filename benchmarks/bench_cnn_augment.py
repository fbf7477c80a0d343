"""`jaxcalc run cnn` with and without --augment on an image-folder or CIFAR-10 data set: test accuracy per epoch, time.

    python benchmarks/bench_cnn_augment.py --data-dir ../shared/data/cifar10-dev --epochs 10 30

Each configuration runs as its own ``jaxcalc run cnn`` process, one at a time (without, then with
--augment, for each epoch count), with ``--no-cache`` so every run compiles afresh (the compile
time is reported on its own). Prints a markdown table with the CPU model. The data directory can
also come from ``$JAXCALC_BENCH_CIFAR``. On ``cifar10-dev`` (5,000 training images) the figures
describe that subset only: far too small to quote CIFAR-10 accuracy from.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import cpu_name  # benchmarks/_timing.py (script folder)

REPO = Path(__file__).resolve().parents[1]



def run_one(data_dir: str, epochs: int, augment: bool, batch: int, lr: float, seed: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "jaxcalc", "run", "cnn", "--data-dir", data_dir, "--epochs", str(epochs),
           "--batch-size", str(batch), "--lr", str(lr), "--seed", str(seed),
           "--augment" if augment else "--no-augment", "--out", str(out), "--no-cache"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    train_s = summary["train_images"] // batch * batch * epochs / summary["train_images_per_second"]
    return {"rows": rows, "summary": summary, "wall": wall, "train_s": train_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("JAXCALC_BENCH_CIFAR"),
                        help="CIFAR-10 batches or train/<class>/ + test/<class>/ image folders "
                             "(default $JAXCALC_BENCH_CIFAR)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 30], help="epoch counts to run (default 10 30)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's peak learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("give --data-dir or set JAXCALC_BENCH_CIFAR")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cnn-augment-") as tmp:
        for epochs in args.epochs:
            for augment in (False, True):
                out = Path(tmp) / f"e{epochs}-{'aug' if augment else 'plain'}"
                r = run_one(args.data_dir, epochs, augment, args.batch_size, args.lr, args.seed, out)
                results.append((epochs, augment, r))
                print(f"epochs {epochs} augment {augment}: test accuracy {r['summary']['test_accuracy']:.3f}, "
                      f"{r['wall']:.0f} s", file=sys.stderr)

    s0 = results[0][2]["summary"]
    print(f"\n`jaxcalc run cnn --data-dir {args.data_dir} --epochs E --batch-size {args.batch_size} --lr {args.lr:g} "
          f"[--augment]` on {s0['dataset']} ({s0['train_images']:,} train / {s0['test_images']:,} test images), "
          f"seed {args.seed}; {cpu_name()}, {os.cpu_count()} cores, device {s0['device']}\n")
    print("| epochs | --augment | test accuracy at epochs 1 / 5 / 10 / ... / last | best (epoch) "
          "| train accuracy, last epoch (dropout on) | train s | compile s | wall s |")
    print("|---:|:---:|---|---|---:|---:|---:|---:|")
    for epochs, augment, r in results:
        rows = r["rows"]
        marks = sorted({1, epochs} | set(range(5, epochs + 1, 5)))
        accs = " / ".join(f"{rows[e - 1]['test_accuracy']:.3f}" for e in marks)
        best = max(rows, key=lambda row: row["test_accuracy"])
        print(f"| {epochs} | {'yes' if augment else 'no'} | {accs} | {best['test_accuracy']:.3f} ({best['epoch']}) "
              f"| {rows[-1]['train_accuracy']:.3f} | {r['train_s']:.1f} | {r['summary']['compile_seconds']:.1f} "
              f"| {r['wall']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
