"""`jaxcalc run cnn`: smoke run on a tiny image folder, predict, and SIGKILL + resume bitwise."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import cnn
from jaxcalc import cli
from jaxcalc.checkpoint import Checkpointer
from jaxcalc.models.cnn import CNNSpec, abstract_params

CLASSES = ("bars", "blank", "cross")
BATCH = 8


def _make_image(rng, cls):
    img = rng.integers(0, 40, (8, 8), dtype=np.uint8)
    if cls == "bars":
        img[:, 2] = img[:, 5] = 230
    elif cls == "cross":
        img[3:5, :] = img[:, 3:5] = 230
    return img


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_make_image(rng, cls), "L").save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def smoke_run(image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cnn"
    rc = cli.main(["run", "cnn", "--data-dir", str(image_dir), "--epochs", "2", "--batch-size", str(BATCH),
                   "--lr", "0.01", "--out", str(out), "--no-cache"])
    assert rc == 0
    return out


def test_smoke_run_writes_results(smoke_run):
    summary = json.loads((smoke_run / "summary.json").read_text())
    for key in ("dataset", "epochs", "test_accuracy", "train_images_per_second", "param_count"):
        assert key in summary
    assert summary["epochs"] == 2 and summary["dataset"].startswith("folder:")
    spec = CNNSpec(height=8, width=8, channels=1, num_classes=3)
    assert summary["param_count"] == spec.param_count == 320 + 18_496 + 195  # 64*3 + 3 = 195
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["train_images_per_second"] > 0
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["step"] == 2 * (48 // BATCH)
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(rows[0])
    for name in ("loss", "accuracy", "confusion_matrix", "test_predictions"):
        assert (smoke_run / f"{name}.png").stat().st_size > 1000
    with Checkpointer(smoke_run / "checkpoints") as ck:
        assert ck.steps() == [1, 2]
        meta = ck.read_meta()
    assert meta["config"]["batch_size"] == BATCH and meta["model"]["class_names"] == list(CLASSES)


def test_predict_command(smoke_run, image_dir, capsys, tmp_path):
    files = [image_dir / "test" / "cross" / "0.png", image_dir / "test" / "bars" / "1.png"]
    rgb = tmp_path / "rgb.jpg"  # a colour JPEG of another size: converted and resized
    Image.fromarray(np.zeros((20, 12, 3), np.uint8)).save(rgb)
    assert cnn.predict_command(["--checkpoint", str(smoke_run), *map(str, files), str(rgb)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, f in zip(lines, files + [rgb]):
        name, rest = line.split(": ", 1)
        assert name == str(f)
        cls, prob = rest.rsplit(" (", 1)
        assert cls in CLASSES and 0.0 < float(prob.rstrip(")")) <= 1.0
    assert cnn.predict_command(["--checkpoint", str(smoke_run), str(tmp_path / "missing.png")]) == 2
    assert "image file not found" in capsys.readouterr().err
    assert cnn.predict_command(["--checkpoint", str(tmp_path / "nothing"), str(rgb)]) == 2


def test_config_and_rerun_errors(smoke_run, image_dir):
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        cnn.Config(epochs=0)
    with pytest.raises(ValueError, match="lr_schedule must be"):
        cnn.Config(lr_schedule="linear")
    with pytest.raises(ValueError, match="devices must be 1"):
        cnn.Config(devices=2)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        cnn.run(cnn.Config(data_dir=str(image_dir), epochs=2, batch_size=BATCH, lr=0.01), smoke_run)
    with pytest.raises(ValueError, match="cannot resume: checkpoint has batch_size=8"):
        cnn.run(cnn.Config(data_dir=str(image_dir), epochs=2, batch_size=4, lr=0.01, resume=True), smoke_run)


def _final_params(out: Path, epoch: int):
    _, abstract = abstract_params(CNNSpec(height=8, width=8, channels=1, num_classes=3))
    with Checkpointer(out / "checkpoints") as ck:
        assert ck.latest() == epoch
        return ck.restore(epoch, {"params": abstract})[0]["params"]


def test_sigkill_then_resume_is_bitwise_identical(image_dir, tmp_path):
    epochs = 5
    config = dict(data_dir=str(image_dir), epochs=epochs, batch_size=BATCH, lr=0.01, seed=3)
    killed = tmp_path / "killed"
    code = (f"from experiments import cnn; cnn.run(cnn.Config(**{config!r}), {str(killed)!r})")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(cnn.__file__).parents[1], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    first = killed / "checkpoints" / "1"
    deadline = time.monotonic() + 120
    try:
        while not first.is_dir():
            assert proc.poll() is None, f"training subprocess ended early: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
            time.sleep(0.005)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with Checkpointer(killed / "checkpoints") as ck:
        interrupted_at = ck.latest()
    assert 1 <= interrupted_at < epochs

    resumed = cnn.run(cnn.Config(**config, resume=True), killed)
    assert resumed["resumed_from_epoch"] == interrupted_at
    reference = cnn.run(cnn.Config(**config), tmp_path / "reference")

    a, b = _final_params(killed, epochs), _final_params(tmp_path / "reference", epochs)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise, not allclose
    rows = [(killed / "metrics.jsonl").read_text(), (tmp_path / "reference" / "metrics.jsonl").read_text()]
    assert rows[0] == rows[1] and len(rows[0].splitlines()) == epochs
    assert resumed["test_accuracy"] == reference["test_accuracy"]
