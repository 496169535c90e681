"""SavedModel / .keras export: reload without simclr_tf, fine-tune, atomicity.

The exported artifacts are compared against the in-process model they came
from (same images, same weights), never against stored numbers.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging

import subprocs
from simclr_tf import config as config_lib
from simclr_tf import export, tasks
from simclr_tf.export import writer
from simclr_tf.data import augment
from simclr_tf.models import simclr_model
from simclr_tf.runtime import checkpointer as checkpointer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")
# Above 32 px so the uint8 endpoint's centre crop is exercised (the smoke
# config's 16 px uses the CIFAR path: resize only; the CLI test covers it).
IMAGE_SIZE = 40
NUM_CLASSES = 5
ATOL = 1e-5


def _randomize_bn_statistics(model, rng):
    """Non-trivial moving statistics, so inference-mode BN is distinguishable."""
    for v in model.non_trainable_weights:
        if "moving_mean" in v.path:
            v.assign(rng.normal(0.0, 0.3, v.shape).astype("float32"))
        elif "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))


def _build(rng, **overrides):
    cfg = config_lib.resolve(SMOKE, dict(image_size=IMAGE_SIZE, **overrides))
    model = tasks.build_model(cfg, NUM_CLASSES)
    model(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]))
    _randomize_bn_statistics(model, rng)
    return model


def _np(outputs):
    return {k: np.asarray(v) for k, v in outputs.items()}


# A process that must never import simclr_tf: an import hook makes any attempt
# fail loudly, and the result records that the package was never loaded.
_RELOAD_SCRIPT = textwrap.dedent('''
    import importlib.abc, json, os, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "simclr_tf" or name.startswith("simclr_tf."):
                raise ImportError("this process must not import simclr_tf")
            return None

    sys.meta_path.insert(0, _Block())
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import numpy as np
    import tensorflow as tf
    import keras

    sm_path, data_path, out_path = sys.argv[1:4]
    data = np.load(data_path)
    x, u8 = data["x"], data["u8"]
    results, arrays = {}, {}

    def save(prefix, outputs):
        for k, v in outputs.items():
            arrays[f"{prefix}/{k}"] = np.asarray(v)

    # 1. tf.saved_model.load: the three endpoints and the TF-Serving signature.
    loaded = tf.saved_model.load(sm_path)
    save("load_serve", loaded.serve(tf.constant(x)))
    save("load_signature", loaded.signatures["serving_default"](images=tf.constant(x)))
    save("load_uint8", loaded.serve_uint8(tf.constant(u8)))
    results["signatures"] = sorted(loaded.signatures.keys())

    # 2. TFSMLayer, inference and training mode.
    layer = keras.layers.TFSMLayer(sm_path, call_endpoint="serve",
                                   call_training_endpoint="serve_training",
                                   trainable=True)
    save("layer_serve", layer(x))
    save("layer_train", layer(x, training=True))

    # 3. Fine-tune the TFSMLayer inside model.fit.
    layer = keras.layers.TFSMLayer(sm_path, call_endpoint="serve",
                                   call_training_endpoint="serve_training",
                                   trainable=True)
    inputs = keras.Input(x.shape[1:])
    features = layer(inputs)["final_avg_pool"]
    logits = keras.layers.Dense(3)(features)
    classifier = keras.Model(inputs, logits)
    classifier.compile(optimizer=keras.optimizers.SGD(0.5),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    serve_before = np.asarray(layer(x)["final_avg_pool"])
    trainable_before = [np.array(w) for w in layer.trainable_weights]
    frozen_before = [np.array(w) for w in layer.non_trainable_weights]
    rng = np.random.default_rng(1)
    xt = rng.uniform(size=(16,) + x.shape[1:]).astype("float32")
    yt = rng.integers(0, 3, 16)
    history = classifier.fit(xt, yt, batch_size=8, epochs=2, verbose=0)
    serve_after = np.asarray(layer(x)["final_avg_pool"])
    results["num_trainable"] = len(layer.trainable_weights)
    results["num_non_trainable"] = len(layer.non_trainable_weights)
    results["trainable_changed"] = sum(
        not np.array_equal(a, np.array(w)) for a, w in zip(trainable_before, layer.trainable_weights))
    results["non_trainable_changed"] = sum(
        not np.array_equal(a, np.array(w))
        for a, w in zip(frozen_before, layer.non_trainable_weights))
    results["serve_changed_by"] = float(np.abs(serve_after - serve_before).max())
    results["losses"] = [float(v) for v in history.history["loss"]]
    results["dtypes"] = sorted({w.dtype for w in layer.weights})
    results["simclr_tf_imported"] = any(m.split(".")[0] == "simclr_tf" for m in sys.modules)

    # 4. Last, with the import block lifted: simclr.keras loads in a fresh
    # process once simclr_tf.export is imported (it registers the classes).
    sys.meta_path.pop(0)
    import simclr_tf.export
    save("keras_fresh", keras.models.load_model(sys.argv[4])(x))
    np.savez(out_path + ".npz", **arrays)
    print(json.dumps(results))
''')


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny exported model, its inputs and the in-process references."""
    tmp = tmp_path_factory.mktemp("export")
    model_dir = str(tmp / "run")
    rng = np.random.default_rng(0)
    model = _build(rng)
    paths = export.export_model(model, model_dir, IMAGE_SIZE)

    x = rng.uniform(size=(4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    u8 = rng.integers(0, 256, size=(3, 53, 67, 3), dtype=np.uint8)
    by_hand = tf.stack([augment.preprocess_for_eval(image, IMAGE_SIZE) for image in u8])
    refs = {"serve": _np(model(x, training=False)),
            "uint8": _np(model(by_hand, training=False))}
    # Training-mode reference on a copy, so the model's statistics stay put.
    twin = simclr_model.SimCLRModel.from_config(model.get_config())
    twin(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]))
    twin.set_weights(model.get_weights())
    refs["train"] = _np(twin(x, training=True))
    return dict(model=model, model_dir=model_dir, paths=paths, x=x, u8=u8, refs=refs,
                tmp=tmp)


@pytest.fixture(scope="module")
def reloaded(exported):
    """(results, outputs) of the export read in a fresh process without simclr_tf
    (_RELOAD_SCRIPT); the tests that use it start a process: marked slow."""
    tmp, paths = exported["tmp"], exported["paths"]
    data_path = str(tmp / "inputs.npz")
    np.savez(data_path, x=exported["x"], u8=exported["u8"])
    script = tmp / "reload.py"
    script.write_text(_RELOAD_SCRIPT)
    out_path = str(tmp / "reloaded")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, str(script), paths["saved_model"], data_path,
                           out_path, paths["keras"]], capture_output=True, text=True,
                          cwd=str(tmp), env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    arrays = np.load(out_path + ".npz")
    outputs = {}
    for key in arrays.files:
        prefix, name = key.split("/", 1)
        outputs.setdefault(prefix, {})[name] = arrays[key]
    return results, outputs


def _assert_outputs_close(actual, expected, atol=ATOL):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=atol, rtol=0,
                                   err_msg=key)


@pytest.mark.slow
def test_layout_and_output_names(exported):
    model_dir = exported["model_dir"]
    assert sorted(os.listdir(model_dir)) == ["saved_model", "simclr.keras"]
    assert os.path.isfile(os.path.join(model_dir, "saved_model", "saved_model.pb"))
    expected = {"final_avg_pool", "proj_head_output", "proj_head_hidden_1",
                "proj_head_hidden_2", "logits_sup"}
    assert set(exported["refs"]["serve"]) == expected
    with open(os.path.join(model_dir, "saved_model", "assets.extra",
                           "simclr_tf.json")) as f:
        info = json.load(f)
    assert info["image_size"] == IMAGE_SIZE and set(info["outputs"]) == expected
    from simclr_tf import __version__
    assert info["simclr_tf_version"] == __version__
    assert export.read_export_info(exported["paths"]["saved_model"]) == info


@pytest.mark.slow
def test_an_export_without_the_marker_file_still_loads(exported, tmp_path):
    """Exports written before the marker existed are recognised by their signatures."""
    import shutil
    old = str(tmp_path / "old_export")
    shutil.copytree(exported["paths"]["saved_model"], old)
    os.remove(os.path.join(old, "assets.extra", "simclr_tf.json"))
    assert export.read_export_info(old) is None
    assert export.find_saved_model(old) == old
    encoder = export.load_encoder(old)
    np.testing.assert_allclose(encoder(exported["x"]),
                               exported["refs"]["serve"]["final_avg_pool"],
                               atol=ATOL, rtol=0)


@pytest.mark.slow
def test_reloaded_without_simclr_tf_matches_in_process_model(exported, reloaded):
    (results, reloaded), refs = reloaded, exported["refs"]
    assert results["simclr_tf_imported"] is False
    assert {"serve", "serve_training", "serve_uint8", "serving_default"} <= set(
        results["signatures"])
    for name in ("load_serve", "load_signature", "layer_serve"):
        _assert_outputs_close(reloaded[name], refs["serve"])
    assert refs["serve"]["logits_sup"].shape == (4, NUM_CLASSES)
    assert results["dtypes"] == ["float32"]


@pytest.mark.slow
def test_serve_training_runs_batchnorm_in_training_mode(exported, reloaded):
    reloaded, refs = reloaded[1], exported["refs"]
    _assert_outputs_close(reloaded["layer_train"], refs["train"], atol=1e-4)
    # Batch statistics differ from the (randomised) moving statistics.
    diff = np.abs(refs["train"]["final_avg_pool"] - refs["serve"]["final_avg_pool"]).max()
    assert diff > 1e-2


@pytest.mark.slow
def test_uint8_endpoint_preprocesses_like_evaluation(exported, reloaded):
    _assert_outputs_close(reloaded[1]["load_uint8"], exported["refs"]["uint8"])


@pytest.mark.slow
def test_tfsmlayer_fine_tunes_inside_fit(exported, reloaded):
    results, model = reloaded[0], exported["model"]
    assert results["num_trainable"] == len(model.trainable_weights)
    assert results["num_non_trainable"] == len(model.non_trainable_weights)
    # Gradients reach the whole encoder (the heads are unused by this classifier)...
    assert results["trainable_changed"] == len(model.encoder.trainable_weights)
    # ... BN moving statistics were updated by serve_training ...
    assert results["non_trainable_changed"] > 0
    # ... and the serving endpoint sees the fine-tuned variables.
    assert results["serve_changed_by"] > 1e-4
    assert all(np.isfinite(results["losses"]))


@pytest.mark.slow
def test_keras_file_round_trip_gives_identical_outputs(exported):
    restored = keras.models.load_model(exported["paths"]["keras"])
    assert isinstance(restored, simclr_model.SimCLRModel)
    for path in (exported["model_dir"], exported["paths"]["keras"]):  # the helper too
        assert isinstance(export.load_keras_model(path), simclr_model.SimCLRModel)
    x = exported["x"]
    expected = exported["refs"]["serve"]
    actual = _np(restored(x, training=False))
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    for a, b in zip(restored.get_weights(), exported["model"].get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_keras_file_loads_in_a_fresh_process_once_simclr_tf_export_is_imported(exported,
                                                                                reloaded):
    _assert_outputs_close(reloaded[1]["keras_fresh"], exported["refs"]["serve"])


def _fit(encoder_output, inputs, x, optimizer):
    logits = keras.layers.Dense(2)(encoder_output)
    classifier = keras.Model(inputs, logits)
    classifier.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(x, np.array([0, 1] * (len(x) // 2)), epochs=2, verbose=0)


@pytest.mark.slow
def test_load_encoder_frozen(exported):
    """Frozen: inference mode even when the caller trains, weights untouched."""
    x = exported["x"]
    frozen = export.load_encoder(exported["model_dir"])
    assert not frozen.trainable_weights
    np.testing.assert_allclose(frozen(x, training=True),
                               exported["refs"]["serve"]["final_avg_pool"],
                               atol=ATOL, rtol=0)
    before = [np.array(w) for w in frozen.weights]
    inputs = keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3])
    _fit(frozen(inputs), inputs, x, "sgd")  # a linear classifier on top
    for a, w in zip(before, frozen.weights):
        np.testing.assert_array_equal(a, np.array(w))
    with pytest.raises(ValueError, match="not an output"):
        export.load_encoder(exported["model_dir"], output="nope")
    with pytest.raises(export.NotSimCLRExportError, match="No SavedModel at"):
        export.load_encoder(os.path.dirname(exported["model_dir"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.load_encoder(exported["model_dir"] + "_missing")


@pytest.mark.slow
def test_load_encoder_fine_tunes_with_adam(exported):
    """A plain TFSMLayer fails with optimizers that keep per-weight slots
    (Keras 3.15: ':' in the slot names); load_encoder's layer does not."""
    encoder = export.load_encoder(exported["paths"]["saved_model"], output=None,
                                  trainable=True)
    model = exported["model"]
    assert len(encoder.trainable_weights) == len(model.trainable_weights)
    _assert_outputs_close(_np(encoder(exported["x"])), exported["refs"]["serve"])
    before = [np.array(w) for w in encoder.trainable_weights]
    inputs = keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3])
    _fit(encoder(inputs)["final_avg_pool"], inputs, exported["x"],
         keras.optimizers.Adam(1e-2))
    changed = sum(not np.array_equal(a, np.array(w))
                  for a, w in zip(before, encoder.trainable_weights))
    assert changed == len(model.encoder.trainable_weights)


@pytest.mark.slow
def test_frozen_finetune_run_exports_a_trainable_encoder(tmp_path):
    """A linear-eval run (encoder frozen) still exports training-mode BN."""
    model = _build(np.random.default_rng(2), train_mode="finetune",
                   fine_tune_after_block=4)
    assert not model.encoder.trainable_weights
    path = export.export_model(model, str(tmp_path), IMAGE_SIZE,
                               keras_file=False)["saved_model"]
    loaded = tf.saved_model.load(path)
    x = np.random.default_rng(3).uniform(size=(4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
        "float32")
    _assert_outputs_close(_np(loaded.serve(x)), _np(model(x, training=False)))
    train_h = loaded.serve_training(x)["final_avg_pool"]
    assert np.abs(train_h - loaded.serve(x)["final_avg_pool"]).max() > 1e-2
    # Every weight but the BN moving statistics is trainable in the export.
    assert len(loaded.trainable_variables) == sum(
        "moving_" not in v.path for v in model.weights)
    assert not model.encoder.trainable_weights  # the run's model is not modified


def test_an_export_killed_mid_swap_is_recovered(tmp_path):
    """Killed between moving the old export aside and moving the new one in:
    the next export starts by putting the old one back and dropping partial files."""
    dead = subprocess.Popen(["true"])
    dead.wait()  # names of an earlier version: .<name>.<kind>-<pid>-<hex8>
    old = tmp_path / f".saved_model.old-{dead.pid}-0abc1234"
    old.mkdir()
    (old / "saved_model.pb").write_bytes(b"good")
    (tmp_path / f".saved_model.tmp-{dead.pid}-0abc1234").mkdir()
    (tmp_path / f".simclr.keras.tmp-{dead.pid}-0abc1234.keras").write_bytes(b"partial")
    writer.recover(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]
    assert (tmp_path / "saved_model" / "saved_model.pb").read_bytes() == b"good"


@pytest.mark.slow
def test_cli_export_falls_back_from_a_corrupt_newest_checkpoint(tmp_path, capfd, monkeypatch):
    """--mode=export skips a truncated newest checkpoint with a warning, as
    training does, and exports the previous checkpoint's weights."""
    from simclr_tf import runtime

    model_dir = str(tmp_path / "run")
    cfg = config_lib.resolve(SMOKE, dict(model_dir=model_dir, train_steps=2,
                                         checkpoint_steps=1, log_every_steps=1))
    os.makedirs(model_dir)
    config_lib.save_yaml(cfg, os.path.join(model_dir, "config.yaml"))
    exp = runtime.build(cfg)
    runtime.train(exp)
    x = np.random.default_rng(5).uniform(size=(3, 16, 16, 3)).astype("float32")
    newest = _np(exp.model(x, training=False))
    directory = os.path.join(model_dir, "checkpoints")
    exp.checkpointer.checkpoint.read(os.path.join(directory, "ckpt-1")).assert_existing_objects_matched()
    older = _np(exp.model(x, training=False))
    assert np.abs(older["final_avg_pool"] - newest["final_avg_pool"]).max() > 1e-4

    data = os.path.join(directory, "ckpt-2.data-00000-of-00001")
    with open(data, "rb") as f:
        content = f.read()
    with open(data, "wb") as f:
        f.write(content[: len(content) // 2])
    # What the checkpointer logs, recorded at the call (absl's level and handlers
    # in this process depend on the tests that ran before).
    logged = []

    class _Recorder:
        def __getattr__(self, name):
            real = getattr(absl_logging, name)
            if name not in ("info", "warning"):
                return real
            return lambda msg, *args, **kw: (logged.append(msg % args), real(msg, *args, **kw))

    monkeypatch.setattr(checkpointer_lib, "logging", _Recorder())
    capfd.readouterr()
    code = subprocs.main_in_process("--mode=export",
                                    f"--config={os.path.join(model_dir, 'config.yaml')}")
    out, err = capfd.readouterr()
    assert code == 0, err[-5000:]
    assert "exported:" in out
    logged = "\n".join(logged)
    assert "ckpt-2 is unreadable" in logged and "trying the previous one" in logged
    assert "skipped unreadable ckpt-2" in logged
    loaded = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
    _assert_outputs_close(_np(loaded.serve(x)), older)
    assert len(content) // 2 == os.path.getsize(data)  # the bad file is left as it was
