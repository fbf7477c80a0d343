"""Recommender fits: jaxcalc's default against Surprise's algorithms, same split, same run.

Real data: ``--movielens DIR`` (or ``JAXCALC_BENCH_MOVIELENS=DIR``), a folder holding ``train.csv`` and
``test.csv`` (MovieLens ``ratings.csv`` layout, e.g. the ml-latest-small dev split), or ``--train PATH
--test PATH`` (any MovieLens format, e.g. ml-100k's ``u1.base`` / ``u1.test``). Without either, synthetic
MovieLens-like ratings (80,000 for training) from ``jaxcalc.data.movielens.synthetic_ratings``.

Rows: jaxcalc's default (what ``jaxcalc run recommender --train ... --test ...`` fits), the previous default
(ALS with its L2 weight chosen on a validation split, that choice timed too), and per-rating SGD with
Surprise's SVD settings; Surprise's SVD (default), SVD tuned (150 factors, 60 epochs, lr 0.007, reg 0.1),
SVD++, KNNBaseline (item-based, pearson_baseline) and BaselineOnly. Each row runs in its own process
(one framework per process), ``--processes`` times, alternating; in each process jaxcalc fits once to
compile (reported apart) and then ``--repeats`` timed fits; Surprise's slow ones (SVD++, KNNBaseline)
take ``--slow-repeats``. Time = the whole fit as a user calls it in a warm process (for jaxcalc's
previous default: choosing ``reg`` + the fit), median [min–max]; RMSE on the test ratings, predictions
clipped to the rating scale on both sides, unseen users/items falling back to biases.

``--sgd-profile`` adds the per-rating SGD scan's time per rating against the number of factors, jaxcalc
(a compiled ``lax.scan``, both ways of reading the two rows) beside Surprise's Cython loop, to show the
compiled loop's fixed cost per step against its arithmetic.

Surprise (``pip install scikit-surprise==1.1.5``) is optional: its rows are skipped with a note when it is
not importable; ``--surprise-python`` (or ``JAXCALC_BENCH_SURPRISE_PYTHON``) runs it from another venv.

    python benchmarks/bench_recommender.py --movielens ../shared/data/ml-latest-small [--sgd-profile]
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

import numpy as np
from _timing import cpu_name  # benchmarks/_timing.py (script folder)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_RATINGS = 80_000

# jaxcalc rows: name -> what the worker fits. "default" is experiments.recommender's default settings.
JAX_ROWS = {
    "default": "bpmf as `jaxcalc run recommender` fits it",
    "als (reg chosen)": "the previous default: ALS, 10 factors, 8 sweeps, reg chosen on a 10% validation split",
    "sgd (Surprise SVD settings)": "per-rating SGD scan, 100 factors, 20 epochs, lr 0.005, reg 0.02",
    # not in the default run (--jax-rows): the gradient methods at the L2 weight ALS picks on the dev split
    "minibatch": "mini-batch Adam, 10 factors, 15 epochs, reg 0.2",
    "fullbatch": "full-batch Adam, 10 factors, 200 steps, reg 0.2",
}
DEFAULT_JAX_ROWS = ("default", "als (reg chosen)", "sgd (Surprise SVD settings)")
# Surprise rows: name -> (class name, keyword arguments, slow)
SURPRISE_ROWS = {
    "SVD (default)": ("SVD", {}, False),
    "SVD tuned": ("SVD", {"n_factors": 150, "n_epochs": 60, "lr_all": 0.007, "reg_all": 0.1}, False),
    "SVD++": ("SVDpp", {}, True),
    "KNNBaseline": ("KNNBaseline", {"sim_options": {"name": "pearson_baseline", "user_based": False},
                                    "verbose": False}, True),
    "BaselineOnly": ("BaselineOnly", {"verbose": False}, False),
}
PROFILE_FACTORS = (1, 10, 12, 13, 50, 100)



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


# --------------------------------------------------------------------------- workers (one per process)


def worker_jax(args) -> dict:
    import jax

    from experiments import recommender as exp
    from jaxcalc.data import movielens as ml
    from jaxcalc.models import recommender as rec

    train, test = ml.load_train_test(args.train, args.test)
    scale, (seen_u, seen_i) = exp._scale(train), exp._seen(train)
    default = exp.settings(exp.Config())
    if args.method == "default":
        s, choose = default, False
    elif args.method == "als (reg chosen)":
        s, choose = exp.settings(exp.Config(method="als")), True
    elif args.method in ("minibatch", "fullbatch"):
        s, choose = exp.settings(exp.Config(method=args.method, reg=0.2)), False
    else:
        s, choose = exp.settings(exp.Config(preset="surprise")), False

    def whole_fit(rep):
        key = jax.random.key(rep)
        reg = s["reg"]
        if choose:
            reg, _, _ = exp.select_reg(train, s, jax.random.fold_in(key, 100))
        return exp.fit_model(train, s, key, reg=reg)

    times, rmses = [], []
    t0 = time.perf_counter()
    first = whole_fit(0)  # trace + compile in this process, reported apart
    first_wall = time.perf_counter() - t0
    for rep in range(1, args.repeats + 1):
        t0 = time.perf_counter()
        res = whole_fit(rep)
        times.append(time.perf_counter() - t0)
        rmses.append(rec.evaluate(res.params, test.as_batch(), scale=scale, seen_users=seen_u,
                                  seen_items=seen_i)["rmse"])
    return {"times": times, "rmses": rmses, "compile": first.compile_seconds, "first_wall": first_wall,
            "n": len(train), "settings": {k: v for k, v in s.items() if v is not None},
            "device": str(jax.devices()[0])}


def _surprise_data(args):
    from surprise import Dataset, Reader
    from surprise.model_selection import PredefinedKFold

    if str(args.train).endswith(".csv"):
        reader = Reader(line_format="user item rating timestamp", sep=",", rating_scale=(0.5, 5), skip_lines=1)
    else:
        reader = Reader(line_format="user item rating timestamp", sep="\t", rating_scale=(1, 5))
    folds = Dataset.load_from_folds([(str(args.train), str(args.test))], reader)
    return next(PredefinedKFold().split(folds))


def worker_surprise(args) -> dict:
    import surprise
    from surprise import accuracy

    trainset, testset = _surprise_data(args)
    cls, kwargs, slow = SURPRISE_ROWS[args.method]
    times, rmses = [], []
    for seed in range(args.slow_repeats if slow else args.repeats):
        if cls in ("SVD", "SVDpp"):
            kwargs = dict(kwargs, random_state=seed)
        algo = getattr(surprise, cls)(**kwargs)
        t0 = time.perf_counter()
        algo.fit(trainset)
        times.append(time.perf_counter() - t0)
        rmses.append(accuracy.rmse(algo.test(testset), verbose=False))
    return {"times": times, "rmses": rmses, "n": trainset.n_ratings, "version": surprise.__version__}


def worker_sgd_profile_jax(args) -> dict:
    """Seconds per rating of one per-rating SGD epoch, against the number of factors."""
    import jax
    import jax.numpy as jnp

    from jaxcalc.data import movielens as ml
    from jaxcalc.models import recommender as rec
    from jaxcalc.models.recommender import funk_sgd

    train, _ = ml.load_train_test(args.train, args.test)
    U, n = train.num_users, len(train)
    ru, ri, r = jnp.asarray(train.users), jnp.asarray(train.items + U), jnp.asarray(train.ratings)
    mu = jnp.float32(train.ratings.mean())
    out = {}
    for k in PROFILE_FACTORS:
        table, _ = rec.pack(rec.init(jax.random.key(0), U, train.num_items, factors=k))
        for name, kw in (("gather", dict(slice_rows=False, unroll=1)), ("slices", dict(slice_rows=True, unroll=1)),
                         ("as fit runs it", dict(slice_rows=None, unroll=None))):
            exe = funk_sgd.sgd_epoch.lower(table, mu, ru, ri, r, 0.005, 0.02, 0.02, **kw).compile()
            t = exe(table + 0, mu, ru, ri, r, 0.005, 0.02, 0.02)
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                t = jax.block_until_ready(exe(t, mu, ru, ri, r, 0.005, 0.02, 0.02))
                ts.append(time.perf_counter() - t0)
            out.setdefault(name, {})[k] = float(np.median(ts)) / n
        out.setdefault("table_kb", {})[k] = table.size * 4 / 1024
    return out


def worker_sgd_profile_surprise(args) -> dict:
    from surprise import SVD

    trainset, _ = _surprise_data(args)
    out = {}
    for k in PROFILE_FACTORS:
        ts = []
        for seed in range(args.repeats):
            algo = SVD(n_factors=k, n_epochs=5, random_state=seed)
            t0 = time.perf_counter()
            algo.fit(trainset)
            ts.append((time.perf_counter() - t0) / 5)
        out[k] = float(np.median(ts)) / trainset.n_ratings
    return out


WORKERS = {"jax": worker_jax, "surprise": worker_surprise, "sgd-profile-jax": worker_sgd_profile_jax,
           "sgd-profile-surprise": worker_sgd_profile_surprise}


# --------------------------------------------------------------------------- driver


def spawn(kind: str, method: str, args, python: str | None = None) -> dict | None:
    cmd = [python or sys.executable, __file__, "--worker", kind, "--method", method, "--train", str(args.train),
           "--test", str(args.test), "--repeats", str(args.repeats), "--slow-repeats", str(args.slow_repeats)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"<!-- {kind} {method} failed: {out.stderr.strip().splitlines()[-1:]} -->", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def have_surprise(python: str) -> bool:
    return subprocess.run([python, "-c", "import surprise"], capture_output=True).returncode == 0


def fmt(ts) -> str:
    return f"{np.median(ts):.2f} s [{min(ts):.2f}–{max(ts):.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=sorted(WORKERS))
    p.add_argument("--method", default="default")
    p.add_argument("--movielens", type=Path, default=os.environ.get("JAXCALC_BENCH_MOVIELENS"),
                   help="folder with train.csv and test.csv (default: $JAXCALC_BENCH_MOVIELENS)")
    p.add_argument("--train", type=Path)
    p.add_argument("--test", type=Path)
    p.add_argument("--repeats", type=int, default=3, help="timed fits per process")
    p.add_argument("--slow-repeats", type=int, default=1, help="timed fits per process for SVD++ and KNNBaseline")
    p.add_argument("--processes", type=int, default=2, help="process runs per row, alternating")
    p.add_argument("--jax-rows", default=",".join(DEFAULT_JAX_ROWS),
                   help="comma-separated subset of: " + ", ".join(JAX_ROWS))
    p.add_argument("--surprise-rows", default=",".join(SURPRISE_ROWS),
                   help="comma-separated subset of: " + ", ".join(SURPRISE_ROWS))
    p.add_argument("--surprise-python", default=os.environ.get("JAXCALC_BENCH_SURPRISE_PYTHON", sys.executable),
                   help="python with scikit-surprise (default: $JAXCALC_BENCH_SURPRISE_PYTHON or this one)")
    p.add_argument("--sgd-profile", action="store_true", help="add the per-rating SGD time-per-step profile")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    tmp = tempfile.TemporaryDirectory()
    if args.train and args.test:
        what = f"{args.train} / {args.test}"
    elif args.movielens:
        args.train, args.test = Path(args.movielens) / "train.csv", Path(args.movielens) / "test.csv"
        what = f"{args.train} / {args.test}"
    else:
        args.train, args.test, what = make_data(Path(tmp.name), args.seed)
    surprise_ok = have_surprise(args.surprise_python)
    jax_rows = [m.strip() for m in args.jax_rows.split(",") if m.strip()]
    sur_rows = [m.strip() for m in args.surprise_rows.split(",") if m.strip()] if surprise_ok else []
    unknown = [m for m in jax_rows if m not in JAX_ROWS] + [m for m in sur_rows if m not in SURPRISE_ROWS]
    if unknown:
        sys.exit(f"unknown row(s) {', '.join(map(repr, unknown))}; jaxcalc rows: {', '.join(JAX_ROWS)}; "
                 f"Surprise rows: {', '.join(SURPRISE_ROWS)}")

    results: dict = {("jaxcalc", m): [] for m in jax_rows} | {("Surprise", m): [] for m in sur_rows}
    for _ in range(args.processes):  # alternate the sides, one process at a time
        for side, m in results:
            r = (spawn("jax", m, args) if side == "jaxcalc"
                 else spawn("surprise", m, args, python=args.surprise_python))
            if r:
                results[side, m].append(r)
    profile = None
    if args.sgd_profile:
        profile = {"jax": spawn("sgd-profile-jax", "-", args)}
        if surprise_ok:
            profile["surprise"] = spawn("sgd-profile-surprise", "-", args, python=args.surprise_python)

    device = next((r[0]["device"] for (side, _), r in results.items() if side == "jaxcalc" and r), "?")
    n = next((r[0]["n"] for r in results.values() if r), "?")
    version = next((r[0]["version"] for (side, _), r in results.items() if side == "Surprise" and r), None)
    print(f"\nRecommender fits on {n:,} training ratings ({what}); CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; "
          f"jaxcalc device: {device}; "
          f"Surprise {version or 'not importable (rows skipped)'}. {args.processes} processes x {args.repeats} "
          f"timed fits per row ({args.slow_repeats} for SVD++ and KNNBaseline), medians [min–max]; time = the "
          f"whole fit in a warm process.\n")
    tuned = results.get(("Surprise", "SVD tuned"))
    tuned_med = float(np.median([t for r in tuned for t in r["times"]])) if tuned else None
    print("| algorithm | library | test RMSE | whole fit | time / Surprise SVD tuned | notes |")
    print("|---|---|---|---|---|---|")
    for (side, m), rs in results.items():
        if not rs:
            print(f"| {m} | {side} | failed | – | – | see stderr |")
            continue
        ts = [t for r in rs for t in r["times"]]
        rmse = float(np.median([x for r in rs for x in r["rmses"]]))
        ratio = f"{np.median(ts) / tuned_med:.2f}" if tuned_med else "–"
        if side == "jaxcalc":
            s = rs[0]["settings"]
            desc = ", ".join(f"{k} {v}" for k, v in s.items() if k in ("method", "factors", "epochs", "burn_in",
                                                                         "noise_precision", "lr", "reg") and v)
            notes = (f"{JAX_ROWS[m]} ({desc}); first fit in a process {np.median([r['first_wall'] for r in rs]):.1f} s "
                     f"(compile {np.median([r['compile'] for r in rs]):.1f} s)")
        else:
            cls, kwargs, _ = SURPRISE_ROWS[m]
            notes = f"{cls}({', '.join(f'{k}={v!r}' for k, v in kwargs.items() if k != 'verbose')})"
        print(f"| {m} | {side} | {rmse:.4f} | {fmt(ts)} | {ratio} | {notes} |")
    if tuned_med is None:
        print("\n(no Surprise SVD tuned row: ratios skipped)")

    if profile and profile.get("jax"):
        pj, ps = profile["jax"], profile.get("surprise") or {}
        print("\nPer-rating SGD, one epoch, time per rating (ns) against factors k (table = (users + items) x (k+1) "
              "float32):\n")
        print("| k | table | jaxcalc, one 2-row gather | jaxcalc, two row slices | jaxcalc as fit runs it | "
              "Surprise SVD (Cython) | jaxcalc (fit) / Surprise |")
        print("|---|---|---|---|---|---|---|")
        for k in PROFILE_FACTORS:
            key = str(k)
            js = pj["as fit runs it"][key]
            sv = ps.get(key)
            print(f"| {k} | {pj['table_kb'][key]:.0f} KB | {pj['gather'][key] * 1e9:.0f} | "
                  f"{pj['slices'][key] * 1e9:.0f} | {js * 1e9:.0f} | {sv * 1e9:.0f} | {js / sv:.1f}x |" if sv else
                  f"| {k} | {pj['table_kb'][key]:.0f} KB | {pj['gather'][key] * 1e9:.0f} | "
                  f"{pj['slices'][key] * 1e9:.0f} | {js * 1e9:.0f} | – | – |")


if __name__ == "__main__":
    main()
