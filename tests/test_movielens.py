"""MovieLens loaders (each published format, each malformed case), splits, synthetic data."""
import jax
import numpy as np
import pytest

from jaxcalc.data import movielens as ml

# Lines in the published layouts (ml-100k README, ml-1m README, ml-latest README).
U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t377\t4\t881251111\n"
RATINGS_DAT = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
RATINGS_CSV = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n6,3,0.5,845553522\n"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="latin-1")
    return p


def test_u_data_tab_format(tmp_path):
    r = ml.load_ratings(write(tmp_path, "u.data", U_DATA))
    assert len(r) == 4 and r.num_users == 3 and r.num_items == 3
    np.testing.assert_array_equal(r.user_ids, [22, 186, 196])  # sorted raw ids
    np.testing.assert_array_equal(r.item_ids, [242, 302, 377])
    # mapping kept: index -> raw id reproduces every line
    np.testing.assert_array_equal(r.user_ids[r.users], [196, 186, 22, 196])
    np.testing.assert_array_equal(r.item_ids[r.items], [242, 302, 377, 377])
    np.testing.assert_array_equal(r.ratings, [3, 3, 1, 4])
    assert r.users.dtype == np.int32 and r.ratings.dtype == np.float32
    assert r.user_index(196) == 2
    with pytest.raises(KeyError, match="user id 5"):
        r.user_index(5)


def test_ratings_dat_double_colon_format(tmp_path):
    r = ml.load_ratings(write(tmp_path, "ratings.dat", RATINGS_DAT))
    np.testing.assert_array_equal(r.user_ids[r.users], [1, 1, 2])
    np.testing.assert_array_equal(r.item_ids[r.items], [1193, 661, 1193])
    np.testing.assert_array_equal(r.ratings, [5, 3, 4])


def test_ratings_csv_with_header_and_half_stars(tmp_path):
    r = ml.load_ratings(write(tmp_path, "ratings.csv", RATINGS_CSV))
    np.testing.assert_array_equal(r.user_ids[r.users], [1, 1, 6])
    np.testing.assert_array_equal(r.item_ids[r.items], [1, 3, 3])
    np.testing.assert_allclose(r.ratings, [4.0, 4.5, 0.5])


def test_format_detected_from_content_without_suffix(tmp_path):
    assert ml.detect_format(write(tmp_path, "u1.base", U_DATA)) == "tab"
    assert ml.detect_format(write(tmp_path, "r1", RATINGS_DAT)) == "dat"
    assert ml.detect_format(write(tmp_path, "r2", RATINGS_CSV)) == "csv"
    with pytest.raises(ValueError, match=r"r3:1: cannot tell"):
        ml.detect_format(write(tmp_path, "r3", "1 2 3 4\n"))


@pytest.mark.parametrize("name,text,line,what", [
    ("u.data", U_DATA + "5\t6\n", 5, "malformed line"),                        # too few fields
    ("u.data", "1\t2\t3\t4\nx\t2\t3\t4\n", 2, "integer ids"),                  # non-numeric id
    ("u.data", "1\t2\tgood\t4\n", 1, "numeric rating"),                       # non-numeric rating
    ("u.data", "1\t2\t3\t4\n1\t2.5\t3\t4\n", 2, "integer ids"),               # fractional id
    ("ratings.dat", RATINGS_DAT + "3::4\n", 4, "malformed line"),
    ("ratings.dat", "1:2:3:4\n1::2::3::4\n", 1, "malformed line"),            # single colons
    ("ratings.csv", RATINGS_CSV + "7,8\n", 5, "malformed line"),
    ("ratings.csv", RATINGS_CSV + "7,8,nan,1\n", 5, "outside the rating scale"),
    ("u.data", U_DATA + "1\t2\t6\t4\n", 5, "outside the rating scale"),       # 6 > 5
    ("ratings.csv", RATINGS_CSV + "7,8,0,1\n", 5, "outside the rating scale"),  # 0 < 0.5
])
def test_malformed_line_names_file_and_line(tmp_path, name, text, line, what):
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError, match=rf"{name}:{line}: .*{what}"):
        ml.load_ratings(path)


def test_custom_scale_and_missing_or_empty_file(tmp_path):
    path = write(tmp_path, "u.data", U_DATA)
    with pytest.raises(ValueError, match=r"u.data:3: rating 1 is outside the rating scale \[2, 5\]"):
        ml.load_ratings(path, scale=(2, 5))
    with pytest.raises(FileNotFoundError, match=r"nope\.data"):
        ml.load_ratings(tmp_path / "nope.data")
    with pytest.raises(ValueError, match="no ratings"):
        ml.load_ratings(write(tmp_path, "empty.data", "\t\n"), fmt="tab")


def test_train_test_files_share_ids_and_mark_unseen(tmp_path):
    base = write(tmp_path, "u1.base", U_DATA)
    test = write(tmp_path, "u1.test", "196\t302\t5\t1\n999\t242\t2\t1\n22\t1000\t3\t1\n")
    tr, te = ml.load_train_test(base, test)
    assert te.num_users == tr.num_users and te.num_items == tr.num_items
    np.testing.assert_array_equal(te.users, [2, -1, 0])  # user 999 unseen
    np.testing.assert_array_equal(te.items, [1, 0, -1])  # item 1000 unseen


def test_item_titles_next_to_ratings(tmp_path):
    (tmp_path / "a").mkdir()
    write(tmp_path / "a", "u.item", "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|GoldenEye (1995)|x\n")
    assert ml.load_item_titles(tmp_path / "a" / "u.data") == {1: "Toy Story (1995)", 2: "GoldenEye (1995)"}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Animation\n11,"American President, The (1995)",Comedy\n')
    assert ml.load_item_titles(tmp_path / "b" / "ratings.csv")[11] == "American President, The (1995)"
    assert ml.load_item_titles(tmp_path / "ratings.csv") == {}


@pytest.fixture(scope="module")
def synthetic():
    return ml.synthetic_ratings(jax.random.key(0), num_users=60, num_items=50, rank=2, density=0.2,
                                min_per_user=5)


def test_synthetic_shape_scale_density_and_determinism(synthetic):
    d = synthetic.data
    assert d.num_users == 60 and d.num_items == 50
    assert abs(len(d) - 0.2 * 60 * 50) <= 60  # floor() per user loses < 1 rating each
    assert set(np.unique(d.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.bincount(d.users, minlength=60).min() >= 5
    # no (user, item) pair twice
    assert np.unique(d.users.astype(np.int64) * 50 + d.items).size == len(d)
    again = ml.synthetic_ratings(jax.random.key(0), num_users=60, num_items=50, rank=2, density=0.2,
                                 min_per_user=5)
    np.testing.assert_array_equal(again.data.ratings, d.ratings)
    other = ml.synthetic_ratings(jax.random.key(1), num_users=60, num_items=50, rank=2, density=0.2,
                                 min_per_user=5)
    assert not np.array_equal(other.data.ratings, d.ratings)


def test_synthetic_expected_rating_is_the_conditional_mean(synthetic):
    # Monte Carlo check of the closed form E[clip(round(latent + eps))]
    rng = np.random.default_rng(0)
    latent = np.array([0.2, 2.7, 3.5, 5.6])
    draws = np.clip(np.round(latent[:, None] + 0.9 * rng.standard_normal((4, 200_000))), 1, 5)
    np.testing.assert_allclose(ml._expected_rating(latent, 0.9, 1, 5, True), draws.mean(1), atol=0.01)
    # and the Bayes predictor beats the clipped latent on the observed ratings
    d = synthetic.data
    floor = np.sqrt(np.mean((synthetic.expected - d.ratings) ** 2))
    assert floor < np.sqrt(np.mean((np.clip(synthetic.truth, 1, 5) - d.ratings) ** 2))


def test_random_split_is_a_seeded_partition(synthetic):
    d = synthetic.data
    tr, te, itr, ite = ml.random_split(d, test_fraction=0.25, key=jax.random.key(3), return_index=True)
    assert len(te) == round(0.25 * len(d)) and len(tr) + len(te) == len(d)
    assert np.intersect1d(itr, ite).size == 0
    np.testing.assert_array_equal(te.ratings, d.ratings[ite])
    _tr2, te2 = ml.random_split(d, test_fraction=0.25, key=jax.random.key(3))
    np.testing.assert_array_equal(te2.users, te.users)
    with pytest.raises(ValueError, match="test_fraction"):
        ml.random_split(d, test_fraction=1.0, key=jax.random.key(0))


def test_per_user_split_holds_out_a_fraction_of_each_user(synthetic):
    d = synthetic.data
    tr, te = ml.per_user_split(d, test_fraction=0.2, key=jax.random.key(4))
    n = np.bincount(d.users, minlength=d.num_users)
    n_te = np.bincount(te.users, minlength=d.num_users)
    np.testing.assert_array_equal(n_te, np.floor(0.2 * n))
    assert (np.bincount(tr.users, minlength=d.num_users) >= 1).all()
    assert len(tr) + len(te) == len(d)


def test_kfold_test_sets_are_disjoint_and_cover(synthetic):
    d = synthetic.data
    seen = []
    for tr, te, itr, ite in ml.kfold_splits(d, folds=4, key=jax.random.key(5), return_index=True):
        assert len(tr) + len(te) == len(d)
        np.testing.assert_array_equal(te.ratings, d.ratings[ite])
        np.testing.assert_array_equal(tr.users, d.users[itr])
        seen.append(te.users.astype(np.int64) * 50 + te.items)
    allkeys = np.concatenate(seen)
    assert allkeys.size == len(d) == np.unique(allkeys).size
    with pytest.raises(ValueError, match="folds"):
        next(ml.kfold_splits(d, folds=1, key=jax.random.key(0)))
