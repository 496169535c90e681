"""End-to-end runs of ``python -m simclr_tf.run`` in subprocesses."""

import glob
import hashlib
import json
import os
import shutil
import tempfile
import types

import numpy as np
import pytest
import tensorflow as tf

import subprocs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")

pytestmark = pytest.mark.slow


def run_cli(*flags, check=True, fresh=False):
    """Runs ``python -m simclr_tf.run FLAGS`` to the end; ``.stdout``, ``.stderr``,
    ``.returncode``. Forked from subprocs' server (TensorFlow imported once)
    unless ``fresh``: the shared pretraining run below is a new interpreter,
    the command exactly as a user types it."""
    log_dir = tempfile.mkdtemp(prefix="simclr_tf_cli_")
    child = subprocs.run(list(flags), log_dir, "cli", check=False, fresh=fresh)
    proc = types.SimpleNamespace(returncode=child.proc.returncode, stdout=child.stdout,
                                 stderr=child.stderr)
    shutil.rmtree(log_dir, ignore_errors=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}"
                             f"\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def _events(directory):
    return glob.glob(os.path.join(directory, "events.out.tfevents.*"))


def _checkpoint_vars(model_dir, contains):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if contains in k and "OPTIMIZER_SLOT" not in k}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One smoke pretraining run shared by the tests below."""
    model_dir = str(tmp_path_factory.mktemp("pretrain"))
    proc = run_cli("--mode=train_then_eval", f"--config={SMOKE}",
                   f"--model_dir={model_dir}", fresh=True)
    return model_dir, proc


def test_train_then_eval_on_the_builtin_dataset(pretrained):
    model_dir, proc = pretrained
    with open(os.path.join(model_dir, "result.json")) as f:
        result = json.load(f)
    assert result["global_step"] == 6
    assert f"result: top1={result['top1']:.4f} top5={result['top5']:.4f}" in proc.stdout
    # Second path: the exported model's logits on the eval split, scored in NumPy.
    from simclr_tf import config as config_lib
    from simclr_tf.data import pipeline
    cfg = config_lib.resolve(os.path.join(model_dir, "config.yaml"))
    ds, info = pipeline.build_eval_dataset(cfg.data, 128)
    served = tf.saved_model.load(os.path.join(model_dir, "saved_model")).signatures["serve"]
    logits, labels = [], []
    for images, y in ds:
        out = served(images)
        logits.append(out["logits_sup"].numpy())
        labels.append(y.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    assert len(labels) == info.num_examples == 500
    order = np.argsort(-logits, axis=1)
    top1 = np.mean(order[:, 0] == labels)
    top5 = np.mean([labels[i] in order[i, :5] for i in range(len(labels))])
    # Ties between logits may rank differently: at most one example either way.
    assert abs(top1 - result["top1"]) <= 1 / 500 and abs(top5 - result["top5"]) <= 1 / 500
    with open(os.path.join(model_dir, "config.yaml")) as f:
        assert "width_multiplier: 0.25" in f.read()
    assert _events(os.path.join(model_dir, "train"))
    assert _events(os.path.join(model_dir, "eval"))
    # checkpoint_steps=3 with 6 steps: checkpoints at steps 3 and 6.
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "ckpt-3", "ckpt-6"]


def test_tensorboard_has_the_training_scalars(pretrained):
    model_dir, _ = pretrained
    scalars = {}
    for path in _events(os.path.join(model_dir, "train")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "scalars":
                    scalars[(v.tag, event.step)] = float(tf.make_ndarray(v.tensor))
    names = ("loss", "contrast_loss", "contrast_acc", "contrast_entropy", "sup_acc", "lr",
             "weight_decay")
    assert set(names) <= {tag for tag, _ in scalars}
    # The same values as train_log.jsonl (a second writer of the same logs).
    with open(os.path.join(model_dir, "train_log.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert logged
    for entry in logged:
        for name in names:
            assert scalars[(name, entry["step"])] == pytest.approx(entry[name], rel=1e-6), name


def _make_image_folder(root):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for c, name in enumerate(["cats", "dogs"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                size = (20 + 3 * i, 24 + 2 * i)
                pixels = (rng.uniform(size=size + (3,)) * 120 + 100 * c).astype("uint8")
                Image.fromarray(pixels).save(d / f"img{i}.{'png' if i % 2 else 'jpg'}")
    gray = (rng.uniform(size=(30, 30)) * 255).astype("uint8")
    Image.fromarray(gray, mode="L").save(root / "train" / "cats" / "gray.png")
    (root / "train" / "dogs" / "corrupt.jpg").write_bytes(b"\xff\xd8not really a jpeg")


def test_train_then_eval_on_an_image_folder(tmp_path):
    _make_image_folder(tmp_path / "data")
    model_dir = str(tmp_path / "run")
    proc = run_cli("--mode=train_then_eval", f"--config={SMOKE}",
                   "--dataset=image_folder", f"--data_dir={tmp_path / 'data'}",
                   # smoke.yaml's splits are slices of the built-in dataset
                   "--train_split=train", "--eval_split=test",
                   "--train_batch_size=8", "--eval_batch_size=8",
                   f"--model_dir={model_dir}")
    with open(os.path.join(model_dir, "result.json")) as f:
        result = json.load(f)
    assert result["global_step"] == 6
    # 12 test images: accuracies are counts of them. The two classes differ in
    # brightness, which frozen features separate even after 6 steps.
    for key in ("top1", "top5"):
        assert abs(result[key] * 12 - round(result[key] * 12)) < 1e-6, result
    assert result["feature_linear_eval"]["num_eval"] == 12
    assert result["feature_linear_eval"]["top1"] >= 10 / 12, result
    assert "skipped 1" in (proc.stdout + proc.stderr).lower()
    # Every long step reports progress: the folder's first scan, the evaluation
    # and the frozen-feature extraction (counts, rate and the time taken).
    # (the scan counts every file it checked, the bad one too: it is "skipped 1" above)
    for line in ("checking image files (once per folder; cached): 26/26 files",
                 "evaluation on 'test': 2 batches", "frozen features of 'train': 25/25 images",
                 "frozen features of 'test': 12/12 images"):
        assert line in proc.stderr, (line, proc.stderr[-3000:])


def test_resume_continues_from_the_last_checkpoint(tmp_path, pretrained):
    """A run that died after step 3 resumes there and ends at the same step."""
    src, _ = pretrained
    model_dir = tmp_path / "resume"
    ckpt_dir = model_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    for path in glob.glob(os.path.join(src, "checkpoints", "ckpt-3*")):
        os.link(path, ckpt_dir / os.path.basename(path))
    tf.compat.v1.train.update_checkpoint_state(str(ckpt_dir), str(ckpt_dir / "ckpt-3"))
    os.link(os.path.join(src, "config.yaml"), model_dir / "config.yaml")
    proc = run_cli("--mode=train_then_eval", f"--config={SMOKE}",
                   f"--model_dir={model_dir}")
    log = proc.stdout + proc.stderr
    assert "resumed from" in log and "at step 3" in log
    with open(model_dir / "result.json") as f:
        assert json.load(f)["global_step"] == 6
    # The resumed run took the same steps 4..6 as the uninterrupted one.
    resumed = _checkpoint_vars(str(model_dir), "encoder")
    original = _checkpoint_vars(src, "encoder")
    assert resumed.keys() == original.keys() and resumed
    for key in resumed:
        np.testing.assert_allclose(resumed[key], original[key], rtol=1e-4, atol=1e-5,
                                   err_msg=key)


@pytest.mark.parametrize("selector", [0, 1])
def test_finetune_from_a_pretrain_checkpoint(tmp_path, pretrained, selector):
    src, _ = pretrained
    model_dir = str(tmp_path / "ft")
    proc = run_cli("--mode=train_then_eval", f"--config={SMOKE}",
                   "--train_mode=finetune", f"--checkpoint={src}",
                   f"--ft_proj_selector={selector}", "--fine_tune_after_block=4",
                   "--optimizer=momentum", "--learning_rate=0.1",
                   f"--model_dir={model_dir}")
    assert "loaded pretrained encoder" in proc.stdout + proc.stderr
    with open(os.path.join(model_dir, "result.json")) as f:
        assert json.load(f)["train_mode"] == "finetune"
    # The frozen encoder is exactly the pretrained one.
    tuned = _checkpoint_vars(model_dir, "encoder")
    original = _checkpoint_vars(src, "encoder")
    assert tuned and tuned.keys() == original.keys()
    for key in tuned:
        np.testing.assert_array_equal(tuned[key], original[key], err_msg=key)


@pytest.mark.parametrize("flags,fragment", [
    (["--train_batch_size=-8"], "'train_batch_size'"),
    (["--optimizer=rmsprop"], "lars|momentum|adam"),
    (["--dataset=not_a_dataset"], "not_a_dataset"),
    (["--train_batch_size=100000"], "100000"),
    (["--config=/nonexistent.yaml"], "not found"),
])
def test_bad_flags_fail_without_touching_model_dir(tmp_path, capsys, flags, fragment):
    # In this process (run.main as the CLI calls it): no process start per case.
    model_dir = tmp_path / "existing"
    model_dir.mkdir()
    (model_dir / "keep.txt").write_text("precious")
    code = subprocs.main_in_process("--mode=train_then_eval", f"--config={SMOKE}",
                                    f"--model_dir={model_dir}", *flags)
    err = capsys.readouterr().err
    assert code != 0
    assert fragment in err, err[-2000:]
    assert "Traceback" not in err
    assert sorted(os.listdir(model_dir)) == ["keep.txt"]
    assert (model_dir / "keep.txt").read_text() == "precious"


def test_incompatible_model_dir_is_refused(tmp_path, capsys, pretrained):
    src, _ = pretrained
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(src, "**"),
                                                         recursive=True)}
    code = subprocs.main_in_process("--mode=train", f"--config={SMOKE}", "--resnet_depth=34",
                                    f"--model_dir={src}")
    err = capsys.readouterr().err
    assert code == 2
    assert "resnet_depth" in err and "new --model_dir" in err
    after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(src, "**"),
                                                       recursive=True)}
    assert before == after


def _tree_digest(path):
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _arrays(outputs):
    return {k: np.asarray(v) for k, v in outputs.items()}


def _assert_close(actual, expected, atol=1e-5):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=atol, rtol=0, err_msg=key)


def test_cli_exports_after_eval_and_in_export_mode_and_failures_keep_it(
        pretrained, tmp_path, monkeypatch, capsys):
    """The shared run's train_then_eval exported after its eval; --mode=export
    (in this process) replaces the export and keeps config.yaml; a failing
    export changes nothing."""
    from simclr_tf import config as config_lib
    from simclr_tf import errors, runtime
    from simclr_tf.data import augment
    from simclr_tf.export import writer

    model_dir, _ = pretrained
    sm = os.path.join(model_dir, "saved_model")
    keras_path = os.path.join(model_dir, "simclr.keras")

    def layout():
        return sorted(os.listdir(model_dir))

    # 1. train_then_eval exported after the eval.
    assert os.path.isfile(os.path.join(sm, "saved_model.pb"))
    assert os.path.isfile(keras_path)
    files = layout()
    assert {"checkpoints", "result.json", "saved_model", "simclr.keras"} <= set(files)
    assert not [name for name in files if name.startswith(".")]  # no temporaries

    # 2. The export holds the checkpointed weights (smoke config: 16 px, the
    # CIFAR path of the uint8 endpoint: resize only).
    cfg = config_lib.resolve(os.path.join(model_dir, "config.yaml"), {"mode": "export"})
    exp = runtime.build(cfg)
    exp.checkpointer.restore_finished("export")
    assert exp.step == 6
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(3, 16, 16, 3)).astype("float32")
    u8 = rng.integers(0, 256, size=(2, 20, 24, 3), dtype=np.uint8)
    loaded = tf.saved_model.load(sm)
    _assert_close(_arrays(loaded.serve(x)), _arrays(exp.model(x, training=False)))
    by_hand = tf.stack([augment.preprocess_for_eval(image, 16) for image in u8])
    _assert_close(_arrays(loaded.serve_uint8(u8)),
                          _arrays(exp.model(by_hand, training=False)))
    del loaded
    # (simclr.keras in a fresh process: test_export's reload script.)

    # Export mode refuses a model_dir without checkpoints (run.py turns the
    # RunError into this message and exit status 2).
    from simclr_tf.runtime.checkpointer import Checkpointer
    from simclr_tf.runtime.run_dir import RunDir

    empty_dir = RunDir(str(tmp_path / "empty"))
    empty = types.SimpleNamespace(
        cfg=cfg.replace(model_dir=empty_dir.path), model=exp.model, run_dir=empty_dir,
        checkpointer=Checkpointer(exp.model, exp.optimizer, empty_dir))
    with pytest.raises(errors.RunError, match="holds no checkpoint. Train first"):
        runtime.export(empty, restore=True)
    assert not os.path.exists(tmp_path / "empty")

    # 3. A failing export (SavedModel complete, .keras half-written) changes
    # nothing and leaves no temporary files.
    sm_digest, keras_digest = _tree_digest(sm), _file_digest(keras_path)

    def broken_write_keras(model, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(writer, "_write_keras", broken_write_keras)
    for v in exp.model.trainable_weights:  # what a new export would change
        v.assign(v * 0.5)
    with pytest.raises(errors.RunError, match="previous export there is unchanged"):
        runtime.export(exp)
    monkeypatch.undo()
    assert _tree_digest(sm) == sm_digest
    assert _file_digest(keras_path) == keras_digest
    assert layout() == files

    # 4. --mode=export replaces the export with the latest checkpoint and
    # keeps the run's config.yaml.
    config_before = open(os.path.join(model_dir, "config.yaml")).read()
    inode = os.stat(sm).st_ino
    os.remove(keras_path)
    capsys.readouterr()
    assert subprocs.main_in_process(f"--config={SMOKE}", f"--model_dir={model_dir}",
                                    "--mode=export") == 0
    assert "exported:" in capsys.readouterr().out
    assert os.stat(sm).st_ino != inode
    assert os.path.isfile(keras_path)
    assert open(os.path.join(model_dir, "config.yaml")).read() == config_before
    assert layout() == files
