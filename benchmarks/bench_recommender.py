"""Recommender fit speed and accuracy: jaxcalc's methods against Surprise's SVD, same data, same run.

Workload: 80,000 training ratings over 943 users x 1,682 items (synthetic MovieLens-like
ratings from ``jaxcalc.data.movielens.synthetic_ratings``, or the user's own files with
``--train PATH --test PATH``), the rest held out for test RMSE (clipped predictions on both
sides). Each method runs in its own subprocess (one framework per process), ``--processes``
times; each process fits once to compile (reported apart) and then ``--repeats`` timed fits.
Surprise (``pip install scikit-surprise``) is optional: its rows are skipped with a note when
it is not importable.

    python3 benchmarks/bench_recommender.py [--repeats 3] [--processes 2] [--train u1.base --test u1.test]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# name -> fit settings (jaxcalc.models.recommender.fit keywords); "als" is the experiment's default
# method with the L2 weight its validation split picks on the synthetic data (0.2).
JAX_METHODS = {
    "als": dict(method="als", factors=10, epochs=8, reg=0.2),
    "minibatch": dict(method="minibatch", factors=10, epochs=15, lr=0.01, reg=0.2, batch_size=4096),
    "fullbatch": dict(method="fullbatch", factors=10, epochs=200, lr=0.05, reg=0.2),
    "sgd (Surprise preset)": dict(method="sgd", factors=100, epochs=20, lr=0.005, reg=0.02, init_scale=0.1),
}
TRAIN_RATINGS = 80_000


def make_data(folder: Path, seed: int) -> tuple[Path, Path, str]:
    """Write synthetic train/test files in ml-100k's u.data layout; returns their paths."""
    import jax

    from jaxcalc.data import movielens as ml

    syn = ml.synthetic_ratings(jax.random.key(seed))
    d = syn.data
    perm = np.random.default_rng(seed).permutation(len(d))
    tr, te = np.sort(perm[:TRAIN_RATINGS]), np.sort(perm[TRAIN_RATINGS:])
    floor = float(np.sqrt(np.mean((syn.expected[te] - d.ratings[te]) ** 2)))
    for name, idx in (("train.data", tr), ("test.data", te)):
        rows = np.stack([d.user_ids[d.users[idx]], d.item_ids[d.items[idx]], d.ratings[idx].astype(int)], 1)
        np.savetxt(folder / name, np.column_stack([rows, np.zeros(len(idx), int)]), fmt="%d", delimiter="\t")
    return folder / "train.data", folder / "test.data", f"synthetic, noise floor RMSE {floor:.4f}"


def worker_jax(args) -> dict:
    import jax

    from jaxcalc.data import movielens as ml
    from jaxcalc.models import recommender as rec

    train, test = ml.load_train_test(args.train, args.test)
    settings = JAX_METHODS[args.method]
    scale = (float(train.ratings.min()), float(train.ratings.max()))
    seen_u = np.bincount(train.users, minlength=train.num_users) > 0
    seen_i = np.bincount(train.items, minlength=train.num_items) > 0
    times, rmses, compile_s = [], [], None
    for rep in range(args.repeats + 1):
        t0 = time.perf_counter()
        res = rec.fit(train.as_batch(), train.num_users, train.num_items, key=jax.random.key(rep), **settings)
        wall = time.perf_counter() - t0
        if rep == 0:  # first fit in this process: trace + compile, reported apart
            compile_s = res.compile_seconds
            continue
        times.append(res.fit_seconds)
        rmses.append(rec.evaluate(res.params, test.as_batch(), scale=scale, seen_users=seen_u,
                                  seen_items=seen_i)["rmse"])
    return {"times": times, "rmse": float(np.median(rmses)), "compile": compile_s, "n": len(train),
            "epochs": settings["epochs"], "device": str(jax.devices()[0]), "last_wall": wall}


def worker_surprise(args) -> dict:
    from surprise import SVD, Dataset, Reader, accuracy
    from surprise.model_selection import PredefinedKFold

    reader = Reader(line_format="user item rating timestamp", sep="\t", rating_scale=(1, 5))
    folds = Dataset.load_from_folds([(str(args.train), str(args.test))], reader)
    trainset, testset = next(PredefinedKFold().split(folds))
    times, rmses = [], []
    for rep in range(args.repeats + 1):
        algo = SVD(random_state=rep)
        t0 = time.perf_counter()
        algo.fit(trainset)
        dt = time.perf_counter() - t0
        if rep == 0:
            continue
        times.append(dt)
        rmses.append(accuracy.rmse(algo.test(testset), verbose=False))
    return {"times": times, "rmse": float(np.median(rmses)), "n": trainset.n_ratings, "epochs": 20}


def spawn(kind: str, method: str, train: Path, test: Path, repeats: int) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", kind, "--method", method, "--train", str(train),
           "--test", str(test), "--repeats", str(repeats)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"<!-- {kind} {method} failed: {out.stderr.strip().splitlines()[-1:]} -->", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_times(ts) -> str:
    return f"{np.median(ts):.3f} s [{min(ts):.3f}–{max(ts):.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["jax", "surprise"])
    p.add_argument("--method", default="als")
    p.add_argument("--train", type=Path)
    p.add_argument("--test", type=Path)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--methods", default=",".join(JAX_METHODS),
                   help="comma-separated subset of: " + ", ".join(JAX_METHODS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.worker == "jax":
        print(json.dumps(worker_jax(args)))
        return
    if args.worker == "surprise":
        print(json.dumps(worker_surprise(args)))
        return

    tmp = tempfile.TemporaryDirectory()
    if args.train:
        train, test, what = args.train, args.test, f"{args.train} / {args.test}"
    else:
        train, test, what = make_data(Path(tmp.name), args.seed)
    have_surprise = importlib.util.find_spec("surprise") is not None

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = {m: [] for m in methods}
    peer = []
    for _ in range(args.processes):  # alternate sides, one process at a time
        if have_surprise:
            r = spawn("surprise", "svd", train, test, args.repeats)
            if r:
                peer.append(r)
        for m in methods:
            r = spawn("jax", m, train, test, args.repeats)
            if r:
                results[m].append(r)

    peer_times = [t for r in peer for t in r["times"]]
    peer_med = float(np.median(peer_times)) if peer_times else None
    device = next((r[0]["device"] for r in results.values() if r), "?")
    n = next((r[0]["n"] for r in results.values() if r), TRAIN_RATINGS)
    print(f"\nRecommender fit on {n:,} training ratings ({what}); device: {device}; "
          f"{args.processes} processes x {args.repeats} timed fits per side, medians [min–max]\n")
    print("| workload | jaxcalc | peer: Surprise SVD (default) | ratio (jaxcalc/peer time) | notes |")
    print("|---|---|---|---|---|")
    peer_cell = (f"{fmt_times(peer_times)}, RMSE {np.median([r['rmse'] for r in peer]):.4f}"
                 if peer_times else "skipped: scikit-surprise not importable")
    for m in methods:
        rs = results[m]
        if not rs:
            print(f"| fit, {m} | failed | {peer_cell} | – | see stderr |")
            continue
        ts = [t for r in rs for t in r["times"]]
        med = float(np.median(ts))
        ep = rs[0]["epochs"]
        s = JAX_METHODS[m]
        ratio = f"{med / peer_med:.2f}x" if peer_med else "–"
        notes = (f"{s['factors']} factors, {ep} {'sweeps' if m == 'als' else 'epochs'}, reg {s['reg']}; "
                 f"{n * ep / med / 1e6:.2f} M ratings/s; compile {np.median([r['compile'] for r in rs]):.2f} s apart")
        print(f"| fit, {m} | {fmt_times(ts)}, RMSE {np.median([r['rmse'] for r in rs]):.4f} | {peer_cell} | "
              f"{ratio} | {notes} |")
    if peer_times:
        print(f"\nSurprise SVD: 100 factors, 20 epochs, lr 0.005, reg 0.02 (its defaults); "
              f"{n * 20 / peer_med / 1e6:.2f} M ratings/s. RMSE: test ratings, predictions clipped to [1, 5].")


if __name__ == "__main__":
    main()
