"""MovieLens ratings: loaders for the published formats, splits, and a synthetic generator.

Formats (https://grouplens.org/datasets/movielens/, each file's README):

- ml-100k ``u.data``, ``u1.base``/``u1.test`` ...: ``user<TAB>item<TAB>rating<TAB>timestamp``.
- ml-1m / ml-10m ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``.
- ml-latest / ml-20m / ml-25m ``ratings.csv``: ``userId,movieId,rating,timestamp`` after a header line.

Raw user/item ids are remapped to contiguous indices ``0..num_users-1`` / ``0..num_items-1``;
the raw ids are kept (``Ratings.user_ids[index] == raw id``). A user or item that the id maps
do not know (a test file naming someone absent from the training file) gets index ``-1``;
models predict for those from biases and the global mean.

A malformed line raises ``ValueError`` naming the file and the line number; a rating outside
the scale raises ``ValueError`` too. Parsing takes numpy's C reader first and only re-reads
line by line to say where the problem is.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

__all__ = [
    "MOVIELENS_SCALE",
    "Ratings",
    "SyntheticRatings",
    "detect_format",
    "kfold_splits",
    "load_item_titles",
    "load_ratings",
    "load_train_test",
    "per_user_split",
    "random_split",
    "synthetic_ratings",
]

MOVIELENS_SCALE = (0.5, 5.0)  # every MovieLens release rates within [0.5, 5] (half stars from ml-10m on)

_FORMATS = {
    "tab": ("\t", "user<TAB>item<TAB>rating[<TAB>timestamp]"),
    "dat": ("::", "user::item::rating[::timestamp]"),
    "csv": (",", "user,item,rating[,timestamp] (after a header line)"),
}


@dataclasses.dataclass(frozen=True)
class Ratings:
    """A set of ratings over indexed users and items.

    Attributes:
      users: ``(n,) int32`` user indices in ``[0, num_users)``, or ``-1`` for an unknown user.
      items: ``(n,) int32`` item indices in ``[0, num_items)``, or ``-1`` for an unknown item.
      ratings: ``(n,) float32``.
      user_ids: ``(num_users,) int64`` raw id of each user index.
      item_ids: ``(num_items,) int64`` raw id of each item index.
      scale: ``(low, high)`` of the rating scale.
      source: where the ratings came from (a path, or "synthetic").
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    scale: tuple = MOVIELENS_SCALE
    source: str = ""

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    def __len__(self) -> int:
        return int(self.ratings.shape[0])

    def subset(self, index) -> Ratings:
        """The ratings at ``index`` (an int array or boolean mask), with the same id maps."""
        return dataclasses.replace(
            self, users=self.users[index], items=self.items[index], ratings=self.ratings[index]
        )

    def user_index(self, raw_id) -> int:
        """Index of a raw user id; ``KeyError`` naming it when absent."""
        return _lookup(self.user_ids, raw_id, "user")

    def item_index(self, raw_id) -> int:
        return _lookup(self.item_ids, raw_id, "item")

    def as_batch(self) -> dict:
        """``{"user", "item", "rating"}`` arrays, the batch layout the models take."""
        return {"user": self.users, "item": self.items, "rating": self.ratings}


def _lookup(ids: np.ndarray, raw_id, what: str) -> int:
    hits = np.flatnonzero(ids == np.int64(raw_id))
    if hits.size == 0:
        raise KeyError(f"{what} id {raw_id} does not occur in the ratings")
    return int(hits[0])


# --------------------------------------------------------------------------- parsing


def detect_format(path: Path | str, first_line: str | None = None) -> str:
    """``"tab"``, ``"dat"`` or ``"csv"`` from the file name, else from its first line."""
    path = Path(path)
    if path.suffix == ".csv":
        return "csv"
    if path.suffix == ".dat":
        return "dat"
    if first_line is None:
        with open(path, encoding="latin-1") as f:
            first_line = f.readline()
    if "::" in first_line:
        return "dat"
    if "\t" in first_line:
        return "tab"
    if "," in first_line:
        return "csv"
    raise ValueError(
        f"{path}:1: cannot tell the ratings format from {first_line.strip()!r}; expected one of "
        + "; ".join(desc for _, desc in _FORMATS.values())
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parse_raw(path: Path, fmt: str | None, scale) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw ``(user_ids int64, item_ids int64, ratings float32)`` of one ratings file."""
    if not path.exists():
        raise FileNotFoundError(f"ratings file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the ratings file (u.data, ratings.dat, ratings.csv)")
    text = path.read_text(encoding="latin-1")
    first = text.split("\n", 1)[0]
    fmt = fmt or detect_format(path, first)
    if fmt not in _FORMATS:
        raise ValueError(f"unknown ratings format {fmt!r}; valid: {', '.join(_FORMATS)}")
    sep, _ = _FORMATS[fmt]
    skip = 0
    if fmt == "csv" and first and not _is_number(first.split(",", 1)[0].strip()):
        skip = 1  # the header line
    if fmt == "dat":
        text = text.replace("::", "\t")
        sep = "\t"
    low, high = scale
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=sep, usecols=(0, 1, 2), skiprows=skip,
                           dtype=np.float64, ndmin=2, comments=None)
        users, items, ratings = table[:, 0], table[:, 1], table[:, 2]
        ok = (
            table.shape[0] > 0
            and np.all(np.isfinite(table))
            and np.all(users == np.round(users))
            and np.all(items == np.round(items))
            and np.all((ratings >= low) & (ratings <= high))
        )
    except ValueError:
        ok = False
    if not ok:  # re-read line by line to name the first bad line
        users, items, ratings = _parse_slow(path, text, fmt, sep, skip, scale)
    return users.astype(np.int64), items.astype(np.int64), ratings.astype(np.float32)


def _parse_slow(path: Path, text: str, fmt: str, sep: str, skip: int, scale):
    expected = _FORMATS[fmt][1]
    low, high = scale
    users, items, ratings = [], [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if lineno <= skip or not line.strip():
            continue
        fields = line.rstrip("\r").split(sep)
        where = f"{path}:{lineno}"
        if len(fields) < 3:
            raise ValueError(f"{where}: malformed line {line!r}: expected {expected}")
        try:
            u, i = int(fields[0]), int(fields[1])
            r = float(fields[2])
        except ValueError:
            raise ValueError(f"{where}: malformed line {line!r}: expected {expected} with integer "
                             f"ids and a numeric rating") from None
        if not np.isfinite(r) or not (low <= r <= high):
            raise ValueError(f"{where}: rating {fields[2].strip()} is outside the rating scale "
                             f"[{low:g}, {high:g}]")
        users.append(u)
        items.append(i)
        ratings.append(r)
    if not ratings:
        raise ValueError(f"{path}: no ratings found")
    return np.array(users), np.array(items), np.array(ratings)


def _index(raw: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Indices of ``raw`` ids in the sorted id array ``known``; ``-1`` where absent."""
    pos = np.searchsorted(known, raw)
    pos = np.minimum(pos, max(known.shape[0] - 1, 0))
    found = known[pos] == raw if known.size else np.zeros(raw.shape, bool)
    return np.where(found, pos, -1).astype(np.int32)


def load_ratings(path: Path | str, *, fmt: str | None = None, scale=MOVIELENS_SCALE) -> Ratings:
    """Read a MovieLens ratings file (format from its name or first line).

    Args:
      path: ``u.data``/``u1.base``, ``ratings.dat`` or ``ratings.csv``.
      fmt: force ``"tab"``, ``"dat"`` or ``"csv"``.
      scale: ``(low, high)``; a rating outside it is an error.

    Returns:
      :class:`Ratings` with ids remapped to contiguous indices (sorted raw ids).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a malformed line or out-of-scale rating, naming ``path:line``.
    """
    path = Path(path)
    u, i, r = _parse_raw(path, fmt, scale)
    user_ids, users = np.unique(u, return_inverse=True)
    item_ids, items = np.unique(i, return_inverse=True)
    return Ratings(users.astype(np.int32).reshape(-1), items.astype(np.int32).reshape(-1), r,
                   user_ids, item_ids, tuple(scale), str(path))


def load_train_test(train_path, test_path, *, fmt: str | None = None, scale=MOVIELENS_SCALE):
    """Read a given train/test pair (e.g. ml-100k's ``u1.base`` / ``u1.test``).

    The id maps come from the training file; test users or items absent from it get index
    ``-1`` (models fall back to biases and the global mean for them).

    Returns:
      ``(train, test)`` :class:`Ratings` sharing ``user_ids`` and ``item_ids``.
    """
    train = load_ratings(train_path, fmt=fmt, scale=scale)
    u, i, r = _parse_raw(Path(test_path), fmt, scale)
    test = Ratings(_index(u, train.user_ids), _index(i, train.item_ids), r, train.user_ids,
                   train.item_ids, tuple(scale), str(test_path))
    return train, test


def load_item_titles(ratings_path: Path | str) -> dict[int, str]:
    """Titles by raw item id from an item file next to the ratings, or ``{}`` when none.

    Looks for ``u.item`` (ml-100k: ``id|title|...``, latin-1), ``movies.dat``
    (ml-1m/10m: ``id::title::genres``) and ``movies.csv`` (``movieId,title,genres``, quoted).
    """
    folder = Path(ratings_path).parent
    titles: dict[int, str] = {}
    if (folder / "u.item").exists():
        with open(folder / "u.item", encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\n").split("|")
                if len(parts) >= 2 and parts[0].strip().isdigit():
                    titles[int(parts[0])] = parts[1]
    elif (folder / "movies.dat").exists():
        with open(folder / "movies.dat", encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\n").split("::")
                if len(parts) >= 2 and parts[0].strip().isdigit():
                    titles[int(parts[0])] = parts[1]
    elif (folder / "movies.csv").exists():
        with open(folder / "movies.csv", encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                if len(row) >= 2 and row[0].strip().isdigit():
                    titles[int(row[0])] = row[1]
    return titles


# --------------------------------------------------------------------------- splits


def _np_rng(key) -> np.random.Generator:
    """A numpy generator seeded by a ``jax.random.key`` (same key, same stream): index
    shuffles and sampling without replacement are host-side work, and this keeps them
    explicit in the key without compiling a JAX program per array shape."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def random_split(data: Ratings, *, test_fraction: float = 0.2, key, return_index: bool = False):
    """Seeded random split of the ratings into ``(train, test)``.

    With ``return_index``, also the ``(train_index, test_index)`` int arrays into ``data``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(data)
    perm = _np_rng(key).permutation(n)
    n_test = max(1, round(test_fraction * n))
    tr, te = np.sort(perm[n_test:]), np.sort(perm[:n_test])
    out = (data.subset(tr), data.subset(te))
    return (*out, tr, te) if return_index else out


def per_user_split(data: Ratings, *, test_fraction: float = 0.2, key, return_index: bool = False):
    """Hold out ``test_fraction`` of each user's ratings (rounded down, at least one rating stays
    in training), chosen at random: every test user is seen in training.

    With ``return_index``, also the ``(train_index, test_index)`` int arrays into ``data``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(data)
    noise = _np_rng(key).random(n)
    order = np.lexsort((noise, data.users))  # by user, random within user
    users_sorted = data.users[order]
    starts = np.searchsorted(users_sorted, users_sorted, side="left")
    rank = np.arange(n) - starts
    counts = np.bincount(data.users[data.users >= 0], minlength=data.num_users)
    n_test = np.floor(test_fraction * counts[np.maximum(users_sorted, 0)]).astype(np.int64)
    n_test = np.minimum(n_test, counts[np.maximum(users_sorted, 0)] - 1)
    n_test[users_sorted < 0] = 0
    is_test = np.zeros(n, bool)
    is_test[order] = rank < n_test
    tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    out = (data.subset(tr), data.subset(te))
    return (*out, tr, te) if return_index else out


def kfold_splits(data: Ratings, *, folds: int, key, return_index: bool = False) -> Iterator[tuple]:
    """``folds`` disjoint random test sets covering all ratings; yields ``(train, test)``
    (with ``return_index``, also ``(train_index, test_index)``)."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if folds > len(data):
        raise ValueError(f"folds={folds} exceeds the number of ratings ({len(data)})")
    perm = _np_rng(key).permutation(len(data))
    for chunk in np.array_split(perm, folds):
        mask = np.zeros(len(data), bool)
        mask[chunk] = True
        out = (data.subset(~mask), data.subset(mask))
        yield (*out, np.flatnonzero(~mask), np.flatnonzero(mask)) if return_index else out


# --------------------------------------------------------------------------- synthetic data


@dataclasses.dataclass(frozen=True)
class SyntheticRatings:
    """Synthetic ratings and the ground truth that generated them.

    Attributes:
      data: the observed :class:`Ratings` (integers on the 1..5 scale by default).
      expected: ``(n,) float32`` E[rating | truth] for each observed rating: the Bayes-optimal
        prediction. ``rmse(expected, ratings)`` on a test set is the noise floor no model can
        beat in expectation.
      truth: ``(n,) float32`` the latent ``μ + b_u + b_i + p_u·q_i`` before noise and rounding.
      params: the generating ``{"mu", "user_bias", "item_bias", "user_factors", "item_factors"}``.
    """

    data: Ratings
    expected: np.ndarray
    truth: np.ndarray
    params: dict


def synthetic_ratings(key, *, num_users: int = 943, num_items: int = 1682, rank: int = 2,
                      density: float = 0.063, noise: float = 0.9, mean: float = 3.5,
                      user_bias_std: float = 0.35, item_bias_std: float = 0.5,
                      factor_std: float = 0.5, min_per_user: int = 20, scale=(1, 5),
                      integer: bool = True) -> SyntheticRatings:
    """MovieLens-like ratings from a known low-rank model.

    The latent rating is ``μ + b_u + b_i + p_u·q_i`` with ``b_u ~ N(0, user_bias_std²)``,
    ``b_i ~ N(0, item_bias_std²)``, ``p_u, q_i ~ N(0, factor_std²/√rank · I)`` (so ``p·q`` has
    standard deviation ``factor_std²``); the observed rating adds ``N(0, noise²)``, then is
    rounded to an integer (when ``integer``) and clipped to ``scale``. Which entries are
    observed follows MovieLens's skew: user activity is log-normal (at least ``min_per_user``
    ratings each, as ml-100k guarantees 20), item popularity is Zipf-like, total count
    ``density · num_users · num_items`` (ml-100k: 100,000 / (943·1682) = 6.3%).

    Args:
      key: ``jax.random.key``.

    Returns:
      :class:`SyntheticRatings`; raw ids are ``1..num_users`` and ``1..num_items`` as in ml-100k.
    """
    for name, v in (("num_users", num_users), ("num_items", num_items), ("rank", rank)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    min_per_user = int(min(min_per_user, num_items))
    rng = _np_rng(key)
    bu = user_bias_std * rng.standard_normal(num_users)
    bi = item_bias_std * rng.standard_normal(num_items)
    s = factor_std / rank ** 0.25
    P = s * rng.standard_normal((num_users, rank))
    Q = s * rng.standard_normal((num_items, rank))

    # How many ratings each user gives: log-normal activity scaled to the target total.
    total = round(density * num_users * num_items)
    act = np.exp(rng.standard_normal(num_users))
    extra = max(total - min_per_user * num_users, 0)
    counts = min_per_user + np.floor(extra * act / act.sum()).astype(np.int64)
    counts = np.minimum(counts, num_items)
    # Which items: Gumbel top-k on log-popularity (Zipf-like, exponent 0.9) = sampling without
    # replacement in proportion to popularity.
    log_pop = -0.9 * np.log(rng.permutation(num_items) + 1.0)
    g = log_pop[None, :] + rng.gumbel(size=(num_users, num_items))
    order = np.argsort(-g, axis=1)
    take = np.arange(num_items)[None, :] < counts[:, None]
    users = np.broadcast_to(np.arange(num_users)[:, None], order.shape)[take].astype(np.int32)
    items = order[take].astype(np.int32)

    latent = mean + bu[users] + bi[items] + np.sum(P[users] * Q[items], axis=1)
    observed = latent + noise * rng.standard_normal(latent.shape)
    low, high = float(scale[0]), float(scale[1])
    if integer:
        observed = np.round(observed)
    observed = np.clip(observed, low, high)
    expected = _expected_rating(latent, noise, low, high, integer)
    data = Ratings(users, items, observed.astype(np.float32),
                   np.arange(1, num_users + 1, dtype=np.int64), np.arange(1, num_items + 1, dtype=np.int64),
                   (low, high), "synthetic")
    params = {"mu": np.float32(mean), "user_bias": bu.astype(np.float32),
              "item_bias": bi.astype(np.float32), "user_factors": P.astype(np.float32),
              "item_factors": Q.astype(np.float32)}
    return SyntheticRatings(data, expected.astype(np.float32), np.asarray(latent, np.float32), params)


def _expected_rating(latent: np.ndarray, noise: float, low: float, high: float, integer: bool):
    """E[clip(round(latent + ε))] with ε ~ N(0, noise²), in closed form via the normal CDF."""
    from scipy.special import ndtr

    if noise == 0:
        out = np.round(latent) if integer else latent
        return np.clip(out, low, high)
    if integer:
        # P(rating >= k) = P(latent + ε >= k − ½) for k = low+1..high; E = low + Σ_k P(rating >= k).
        ks = np.arange(low + 1, high + 1)
        return low + ndtr((latent[:, None] - (ks[None, :] - 0.5)) / noise).sum(axis=1)
    # Continuous clipped normal: E[clip(x)] for x ~ N(m, σ²).
    from scipy.stats import norm

    a, b = (low - latent) / noise, (high - latent) / noise
    inside = latent * (ndtr(b) - ndtr(a)) + noise * (norm.pdf(a) - norm.pdf(b))
    return low * ndtr(a) + inside + high * (1 - ndtr(b))
