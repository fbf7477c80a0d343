"""`jaxcalc run cnn`: smoke run on a tiny image folder, predict, SIGKILL + resume bitwise, 8 devices vs 1,
--augment, resume and predict past damaged checkpoints."""
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from _ckpt_damage import DAMAGES
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
    for line, f in zip(lines, [*files, rgb], strict=True):
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
    with pytest.raises(ValueError, match="devices must be >= 1"):
        cnn.Config(devices=0)
    with pytest.raises(ValueError, match="batch_size 12 is not a multiple of devices=8"):
        cnn.Config(batch_size=12, devices=8)
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
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise, not allclose
    rows = [(killed / "metrics.jsonl").read_text(), (tmp_path / "reference" / "metrics.jsonl").read_text()]
    assert rows[0] == rows[1] and len(rows[0].splitlines()) == epochs
    assert resumed["test_accuracy"] == reference["test_accuracy"]


def test_too_many_devices_exits_2(image_dir, tmp_path, capsys):
    n = len(jax.devices()) + 1  # one more than this process has
    rc = cli.main(["run", "cnn", "--data-dir", str(image_dir), "--devices", str(n), "--batch-size", str(2 * n),
                   "--out", str(tmp_path / "out"), "--no-cache"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"asked for {n} devices" in err and len(err.strip().splitlines()) == 1


_DEVICES_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
from experiments import cnn
out, data_dir, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
summary = cnn.run(cnn.Config(data_dir=data_dir, epochs=2, batch_size=batch, lr=0.01, devices=8), out)
(train_chunk, _), = cnn._COMPILED.values()
print(json.dumps({"n_devices": len(jax.devices()), "summary": summary,
                  "all_reduce": "all-reduce" in train_chunk.as_text()}))
"""


def test_eight_devices_match_one(smoke_run, image_dir, tmp_path):
    """The smoke run's config data-parallel over 8 simulated CPU devices (one image each) = the
    1-device smoke run, to float32 rounding (not bitwise: the gradient is summed in another order)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = os.environ.get("JAXCALC_TEST_XLA_FLAGS", "")
    out = tmp_path / "d8"
    proc = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, str(out), str(image_dir), str(BATCH)],
                          cwd=Path(cnn.__file__).parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n_devices"] == 8
    assert res["all_reduce"]  # the program really is data-parallel: XLA inserted the gradient all-reduce
    s8, s1 = res["summary"], json.loads((smoke_run / "summary.json").read_text())
    assert (s8["devices"], s1["devices"]) == (8, 1)
    # one float32 gradient per parameter: 4 bytes x 19,011 (param_count, checked in the smoke test)
    assert s8["allreduce_bytes_per_step"] == s1["allreduce_bytes_per_step"] == 4 * s1["param_count"]
    assert abs(s8["test_accuracy"] - s1["test_accuracy"]) <= 1.0 / s1["test_images"] + 1e-9  # one image at most
    np.testing.assert_allclose(s8["test_loss"], s1["test_loss"], rtol=1e-4)
    rows8, rows1 = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                    for d in (out, smoke_run))
    assert len(rows8) == len(rows1) == 2
    for r8, r1 in zip(rows8, rows1, strict=True):
        np.testing.assert_allclose([r8["train_loss"], r8["test_loss"]], [r1["train_loss"], r1["test_loss"]],
                                   rtol=1e-4)
    # the 8-device checkpoint restores in this 1-device process and matches to float32 rounding
    for a, b in zip(jax.tree.leaves(_final_params(out, 2)), jax.tree.leaves(_final_params(smoke_run, 2)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


# ---- --augment, and resume / predict past damaged checkpoints --------------------------------

AUGMENTED = {"epochs": 2, "batch_size": BATCH, "lr": 0.01, "augment": True}  # the smoke run's recipe + --augment


@pytest.fixture(scope="module")
def augmented_run(image_dir, tmp_path_factory):
    """The smoke run's config with ``augment=True``, started with ``resume=True`` in an empty folder:
    ``(run folder, summary, stderr)``."""
    out = tmp_path_factory.mktemp("aug") / "cnn"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        summary = cnn.run(cnn.Config(data_dir=str(image_dir), resume=True, **AUGMENTED), out)
    return out, summary, err.getvalue()


def test_resume_with_nothing_to_resume_says_so(augmented_run):
    out, summary, err = augmented_run
    lines = err.strip().splitlines()
    assert lines[0] == (f"--resume: no complete checkpoint in {out / 'checkpoints'}; nothing to resume, "
                        f"starting from the beginning")
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 1/2", "epoch 2/2"]
    assert summary["resumed_from_epoch"] is None and summary["epochs"] == 2


def test_augment_runs_inside_the_compiled_step(augmented_run, smoke_run, image_dir):
    """Same recipe and seed as the smoke run: shuffling and dropout keys are the same (the epoch
    key's 3-way split starts with its 2-way split), so the different parameters come from the
    augmentation alone."""
    k = jax.random.key(0)
    np.testing.assert_array_equal(jax.random.key_data(jax.random.split(k, 3)[:2]),
                                  jax.random.key_data(jax.random.split(k, 2)))
    aug, plain = _final_params(augmented_run[0], 2), _final_params(smoke_run, 2)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(aug), jax.tree.leaves(plain), strict=True))
    with Checkpointer(augmented_run[0] / "checkpoints") as ck:
        assert ck.read_meta()["config"]["augment"] is True
    with pytest.raises(ValueError, match="cannot resume: checkpoint has augment=True but this run has augment=False"):
        cnn.run(cnn.Config(data_dir=str(image_dir), resume=True, **dict(AUGMENTED, augment=False)),
                augmented_run[0])


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_resume_walks_past_damage_to_the_same_params(kind, augmented_run, image_dir, tmp_path, capfd):
    """Checkpoint 2 (the last) damaged: resume names it in one line, sets it aside, trains epoch 2
    again from checkpoint 1 and ends bit for bit where the uninterrupted (augmented) run ended."""
    reference = augmented_run[0]
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    damage, reason = DAMAGES[kind]
    damage(run / "checkpoints", 2)
    capfd.readouterr()
    summary = cnn.run(cnn.Config(data_dir=str(image_dir), resume=True, **AUGMENTED), run)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2, err  # the fallback line and epoch 2's line: no storage-library output
    assert err[0].startswith(f"checkpoint 2 in {run / 'checkpoints'} is damaged (") and reason in err[0]
    assert err[0].endswith("; resuming from checkpoint 1") and err[1].startswith("epoch 2/2: ")
    if kind != "leftover_tmp_folder":  # (a temporary folder is removed by orbax)
        assert "; set aside as 2.damaged;" in err[0] and (run / "checkpoints" / "2.damaged").is_dir()
    assert summary["resumed_from_epoch"] == 1
    for a, b in zip(jax.tree.leaves(_final_params(run, 2)), jax.tree.leaves(_final_params(reference, 2)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


def test_resume_when_no_checkpoint_restores_exits_2(augmented_run, image_dir, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(augmented_run[0], run)
    DAMAGES["zero_byte_metadata"][0](run / "checkpoints", 2)
    DAMAGES["missing_commit_marker"][0](run / "checkpoints", 1)
    capfd.readouterr()
    rc = cli.main(["run", "cnn", "--data-dir", str(image_dir), "--epochs", "2", "--batch-size", str(BATCH), "--lr",
                   "0.01", "--augment", "--resume", "--out", str(run), "--no-cache"])
    assert rc == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"jaxcalc run cnn: error: no checkpoint in {run / 'checkpoints'} restores (2: ")
    assert "params/_METADATA is empty" in err[0] and "1: the commit marker" in err[0]


def test_predict_falls_back_and_refuses_cleanly(augmented_run, image_dir, tmp_path, capfd):
    image = str(image_dir / "test" / "cross" / "0.png")
    good = augmented_run[0]
    capfd.readouterr()
    assert cnn.predict_command(["--checkpoint", str(good), image, "--top", "3"]) == 0
    out, err = capfd.readouterr()
    assert err == "" and sorted(c.split(" (")[0] for c in out.strip().split(": ", 1)[1].split(", ")) == list(CLASSES)
    for top, why in (("0", "--top must be >= 1, got 0"), ("4", "--top 4 is more than the model's 3 classes")):
        assert cnn.predict_command(["--checkpoint", str(good), image, "--top", top]) == 2
        assert capfd.readouterr().err == f"jaxcalc predict: error: {why}\n"

    run = tmp_path / "run"
    shutil.copytree(good, run)
    DAMAGES["truncated_array_file"][0](run / "checkpoints", 2)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert cnn.predict_command(["--checkpoint", str(run), image]) == 0
    out, err = capfd.readouterr()
    assert len(out.strip().splitlines()) == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"checkpoint 2 in {run / 'checkpoints'} is damaged (orbax cannot read params/: ")
    assert err.strip().endswith("; using checkpoint 1")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # predict changes nothing

    DAMAGES["missing_commit_marker"][0](run / "checkpoints", 1)
    assert cnn.predict_command(["--checkpoint", str(run), image]) == 2
    err = capfd.readouterr().err
    assert err.startswith(f"jaxcalc predict: error: no checkpoint in {run / 'checkpoints'} restores (2: ")
    assert len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert cnn.predict_command(["--checkpoint", str(tmp_path / "empty"), image]) == 2
    assert capfd.readouterr().err == f"jaxcalc predict: error: no complete checkpoint in {tmp_path / 'empty'}\n"
    assert list((tmp_path / "empty").iterdir()) == []
