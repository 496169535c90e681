"""Tests for simclr_tf.convert on SavedModels written by the official SimCLR TF2 code.

The fixtures (``shared/fixtures/official_tf2/``, beside the repository) hold
zeroed official exports; ``fill.py`` gives each variable's value and
``outputs.npz`` what the official model returned for them. Each is loaded and
filled once per module, converted once (module-scoped) and the converted model
is compared with the official outputs. The converter reads the fixture's own
SavedModel directory; its loader hands back the filled object for that path
(the fixture README's recipe without the re-save, which cost more than the
conversion). Conversions run in this process; one test runs the command line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import keras
import tensorflow as tf

from benchmarks import official_fixture
from simclr_tf import config as config_lib
from simclr_tf import convert, tasks
from simclr_tf.official import layout as official_layout
from simclr_tf.official import mapping as official_mapping
from simclr_tf.official import releases
from simclr_tf.runtime import TaskModel
from simclr_tf.runtime.checkpointer import weights_by_path

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4
KEYS = ("final_avg_pool", "proj_head_output", "logits_sup")


def _fixture_root():
    root = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official_tf2"
    if not root.is_dir() and os.environ.get("SIMCLR_TF_SHARED"):
        root = Path(os.environ["SIMCLR_TF_SHARED"]) / "fixtures" / "official_tf2"
    return root


FIXTURES = _fixture_root()


def _require_fixtures():
    if not (FIXTURES / "fill.py").is_file():
        message = (f"official SimCLR fixtures not found at {FIXTURES} "
                   "(clone the repository beside shared/ or set SIMCLR_TF_SHARED)")
        if os.environ.get("CI"):  # CI has shared/ beside the clone: a skip there hides a fault
            pytest.fail(message)
        pytest.skip(message)

# folder -> what the converter must infer (from the folder's flags.txt), and how
# sk_ratio was decided: by the variables, or (ResNet-18 with the CIFAR stem, where
# the variables cannot tell) by the official outputs
EXPECTED = {
    "r18_cifar": dict(resnet_depth=18, width_multiplier=1, cifar_stem=True, sk_ratio=0.0,
                      proj_head_mode="nonlinear", num_proj_layers=2, proj_out_dim=128,
                      num_classes=10, sk_ratio_source="outputs"),
    "r18_cifar_sk1": dict(resnet_depth=18, width_multiplier=1, cifar_stem=True,
                          sk_ratio=0.0625, proj_head_mode="nonlinear", num_proj_layers=2,
                          proj_out_dim=128, num_classes=10, sk_ratio_source="outputs"),
    "r50_1x_sk1": dict(resnet_depth=50, width_multiplier=1, cifar_stem=False,
                       sk_ratio=0.0625, proj_head_mode="nonlinear", num_proj_layers=3,
                       proj_out_dim=128, num_classes=10, sk_ratio_source="variables"),
}


def _load_filled(name, tmp):
    """(the fixture's SavedModel directory, its official model loaded with fill.py's values)."""
    _require_fixtures()
    return official_fixture.load_filled(FIXTURES, name, tmp)


@pytest.fixture(scope="module")
def officials(tmp_path_factory):
    """Every fixture loaded and filled once: {name: (SavedModel dir, loaded)}.

    While the module runs, the converter's loader returns the filled object
    for a fixture's directory (the zeroed SavedModel the object was loaded
    from) and loads any other path as usual.
    """
    _require_fixtures()
    tmp = tmp_path_factory.mktemp("official")
    out = {name: _load_filled(name, tmp) for name in EXPECTED}
    by_path = {os.path.normpath(str(path)): loaded for path, loaded in out.values()}
    real = official_layout._load_saved_model
    patch = pytest.MonkeyPatch()
    patch.setattr(official_layout, "_load_saved_model",
                  lambda path: by_path.get(os.path.normpath(str(path))) or real(path))
    yield out
    patch.undo()


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12))


@pytest.fixture(scope="module")
def converted(officials, tmp_path_factory):
    """Every fixture converted once: {name: info}."""
    tmp = tmp_path_factory.mktemp("converted")
    out = {}
    for name, (path, loaded) in officials.items():
        ref = dict(np.load(FIXTURES / name / "outputs.npz"))
        model_dir = tmp / f"{name}_run"
        lines = []
        result = convert.convert(str(path), str(model_dir),
                                 image_size=int(ref["x"].shape[1]), log=lines.append)
        out[name] = dict(ref=ref, official=path, loaded=loaded, model_dir=model_dir,
                         lines=lines, result=result)
    return out


def _restored_model(model_dir):
    """A fresh model from DIR/config.yaml with DIR/checkpoints restored into it."""
    cfg = config_lib.from_dict(config_lib.load_yaml(str(model_dir / "config.yaml")))
    num_classes = 10
    model = tasks.build_model(cfg, num_classes)
    model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]), training=False)
    prefix = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert prefix is not None and prefix.endswith("ckpt-0")
    # every weight, by path (as --checkpoint reads it); the optimizer stays out
    ckpt = tf.train.Checkpoint(weights=weights_by_path(model))
    ckpt.read(prefix).assert_existing_objects_matched().expect_partial()
    return cfg, model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_architecture_is_inferred(converted, name):
    arch = converted[name]["result"]["architecture"]
    for key, value in EXPECTED[name].items():
        assert getattr(arch, key) == value, key
    cfg = converted[name]["result"]["config"]
    assert cfg.resnet_depth == EXPECTED[name]["resnet_depth"]
    assert cfg.cifar_stem == EXPECTED[name]["cifar_stem"]
    assert cfg.image_size == converted[name]["ref"]["x"].shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_parity_is_reported(converted, name):
    info = converted[name]
    diffs = info["result"]["differences"]
    assert set(diffs) == set(KEYS)
    text = "\n".join(info["lines"])
    assert "max rel diff" in text
    for key, (absolute, relative) in diffs.items():
        assert 0 <= relative <= RTOL and absolute >= 0
        # the log line carries the returned numbers
        assert f"max abs diff {absolute:.3e}   max rel diff {relative:.3e}" in text, key
    # Second path, not the converter's: the official model the converter read
    # and the converted run's exported SavedModel (loaded afresh, as a user
    # would: keras.layers.TFSMLayer, endpoint serve) run on the fixture's own
    # batch and compared here.
    ref = info["ref"]
    x = tf.constant(ref["x"])
    official = info["loaded"](x, trainable=False)
    served = keras.layers.TFSMLayer(str(info["model_dir"] / "saved_model"),
                                    call_endpoint="serve")
    ours = served(x)
    for key in KEYS:
        theirs = official[key].numpy()
        # the official model is the fixture's (so the comparison means something)
        assert _rel(ref[key], theirs) <= 1e-5, key
        assert ours[key].shape == theirs.shape, key
        assert _rel(theirs, ours[key].numpy()) <= RTOL, key
    assert np.std(ref["logits_sup"]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_checkpoint_reproduces_official_outputs(converted, name):
    info = converted[name]
    ref = info["ref"]
    _, model = _restored_model(info["model_dir"])
    ours = model(tf.constant(ref["x"]), training=False)
    for key in KEYS:
        assert ours[key].shape == ref[key].shape
        assert _rel(ref[key], ours[key]) <= RTOL, key
    # the fixture values are not trivially small: a wrong copy would show
    assert np.std(ref["logits_sup"]) > 1e-3
    assert np.std(ref["final_avg_pool"]) > 1e-3


@pytest.mark.slow
def test_run_dir_layout(converted):
    model_dir = converted["r18_cifar"]["model_dir"]
    names = sorted(os.listdir(model_dir))
    assert names == ["checkpoints", "config.yaml", "saved_model", "simclr.keras"]
    cfg = config_lib.from_dict(config_lib.load_yaml(str(model_dir / "config.yaml")))
    assert cfg.model_dir == str(model_dir)
    assert (cfg.resnet_depth, cfg.num_proj_layers, cfg.image_size) == (18, 2, 32)
    info = json.loads(next((model_dir / "saved_model").rglob("*.json")).read_text())
    assert set(info["endpoints"]) == {"serve", "serve_training", "serve_uint8"}
    # no temporary sibling is left behind
    assert not [p for p in model_dir.parent.iterdir() if "convert-tmp" in p.name]


@pytest.mark.slow
def test_one_finetuning_step_from_converted_model(converted):
    """One plain-SGD fine-tuning step from the converted checkpoint, checked by hand:
    the step's loss is a NumPy cross-entropy of the model's logits, and the
    supervised head's kernel moves by -lr * (u^T (softmax - onehot) / N + wd * W),
    u being what the head was fed."""
    info = converted["r18_cifar"]
    cfg, model = _restored_model(info["model_dir"])
    x = info["ref"]["x"]
    labels = np.arange(len(x)) % 10
    head = model.supervised_head
    state = [w.numpy().copy() for w in model.weights]
    fed = []
    head_call = head.call

    def recording_call(inputs, *args, **kwargs):
        fed.append(np.asarray(inputs))
        return head_call(inputs, *args, **kwargs)

    head.call = recording_call
    try:
        logits = model(tf.constant(x), training=True)["logits_sup"].numpy().astype(np.float64)
    finally:
        del head.call
    for w, value in zip(model.weights, state):  # undo the BN statistics that forward moved
        w.assign(value)
    assert len(fed) == 1
    u = fed[0].astype(np.float64)
    kernel = next(w for w in head.trainable_weights if "kernel" in w.path)
    w_before = kernel.numpy().astype(np.float64)
    bias = [w for w in head.trainable_weights if w is not kernel]
    b = bias[0].numpy() if bias else 0.0
    np.testing.assert_allclose(u @ w_before + b, logits, rtol=1e-4, atol=1e-4)
    shifted = logits - logits.max(1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    onehot = np.eye(logits.shape[1])[labels]
    hand_loss = float(np.mean(-np.log(p[np.arange(len(x)), labels])))

    trainer = TaskModel(model, tasks.build_task("finetune", cfg.loss),
                        weight_decay=(cfg.optimizer, cfg.weight_decay))
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
    data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(len(x))
    history = trainer.fit(data, epochs=1, verbose=0, shuffle=False)
    assert history.history["sup_loss"][-1] == pytest.approx(hand_loss, rel=1e-4)
    gradient = u.T @ (p - onehot) / len(x) + cfg.weight_decay * w_before
    step = kernel.numpy().astype(np.float64) - w_before
    assert np.max(np.abs(gradient)) > 1e-4  # a step that moves something
    np.testing.assert_allclose(step, -0.05 * gradient, rtol=2e-3,
                               atol=2e-3 * 0.05 * np.max(np.abs(gradient)))


@pytest.mark.slow
def test_export_loads_with_tfsmlayer_without_simclr_tf(converted, tmp_path):
    """A converted export serves in a process that never imports simclr_tf.

    One fixture is enough for that property (a SavedModel load imports no
    Python module); test_parity_is_reported checks every fixture's export
    through TFSMLayer in this process.
    """
    script = """
import sys, numpy as np, keras
out = {}
for name, path, x in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    res = layer(np.load(x)["x"])
    for k, v in res.items():
        out[f"{name}/{k}"] = np.asarray(v)
assert not any(m.startswith("simclr_tf") for m in sys.modules), "simclr_tf was imported"
np.savez(sys.argv[0] + ".npz", **out)
"""
    script_path = tmp_path / "load_export.py"
    script_path.write_text(script)
    name = "r18_cifar"
    args = [name, str(converted[name]["model_dir"] / "saved_model"),
            str(FIXTURES / name / "outputs.npz")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, str(script_path), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(str(script_path) + ".npz")
    for key in KEYS:
        assert _rel(converted[name]["ref"][key], got[f"{name}/{key}"]) <= RTOL, key


# ------------------------------------------------------------------ bad input
def _assert_untouched(model_dir, before):
    if before is None:
        assert not model_dir.exists()
    else:
        assert sorted(os.listdir(model_dir)) == before
    assert not [p for p in model_dir.parent.iterdir() if "convert-tmp" in p.name]


def test_nonexistent_path(tmp_path):
    model_dir = tmp_path / "run"
    with pytest.raises(convert.ConversionError, match="does not exist"):
        convert.convert(str(tmp_path / "nope"), str(model_dir), log=lambda s: None)
    _assert_untouched(model_dir, None)


def test_directory_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    model_dir = tmp_path / "run"
    with pytest.raises(convert.ConversionError, match="not a SavedModel"):
        convert.convert(str(tmp_path / "empty"), str(model_dir), log=lambda s: None)
    _assert_untouched(model_dir, None)


def test_saved_model_that_is_not_official_simclr(tmp_path):
    module = tf.Module()
    module.w = tf.Variable(tf.ones([3, 3]), name="dense/kernel")
    module.f = tf.function(lambda x: x @ module.w,
                           input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"))
    model_dir = tmp_path / "run"
    model_dir.mkdir()  # an empty DIR stays as it was
    with pytest.raises(convert.ConversionError, match="not an official SimCLR TF2 export"):
        convert.convert(str(tmp_path / "other"), str(model_dir), log=lambda s: None)
    _assert_untouched(model_dir, [])


@pytest.mark.slow
def test_our_own_export_is_not_official(converted, tmp_path):
    model_dir = tmp_path / "run"
    with pytest.raises(convert.ConversionError, match="not an official SimCLR TF2 export"):
        convert.convert(str(converted["r18_cifar"]["model_dir"] / "saved_model"),
                        str(model_dir), log=lambda s: None)
    _assert_untouched(model_dir, None)


def _convert_changed(monkeypatch, officials, tmp_path, change):
    """Converts r18_cifar with its variables as ``change`` leaves them (the export's
    variables as the converter reads them, one missing or one more)."""
    real = official_layout.load_official

    def load(path):
        loaded, variables = real(path)
        return loaded, change(dict(variables))

    monkeypatch.setattr(official_layout, "load_official", load)
    convert.convert(str(officials["r18_cifar"][0]), str(tmp_path / "run"), log=lambda s: None)


@pytest.mark.slow
def test_missing_variable_is_named(officials, tmp_path, monkeypatch):
    def drop(variables):
        name = next(n for n in variables if n.startswith("projection_head/nl_1/")
                    and n.endswith("moving_variance"))
        del variables[name]
        return variables

    with pytest.raises(convert.ConversionError,
                       match="projection_head/batch_normalization_1/moving_variance"):
        _convert_changed(monkeypatch, officials, tmp_path, drop)
    _assert_untouched(tmp_path / "run", None)


@pytest.mark.slow
def test_extra_variable_is_named(officials, tmp_path, monkeypatch):
    extra = ("resnet/block_group1/residual_block/batch_norm_relu_99/"
             "sync_batch_normalization_99/gamma")

    def add(variables):
        variables[extra] = tf.Variable(tf.ones([64]), name=extra)
        return variables

    with pytest.raises(convert.ConversionError, match=f"Cannot place official variable '{extra}'"):
        _convert_changed(monkeypatch, officials, tmp_path, add)
    _assert_untouched(tmp_path / "run", None)


@pytest.mark.slow
def test_unknown_variable_is_named(officials, tmp_path, monkeypatch):
    extra = "projection_head/nl_0/dense/bias"

    def add(variables):
        variables[extra] = tf.Variable(tf.zeros([512]), name=extra)
        return variables

    with pytest.raises(convert.ConversionError, match=extra):
        _convert_changed(monkeypatch, officials, tmp_path, add)
    _assert_untouched(tmp_path / "run", None)


@pytest.mark.slow
def test_parity_failure_writes_nothing(converted, tmp_path, monkeypatch):
    real_copy = official_mapping.copy_variables

    def copy_then_perturb(variables, parsed, model):
        mapping = real_copy(variables, parsed, model)
        bn = model.encoder.block_groups[3].blocks[1].bn_1
        bn.moving_mean.assign(bn.moving_mean + 0.5)
        return mapping

    monkeypatch.setattr(official_mapping, "copy_variables", copy_then_perturb)
    model_dir = tmp_path / "run"
    with pytest.raises(convert.ConversionError, match="Parity check failed"):
        convert.convert(str(converted["r18_cifar"]["official"]), str(model_dir),
                        log=lambda s: None)
    _assert_untouched(model_dir, None)


@pytest.mark.slow
def test_existing_run_is_refused(converted):
    model_dir = converted["r18_cifar"]["model_dir"]
    before = sorted(os.listdir(model_dir))
    with pytest.raises(convert.ConversionError, match="already holds a run"):
        convert.convert(str(converted["r18_cifar"]["official"]), str(model_dir),
                        log=lambda s: None)
    _assert_untouched(model_dir, before)


@pytest.mark.slow
def test_cifar_model_with_large_image_size_is_refused(converted, tmp_path):
    with pytest.raises(convert.ConversionError, match="CIFAR stem"):
        convert.convert(str(converted["r18_cifar"]["official"]), str(tmp_path / "run"),
                        image_size=64, log=lambda s: None)
    _assert_untouched(tmp_path / "run", None)


@pytest.mark.slow
def test_trainer_restores_converted_run(converted, tmp_path):
    """--mode=export of simclr_tf.run (in this process) restores the converted
    checkpoint strictly: the export it writes anew reproduces the official logits."""
    import shutil

    from absl import flags as absl_flags

    from simclr_tf import run
    from simclr_tf.config.flags import define_flags

    model_dir = tmp_path / "run"
    shutil.copytree(converted["r18_cifar"]["model_dir"], model_dir)
    shutil.rmtree(model_dir / "saved_model")  # so what is checked below is written now
    (model_dir / "simclr.keras").unlink()
    define_flags()
    absl_flags.FLAGS.unparse_flags()
    absl_flags.FLAGS(["simclr_tf.run", f"--config={model_dir / 'config.yaml'}",
                      f"--model_dir={model_dir}", "--mode=export"])
    try:
        run.main(["simclr_tf.run"])
    finally:
        absl_flags.FLAGS.unparse_flags()
    served = tf.saved_model.load(str(model_dir / "saved_model")).signatures["serve"]
    ref = converted["r18_cifar"]["ref"]
    ours = served(tf.constant(ref["x"]))
    for key in KEYS:
        assert _rel(ref[key], ours[key].numpy()) <= RTOL, key


# ------------------------------------------------ sk_ratio the variables cannot show
@pytest.mark.slow
def test_undecided_sk_ratio_is_chosen_by_the_official_outputs(converted):
    """A ResNet-18 with the CIFAR stem holds the same variables with and without
    selective kernels (only its projection shortcuts differ); both layouts are
    built, and the one that reproduces the official outputs is kept and reported."""
    for name, wrong in (("r18_cifar", 0.0625), ("r18_cifar_sk1", 0.0)):
        info = converted[name]
        right = EXPECTED[name]["sk_ratio"]
        candidates = info["result"]["candidates"]
        assert sorted(candidates) == [0.0, 0.0625], name
        worst = {r: max(d[1] for d in diffs.values()) for r, diffs in candidates.items()}
        assert worst[right] <= RTOL, name
        assert worst[wrong] > 1e-3, name  # the other layout is really different
        text = "\n".join(info["lines"])
        assert "the variables cannot tell sk_ratio 0 from > 0" in text
        assert f"sk_ratio {wrong:g}: max rel diff {worst[wrong]:.3e} (does not reproduce" in text
        assert f"sk_ratio {right:g}: max rel diff {worst[right]:.3e} (reproduces" in text
        assert f"-> sk_ratio {right:g} (" in text and "chosen by the official outputs" in text
        cfg = config_lib.from_dict(config_lib.load_yaml(str(info["model_dir"] / "config.yaml")))
        assert cfg.sk_ratio == right, name
    assert converted["r50_1x_sk1"]["result"]["candidates"].keys() == {0.0625}


@pytest.mark.slow
def test_sk_ratio_flag_names_the_layout(officials, tmp_path, monkeypatch):
    path = str(officials["r18_cifar_sk1"][0])
    # the wrong layout by flag: refused by the parity check, nothing written
    lines = []
    with pytest.raises(convert.ConversionError, match="Parity check failed"):
        convert.convert(path, str(tmp_path / "wrong"), sk_ratio=0.0, log=lines.append)
    _assert_untouched(tmp_path / "wrong", None)
    assert "--sk_ratio chose the layout" in "\n".join(lines)
    # the right one: only that layout is built (the run dir's writing is stubbed out)
    written = {}
    monkeypatch.setattr(convert, "write_run_dir", lambda cfg, model, model_dir: written.update(
        cfg=cfg) or {"checkpoint": "-"})
    lines = []
    result = convert.convert(path, str(tmp_path / "right"), sk_ratio=0.0625,
                             log=lines.append)
    assert list(result["candidates"]) == [0.0625]
    assert written["cfg"].sk_ratio == 0.0625
    assert result["architecture"].sk_ratio_source == "flag"
    assert "(from --sk_ratio)" in "\n".join(lines)
    # where the variables show sk_ratio, a flag that contradicts them is refused
    with pytest.raises(convert.ConversionError, match="contradicts the export"):
        convert.convert(str(officials["r50_1x_sk1"][0]), str(tmp_path / "r50"),
                        sk_ratio=0.0, log=lambda s: None)
    _assert_untouched(tmp_path / "r50", None)


# ------------------------------------------------------- released models by name
def _release_rows():
    """The official README's list (tests/fixtures/official_releases.txt, its source cited there)."""
    rows = []
    text = (REPO / "tests" / "fixtures" / "official_releases.txt").read_text()
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            version, depth, width, sk, top1, path = line.split()
            rows.append((int(version), int(depth), int(width), bool(int(sk)), float(top1),
                         path))
    return rows


def test_release_names_match_the_official_list():
    rows = _release_rows()
    assert len(rows) == 16  # v1: 3 widths; v2: Table 1's 13 models
    ours = {(r.version, r.resnet_depth, r.width_multiplier, r.selective_kernels,
             r.linear_eval_top1, r.path): name for name, r in releases.RELEASES.items()}
    assert sorted(ours) == sorted(rows)
    for key, name in ours.items():
        version, depth, width, sk, _, path = key
        # v2 names are the bucket's folder names; v1 folders are named by width only
        expected = (f"r{depth}_{width}x_sk{int(sk)}" if version == 2 else f"v1_r50_{width}x")
        assert name == expected
        assert path.split("/")[-3] == (name if version == 2 else f"{width}x")


def test_official_list_prints_every_name_with_its_top1(capsys):
    assert convert.cli(official="list") == 0
    out = capsys.readouterr().out
    for version, depth, width, sk, top1, path in _release_rows():
        name = f"r{depth}_{width}x_sk{int(sk)}" if version == 2 else f"v1_r50_{width}x"
        line = next(x for x in out.splitlines() if x.startswith(name + " "))
        assert f"{top1:.1f}%" in line, line


# The error tf.io.gfile raises for a gs:// path on a machine without network
# (TF 2.21: at once, the host name does not resolve).
_OFFLINE = ("Error executing an HTTP request: libcurl code 6 meaning 'Could not resolve "
            "hostname', error details: Could not resolve host: www.googleapis.com\n\t when "
            "reading metadata of {}")


def test_official_name_offline_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    asked = []

    def offline_exists(path):
        asked.append(path)
        if str(path).startswith("gs://"):
            raise tf.errors.FailedPreconditionError(None, None, _OFFLINE.format(path))
        return os.path.exists(path)

    monkeypatch.setattr(tf.io.gfile, "exists", offline_exists)
    model_dir = tmp_path / "run"
    assert convert.cli(official="r50_1x_sk0", model_dir=str(model_dir)) == 1
    path = "gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk0/saved_model/"
    assert path in asked  # the official path was the one read
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("simclr_tf.convert: error: --official=r50_1x_sk0: Cannot reach "
                          f"'{path}' (FailedPreconditionError: ")
    assert "Could not resolve host" in err
    assert ("mkdir -p r50_1x_sk0 && gsutil -m cp -r gs://simclr-checkpoints-tf2/simclrv2/"
            "pretrained/r50_1x_sk0/saved_model r50_1x_sk0/") in err
    assert ("https://storage.googleapis.com/simclr-checkpoints-tf2/simclrv2/pretrained/"
            "r50_1x_sk0/saved_model/") in err
    assert "then pass --official_saved_model=r50_1x_sk0/saved_model" in err
    _assert_untouched(model_dir, None)
    # a v1 name reads its own folder
    asked.clear()
    assert convert.cli(official="v1_r50_2x", model_dir=str(model_dir)) == 1
    assert asked[-1] == "gs://simclr-checkpoints-tf2/simclrv1/pretrain/2x/saved_model/"
    assert "--official_saved_model=v1_r50_2x/saved_model" in capsys.readouterr().err


def test_official_flag_misuse(tmp_path, capsys):
    assert convert.cli(official="r50_9x_sk0", model_dir=str(tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "is not a released SimCLR model" in err and "r152_3x_sk1" in err
    assert convert.cli(official="r50_1x_sk0", official_saved_model="x",
                       model_dir=str(tmp_path / "run")) == 2
    assert convert.cli(official="r50_1x_sk0") == 2
    assert "--model_dir is required (e.g. --model_dir=runs/r50_1x_sk0)" in (
        capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_reports_error_in_one_line(tmp_path):
    """The one run of the command line itself (flags, one error line, exit status)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "simclr_tf.convert", "--official=r50_9x_sk0",
         f"--model_dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("simclr_tf.convert")]
    assert len(lines) == 1 and lines[0].startswith(
        "simclr_tf.convert: error: --official='r50_9x_sk0' is not a released SimCLR model")
    assert not (tmp_path / "run").exists()


# ------------------------------------------- synthetic official layouts (no fixtures)
class _FakeVariable:
    def __init__(self, name, shape):
        self.name, self.shape = name + ":0", tuple(shape)

    def numpy(self):
        return np.zeros(self.shape, np.float32)


def _official_layout(depth, width, cifar_stem, sk, proj_mode, num_proj, out_dim, classes):
    """{name: variable} named as the official tf2 code (tf-keras) names them.

    Written from the official tf2/resnet.py and model.py: layers are numbered
    per class in creation order (shortcut first in a block; Dense layers when
    built), the stem sits directly under resnet/, SK units hold a padded conv,
    two BNs and two plain 1x1 convs.
    """
    counters = {}
    out = {}

    def uniq(base):
        n = counters.get(base, 0)
        counters[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def conv(scope, k, cin, cout):
        fp, c = uniq("conv2d_fixed_padding"), uniq("conv2d")
        out[f"{scope}/{fp}/{c}/kernel"] = (k, k, cin, cout)

    def plain_conv(scope, cin, cout):
        out[f"{scope}/{uniq('conv2d')}/kernel"] = (1, 1, cin, cout)

    def bn(scope, c, center=True):
        b, s = uniq("batch_norm_relu"), uniq("sync_batch_normalization")
        for leaf in ["gamma"] + (["beta"] if center else []) + ["moving_mean",
                                                               "moving_variance"]:
            out[f"{scope}/{b}/{s}/{leaf}"] = (c,)

    c0 = int(64 * width)
    if cifar_stem:
        conv("resnet", 3, 3, c0), bn("resnet", c0)
    elif sk:
        half = c0 // 2
        conv("resnet", 3, 3, half), bn("resnet", half)
        conv("resnet", 3, half, half), bn("resnet", half)
        conv("resnet", 3, half, c0), bn("resnet", c0)
    else:
        conv("resnet", 7, 3, c0), bn("resnet", c0)
    from simclr_tf.models.resnet import BLOCK_CONFIGS

    block_type, counts = BLOCK_CONFIGS[depth]
    cin = c0
    for g, n in enumerate(counts, start=1):
        f = int(64 * 2 ** (g - 1) * width)
        cout = 4 * f if block_type == "bottleneck" else f
        for j in range(n):
            scope = f"resnet/block_group{g}/" + uniq(
                "bottleneck_block" if block_type == "bottleneck" else "residual_block")
            if j == 0:  # every group's first block projects
                conv(scope, 1, cin, cout), bn(scope, cout)
            if block_type == "basic":
                conv(scope, 3, cin, f), bn(scope, f), conv(scope, 3, f, f), bn(scope, f)
            else:
                conv(scope, 1, cin, f), bn(scope, f)
                if sk:
                    sk_scope = f"{scope}/{uniq('sk__conv2d')}"
                    mid = max(int(f * 0.0625), 32)
                    conv(sk_scope, 3, f, 2 * f), bn(sk_scope, 2 * f)
                    plain_conv(sk_scope, f, mid), bn(sk_scope, mid)
                    plain_conv(sk_scope, mid, 2 * f)
                else:
                    conv(scope, 3, f, f), bn(scope, f)
                conv(scope, 1, f, cout), bn(scope, cout)
            cin = cout
    dim = cin
    layers = [("l_0", out_dim)] if proj_mode == "linear" else [
        (f"nl_{j}", out_dim if j == num_proj - 1 else dim) for j in range(num_proj)
    ] if proj_mode == "nonlinear" else []
    bns = []
    for j, (scope, units) in enumerate(layers):  # BNs at __init__, Dense at build
        last = j == len(layers) - 1
        b, s = uniq("batch_norm_relu"), uniq("sync_batch_normalization")
        bns.append((scope, units, b, s, last))
    width_in = dim
    for scope, units, b, s, last in bns:
        out[f"projection_head/{scope}/{uniq('dense')}/kernel"] = (width_in, units)
        for leaf in ["gamma"] + ([] if last else ["beta"]) + ["moving_mean",
                                                             "moving_variance"]:
            out[f"projection_head/{scope}/{b}/{s}/{leaf}"] = (units,)
        width_in = units
    if classes:
        d = uniq("dense")
        out[f"head_supervised/linear_layer/{d}/kernel"] = (dim, classes)
        out[f"head_supervised/linear_layer/{d}/bias"] = (classes,)
    return {name: _FakeVariable(name, shape) for name, shape in out.items()}


@pytest.mark.parametrize("depth,width,cifar_stem,sk,proj_mode,num_proj,classes", [
    (34, 0.25, False, False, "nonlinear", 2, 1000),   # 7x7 stem, basic blocks
    (18, 0.25, False, True, "linear", 1, 0),          # SK stem + ResNet-D basic blocks
    (34, 0.25, True, True, "nonlinear", 2, 10),       # CIFAR stem + ResNet-D: undecided
    (101, 0.25, False, True, "nonlinear", 3, 10),     # v2 layout, deep
    (152, 0.25, True, False, "none", 1, 10),          # no projection head
    (200, 0.25, False, False, "nonlinear", 3, 0),
])
def test_official_layouts_map_completely(depth, width, cifar_stem, sk, proj_mode,
                                         num_proj, classes):
    variables = _official_layout(depth, width, cifar_stem, sk, proj_mode, num_proj, 128,
                                 classes)
    arch, parsed = convert.infer_architecture(variables)
    assert (arch.resnet_depth, arch.width_multiplier, arch.cifar_stem) == (
        depth, width, cifar_stem)
    undecided = cifar_stem and depth in (18, 34)  # no SK unit, no deep stem
    assert arch.sk_ratio_source == ("undecided" if undecided else "variables")
    assert arch.sk_ratio == (0.0625 if sk and not undecided else 0.0)
    candidates = official_layout.sk_ratio_candidates(arch)
    assert [c.sk_ratio for c in candidates] == ([0.0, 0.0625] if undecided else [arch.sk_ratio])
    arch = next(c for c in candidates if (c.sk_ratio > 0) == sk)
    assert (arch.proj_head_mode, arch.num_classes) == (proj_mode, classes)
    if proj_mode == "nonlinear":
        assert arch.num_proj_layers == num_proj
    cfg = convert.build_config(arch, "unused", None)
    assert cfg.image_size == (32 if cifar_stem else 224)  # the --image_size defaults
    assert cfg.cifar_stem == cifar_stem
    model = tasks.build_model(cfg, arch.num_classes)
    model(tf.zeros([1, 32, 32, 3]), training=False)  # the weights do not depend on the size
    mapping = convert.copy_variables(variables, parsed, model)  # all placed, none left
    assert len(mapping) == len(variables) == len(model.weights)


def test_a_full_disk_during_the_conversion_is_one_line(tmp_path, capsys, monkeypatch):
    """The export inside a conversion raises a plain OSError (ENOSPC): one line, exit 1."""
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".run~tmp"))

    monkeypatch.setattr(convert, "convert", full_disk)
    assert convert.cli(official_saved_model="x", model_dir=str(tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("simclr_tf.convert: error: Could not write the converted model")
    assert "no space left on device; model_dir is left as it was. Free disk space" in err[0]
