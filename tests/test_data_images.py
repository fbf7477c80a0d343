"""Image data loaders: CIFAR-10 (python + binary), image folders, digits; corrupt and hostile input."""
import os
import pickle
import pickletools

import numpy as np
import pytest
from PIL import Image

from jaxcalc.data import cifar
from jaxcalc.data.digits import load_digits_dataset, load_digits_images, stratified_split
from jaxcalc.data.images import load_image_folder, read_image
from jaxcalc.data.sources import detect_layout, load_image_dataset

N = 20  # images per fixture batch


def _batch(rng, n=N):
    return {b"batch_label": b"fixture", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def _write_python(folder, batches, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    for name, b in batches.items():
        (folder / name).write_bytes(pickle.dumps(b, protocol=protocol))


def _write_binary(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, b in batches.items():
        rec = np.concatenate([np.asarray(b[b"labels"], np.uint8)[:, None], b[b"data"]], axis=1)
        (folder / f"{name}.bin").write_bytes(rec.tobytes())


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return {"data_batch_1": _batch(rng), "data_batch_2": _batch(rng), "test_batch": _batch(rng)}


def _expected_nhwc(b):
    # The published layout: row = 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    data = b[b"data"]
    out = np.zeros((data.shape[0], 32, 32, 3), np.uint8)
    for ch in range(3):
        out[..., ch] = data[:, ch * 1024:(ch + 1) * 1024].reshape(-1, 32, 32)
    return out


def test_cifar_python_layout(tmp_path, batches):
    _write_python(tmp_path / "cifar-10-batches-py", batches)
    assert detect_layout(tmp_path) == ("cifar-python", tmp_path / "cifar-10-batches-py")
    ds = load_image_dataset(tmp_path)
    assert ds.x_train.shape == (2 * N, 32, 32, 3) and ds.x_test.shape == (N, 32, 32, 3)
    np.testing.assert_array_equal(ds.x_train[:N], _expected_nhwc(batches["data_batch_1"]))
    np.testing.assert_array_equal(ds.x_train[N:], _expected_nhwc(batches["data_batch_2"]))
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    # pixel (image 3, row 5, column 7, green) sits at 1024 + 5 * 32 + 7 of the flat row
    assert ds.x_test[3, 5, 7, 1] == batches["test_batch"][b"data"][3, 1024 + 5 * 32 + 7]
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10 and ds.max_value == 255


@pytest.mark.parametrize("protocol", [4, 5])
def test_cifar_python_newer_protocols(tmp_path, batches, protocol):
    _write_python(tmp_path, batches, protocol=protocol)
    ds = load_image_dataset(tmp_path)
    np.testing.assert_array_equal(ds.x_test, _expected_nhwc(batches["test_batch"]))


def test_cifar_python2_global_names(tmp_path, batches):
    # The published files were written by Python 2 + numpy 1: arrays refer to numpy.core.multiarray.
    raw = pickle.dumps(batches["test_batch"], protocol=2)
    legacy = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert legacy != raw and b"numpy.core.multiarray" in legacy
    (tmp_path / "test_batch").write_bytes(legacy)
    x, _y = cifar.read_python_batch(tmp_path / "test_batch")
    np.testing.assert_array_equal(x, _expected_nhwc(batches["test_batch"]))


def test_cifar_binary_layout_matches_python(tmp_path, batches):
    _write_binary(tmp_path / "bin", batches)
    _write_python(tmp_path / "py", batches)
    assert detect_layout(tmp_path / "bin")[0] == "cifar-binary"
    b, p = load_image_dataset(tmp_path / "bin"), load_image_dataset(tmp_path / "py")
    for f in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(b, f), getattr(p, f))


def test_env_var_selects_data(tmp_path, batches, monkeypatch):
    _write_binary(tmp_path, batches)
    monkeypatch.setenv("JAXCALC_DATA", str(tmp_path))
    assert load_image_dataset().x_train.shape == (2 * N, 32, 32, 3)
    monkeypatch.delenv("JAXCALC_DATA")
    assert load_image_dataset().name == "digits"


# ---- corrupt and missing files: errors name the file ---------------------------------------

def test_truncated_pickle(tmp_path, batches):
    _write_python(tmp_path, batches)
    path = tmp_path / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"data_batch_2: corrupt or truncated"):
        load_image_dataset(tmp_path)


def test_pickle_with_wrong_array_shape(tmp_path, batches):
    bad = {**batches["test_batch"], b"data": np.zeros((N, 100), np.uint8)}
    _write_python(tmp_path, {"data_batch_1": batches["data_batch_1"], "test_batch": bad})
    with pytest.raises(ValueError, match=r"test_batch: 'data' must be a uint8 array of shape \(n, 3072\)"):
        load_image_dataset(tmp_path)


def test_pickle_with_label_count_mismatch(tmp_path, batches):
    bad = {**batches["test_batch"], b"labels": [1, 2, 3]}
    _write_python(tmp_path, {"data_batch_1": batches["data_batch_1"], "test_batch": bad})
    with pytest.raises(ValueError, match=r"test_batch: 20 images but 'labels' has shape \(3,\)"):
        load_image_dataset(tmp_path)


def test_truncated_binary(tmp_path, batches):
    _write_binary(tmp_path, batches)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"data_batch_1\.bin: truncated or corrupt: 61450 bytes"):
        load_image_dataset(tmp_path)


def test_binary_bad_label(tmp_path, batches):
    _write_binary(tmp_path, batches)
    path = tmp_path / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[3073 * 4] = 17  # label byte of record 4
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"test_batch\.bin: corrupt: label 17 at record 4"):
        load_image_dataset(tmp_path)


def test_missing_files(tmp_path, batches):
    _write_python(tmp_path / "a", {"data_batch_1": batches["data_batch_1"]})
    with pytest.raises(FileNotFoundError, match=r"test_batch"):
        load_image_dataset(tmp_path / "a")
    _write_python(tmp_path / "b", {"data_batch_1": batches["data_batch_1"], "data_batch_3": batches["data_batch_2"],
                                   "test_batch": batches["test_batch"]})
    with pytest.raises(FileNotFoundError, match=r"missing .*data_batch_2"):
        load_image_dataset(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=r"data directory not found: .*nowhere"):
        load_image_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no known data layout"):
        load_image_dataset(tmp_path / "empty")


# ---- hostile pickles ------------------------------------------------------------------------

class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsPython:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload, refused", [(_RunsShell, r"(posix|nt)\.system"),
                                              (_RunsPython, r"(__builtin__|builtins)\.exec")])
def test_malicious_pickle_is_refused(tmp_path, batches, payload, refused):
    marker = tmp_path / "marker"
    evil = {**batches["test_batch"], b"labels": payload(marker)}
    raw = pickle.dumps(evil, protocol=2)
    assert any(op.name == "REDUCE" for op, _, _ in pickletools.genops(raw))
    _write_python(tmp_path, {"data_batch_1": batches["data_batch_1"]})
    (tmp_path / "test_batch").write_bytes(raw)
    with pytest.raises(ValueError, match=rf"test_batch: refused to load global {refused}"):
        load_image_dataset(tmp_path)
    assert not marker.exists()


def test_malicious_payload_is_live(tmp_path):
    # The exec payload above really runs under plain pickle.loads: the refusal is what stops it.
    marker = tmp_path / "live"
    pickle.loads(pickle.dumps(_RunsPython(marker), protocol=2))
    assert marker.read_text() == "pwned"


# ---- folder of images -----------------------------------------------------------------------

def _write_folder(root, rng, *, size=(6, 5), mode="RGB", classes=("dog", "cat", "bird"), per_class=3):
    arrays = {}
    for split in ("train", "test"):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (size[0], size[1], 3) if mode == "RGB" else size
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode).save(d / f"{i}.png")
                arrays[(split, cls, i)] = arr
    (root / "train" / classes[0] / "notes.txt").write_text("not an image")
    return arrays


def test_image_folder(tmp_path):
    arrays = _write_folder(tmp_path, np.random.default_rng(1))
    assert detect_layout(tmp_path) == ("folder", tmp_path)
    ds = load_image_dataset(tmp_path)
    assert ds.class_names == ("bird", "cat", "dog")  # sorted folder names give ids 0, 1, 2
    assert ds.x_train.shape == (9, 6, 5, 3) and ds.x_test.shape == (9, 6, 5, 3)
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(ds.x_train[3], arrays[("train", "cat", 0)])  # PNG is lossless
    np.testing.assert_array_equal(ds.x_test[8], arrays[("test", "dog", 2)])


def test_image_folder_grayscale(tmp_path):
    _write_folder(tmp_path, np.random.default_rng(2), mode="L", classes=("a", "b"), per_class=2)
    ds = load_image_folder(tmp_path)
    assert ds.image_shape == (6, 5, 1)


def test_image_folder_mixed_sizes(tmp_path):
    _write_folder(tmp_path, np.random.default_rng(3), classes=("a", "b"), per_class=2)
    Image.fromarray(np.zeros((7, 5, 3), np.uint8)).save(tmp_path / "test" / "b" / "odd.png")
    with pytest.raises(ValueError, match=r"test/b/odd\.png: image is 5x7 .* all images must have the same size"):
        load_image_folder(tmp_path)


def test_image_folder_corrupt_image(tmp_path):
    _write_folder(tmp_path, np.random.default_rng(4), classes=("a", "b"), per_class=2)
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"train/a/broken\.png: not a readable image"):
        load_image_folder(tmp_path)


def test_image_folder_missing_split_and_unknown_class(tmp_path):
    _write_folder(tmp_path / "x", np.random.default_rng(5), classes=("a",), per_class=1)
    (tmp_path / "x" / "test" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"\['zebra'\] have no counterpart"):
        load_image_folder(tmp_path / "x")
    (tmp_path / "y" / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"y/test is missing"):
        load_image_folder(tmp_path / "y")


def test_read_image_resizes_and_converts(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "a.jpg")
    img = read_image(tmp_path / "a.jpg", mode="L", size=(8, 8))
    assert img.shape == (8, 8, 1) and img.dtype == np.uint8
    assert abs(int(img[4, 4, 0]) - 200) <= 2  # JPEG of a flat colour stays (almost) flat


# ---- digits ---------------------------------------------------------------------------------

def test_digits_images():
    x, y = load_digits_images()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.uint8 and x.max() == 16  # sklearn: 1797 images, 0..16
    assert sorted(set(y.tolist())) == list(range(10))


def test_stratified_split():
    y = np.repeat(np.arange(3), [10, 20, 40])
    tr, te = stratified_split(y, test_fraction=0.25, seed=1)
    assert np.intersect1d(tr, te).size == 0 and np.union1d(tr, te).size == 70
    assert np.bincount(y[te]).tolist() == [2, 5, 10]  # round(0.25 * [10, 20, 40]) = [2 (2.5 -> 2, banker's), 5, 10]
    _tr2, te2 = stratified_split(y, test_fraction=0.25, seed=1)
    np.testing.assert_array_equal(te, te2)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(y, test_fraction=1.0)


def test_digits_dataset():
    ds = load_digits_dataset()
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 1797
    assert ds.image_shape == (8, 8, 1) and ds.max_value == 16 and ds.num_classes == 10


# ---- the data modules import one way: dataset <- loaders <- sources ------------------------

def _package_imports(path) -> set[str]:
    """Modules of jaxcalc.data that ``path`` imports anywhere (top level or inside functions)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxcalc.data"):
            if node.module == "jaxcalc.data":
                found |= {f"jaxcalc.data.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("jaxcalc.data.")}
    return found


def test_data_modules_import_without_cycles():
    """No import circle among jaxcalc/data's modules, counting imports inside functions too (the
    dispatcher once imported the CIFAR and digits loaders lazily while they imported its ImageDataset)."""
    import importlib
    import pathlib

    import jaxcalc.data

    folder = pathlib.Path(jaxcalc.data.__file__).parent
    graph = {f"jaxcalc.data.{p.stem}": _package_imports(p) for p in folder.glob("*.py") if p.stem != "__init__"}
    assert graph["jaxcalc.data.dataset"] == set()
    assert {"jaxcalc.data.cifar", "jaxcalc.data.digits", "jaxcalc.data.images"} <= graph["jaxcalc.data.sources"]
    for loader in ("cifar", "digits", "images"):
        assert graph[f"jaxcalc.data.{loader}"] == {"jaxcalc.data.dataset"}

    state: dict[str, str] = {}

    def visit(mod, trail):  # depth-first search; a module met again while on the trail is a cycle
        state[mod] = "open"
        for dep in sorted(graph.get(mod, ())):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*trail, mod, dep])}"
            if dep not in state:
                visit(dep, [*trail, mod])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])
    for mod in graph:  # and each imports
        importlib.import_module(mod)
    # the names callers use stay where they were
    from jaxcalc.data.dataset import ImageDataset
    from jaxcalc.data.images import ImageDataset as FromImages

    assert FromImages is ImageDataset and load_image_dataset.__module__ == "jaxcalc.data.sources"
