"""Mixed precision (``--precision=bfloat16`` / ``float16``) and ``--jit_compile``.

The bf16 path is checked against the float32 path on the same batch and the
same weights: the step's loss and its weight updates must agree to bfloat16
accuracy, while everything that must stay float32 (variables, optimizer
slots, z, logits, losses) is checked by dtype. NT-Xent's float32 computation
is checked against a float64 NumPy reference of Eq. 1 on the bf16-rounded
embeddings: a loss computed in bfloat16 would miss it by ~1e-2.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf import config as config_lib
from simclr_tf import distribute, losses, optimizers, runtime, tasks
from simclr_tf.loss_scale import DynamicLossScale
from simclr_tf.runtime import TaskModel
from simclr_tf.runtime import steps as steps_lib
from simclr_tf.runtime.run_dir import read_train_log

SIZE = 16
BATCH = 16


@pytest.fixture(autouse=True)
def float32_policy():
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _cfg(**overrides):
    values = dict(resnet_depth=18, width_multiplier=0.25, image_size=SIZE,
                  proj_out_dim=16, weight_decay=1e-4)
    values.update(overrides)
    return config_lib.resolve(None, values)


def _build(precision, optimizer=None, loss_scale=None):
    keras.utils.set_random_seed(0)
    cfg = _cfg(precision=precision)
    model = TaskModel(tasks.build_model(cfg, num_classes=10),
                      tasks.build_task("pretrain", cfg.loss),
                      weight_decay=(cfg.optimizer, cfg.weight_decay), loss_scale=loss_scale)
    model.compile(optimizer=optimizer or optimizers.LARS(0.5, momentum=0.9,
                                                         weight_decay=1e-4))
    model(tf.zeros([1, SIZE, SIZE, 3]))
    model.optimizer.build(model.trainable_variables)
    return model


def _batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(BATCH, SIZE, SIZE, 6)).astype("float32")
    labels = rng.integers(0, 10, size=BATCH).astype("int32")
    views = {"view1": tf.constant(images[..., :3]), "view2": tf.constant(images[..., 3:])}
    return views, tf.constant(labels)


def _one_step(model, batch):
    """One step through the trainer's loop; returns its metrics."""
    before = [v.numpy() for v in model.trainable_variables]
    steps = steps_lib.make_train_steps(model.train_step, tf.distribute.get_strategy(),
                                       model.optimizer)
    steps(iter(tf.data.Dataset.from_tensors(batch).repeat()), tf.constant(1))
    assert int(model.optimizer.iterations.numpy()) == 1
    assert any(np.any(v.numpy() != b) for v, b in zip(model.trainable_variables, before))
    return {m.name: float(m.result()) for m in model.metrics}


def _gradients(model, batch):
    with tf.GradientTape() as tape:
        loss, _ = model.compute_loss(batch, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g.dtype == tf.float32 for g in grads)
    return [g.numpy().ravel() for g in grads]


def _nt_xent_reference(z1, z2, temperature):
    """The official objective, 2 x Eq. 1 of SimCLR, in float64 NumPy (one device, hidden_norm)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / temperature
    np.fill_diagonal(sim, -np.inf)
    positives = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    log_prob = sim - np.log(np.exp(sim).sum(axis=1, keepdims=True))
    return -2 * log_prob[np.arange(2 * n), positives].mean()


def test_precision_and_jit_compile_flags_are_validated():
    cfg = config_lib.resolve(None, {})
    assert (cfg.precision, cfg.jit_compile) == ("float32", "auto")
    with pytest.raises(config_lib.ConfigError, match="precision"):
        config_lib.resolve(None, {"precision": "half"})
    assert config_lib.resolve(None, {"precision": "float16"}).precision == "float16"
    with pytest.raises(config_lib.ConfigError, match="jit_compile"):
        config_lib.resolve(None, {"jit_compile": "yes"})
    # A YAML boolean (`jit_compile: true`) means the same as the string.
    assert config_lib.resolve(None, {"jit_compile": True}).jit_compile == "true"
    assert config_lib.resolve(None, {"jit_compile": False}).jit_compile == "false"


def test_jit_compile_resolution():
    strategy = tf.distribute.get_strategy()
    assert distribute.resolve_jit_compile("true", strategy) is True
    assert distribute.resolve_jit_compile("false", strategy) is False
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    assert distribute.resolve_jit_compile("auto", strategy) is on_gpu


def test_bfloat16_model_dtypes():
    model = _build("bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"  # not leaked
    assert model.network.encoder.dtype_policy.name == "mixed_bfloat16"
    assert all(v.dtype == "float32" for v in model.variables)
    slots = [v for v in model.optimizer.variables if v.dtype != "int64"]
    assert slots and all(v.dtype == "float32" for v in slots)
    # BN keeps float32 moving statistics.
    bn = [v for v in model.network.encoder.non_trainable_variables if "moving" in v.path]
    assert bn and all(v.dtype == "float32" for v in bn)
    outputs = model(tf.random.uniform([4, SIZE, SIZE, 3]), training=False)
    assert outputs["final_avg_pool"].dtype == tf.bfloat16  # the encoder runs in bf16
    assert outputs["proj_head_output"].dtype == tf.float32
    assert outputs["logits_sup"].dtype == tf.float32
    # float32 builds are unchanged.
    assert _build("float32").network.encoder.dtype_policy.name == "float32"


@pytest.mark.slow
def test_bfloat16_train_step_matches_float32():
    batch = _batch()
    reference = _build("float32")
    model = _build("bfloat16")
    model.set_weights(reference.get_weights())

    # Gradients of the same loss on the same batch and weights (before the
    # step; BN statistics are not updated outside the step's trainable path).
    grads32 = _gradients(reference, batch)
    grads16 = _gradients(model, batch)
    model.set_weights(reference.get_weights())  # undo the BN moving-average updates

    start = [v.numpy().copy() for v in reference.trainable_variables]
    logs32 = _one_step(reference, batch)
    logs16 = _one_step(model, batch)
    # The weight updates of the step agree (LARS scales each layer's update to
    # its weight norm, so direction and size follow the gradients).
    updated = 0
    for w0, v32, v16 in zip(start, reference.trainable_variables, model.trainable_variables):
        a, b = (v32.numpy() - w0).ravel(), (v16.numpy() - w0).ravel()
        if np.linalg.norm(a) == 0:
            assert np.linalg.norm(b) == 0, v16.path
            continue
        updated += 1
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cosine > 0.9, (v16.path, cosine)
        np.testing.assert_allclose(np.linalg.norm(b), np.linalg.norm(a), rtol=0.15,
                                   err_msg=v16.path)
    assert updated > len(start) // 2

    assert all(np.isfinite(v) for v in logs16.values())
    assert all(v.dtype == "float32" for v in model.variables)
    assert all(v.dtype != "bfloat16" for v in model.optimizer.variables)
    for name in ("loss", "contrast_loss", "sup_loss"):
        np.testing.assert_allclose(logs16[name], logs32[name], rtol=5e-3, err_msg=name)

    # bf16 gradients point where float32's do. (Residual branches whose last BN
    # gamma starts at zero have zero gradient in both and are skipped.)
    compared = 0
    for variable, a, b in zip(model.trainable_variables, grads32, grads16):
        if np.linalg.norm(a) == 0:
            assert np.linalg.norm(b) == 0, variable.path
            continue
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cosine > 0.9, (variable.path, cosine)
        np.testing.assert_allclose(np.linalg.norm(b), np.linalg.norm(a), rtol=0.15,
                                   err_msg=variable.path)
        compared += 1
    assert compared > 20


def test_nt_xent_under_bfloat16_policy_is_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(32, 128)).astype("float32")
    z2 = (z1 + 0.5 * rng.normal(size=(32, 128))).astype("float32")
    z1_16, z2_16 = tf.cast(z1, tf.bfloat16), tf.cast(z2, tf.bfloat16)

    loss16, logits16, _ = losses.nt_xent_loss(z1_16, z2_16, temperature=0.1)
    loss32, _, _ = losses.nt_xent_loss(z1, z2, temperature=0.1)

    assert loss16.dtype == tf.float32 and logits16.dtype == tf.float32
    # Same as the float32 loss up to the rounding of z to bfloat16 ...
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)
    # ... and computed in float32 from the rounded z: a bf16 computation would
    # be off by about 1e-2 here.
    rounded = [tf.cast(z, tf.float32).numpy() for z in (z1_16, z2_16)]
    np.testing.assert_allclose(float(loss16), _nt_xent_reference(*rounded, 0.1),
                               rtol=1e-5)


def test_onednn_default_only_fills_an_unset_variable(monkeypatch):
    import types

    from simclr_tf import env as _tf_env

    # TensorFlow is already imported here, so nothing may change.
    monkeypatch.delenv(_tf_env.ONEDNN_ENV, raising=False)
    assert _tf_env.prefer_onednn() is False
    assert _tf_env.ONEDNN_ENV not in os.environ

    # A fresh process on an x86-64 Linux CPU with AVX2 + FMA.
    monkeypatch.setattr(_tf_env, "sys", types.SimpleNamespace(modules={}))
    monkeypatch.setattr(_tf_env.platform, "system", lambda: "Linux")
    monkeypatch.setattr(_tf_env.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(_tf_env, "cpu_flags", lambda: {"avx2", "fma", "sse4_2"})
    assert _tf_env.prefer_onednn() is True
    assert os.environ[_tf_env.ONEDNN_ENV] == "1"
    # A user's choice wins.
    monkeypatch.setenv(_tf_env.ONEDNN_ENV, "0")
    assert _tf_env.prefer_onednn() is False
    assert os.environ[_tf_env.ONEDNN_ENV] == "0"
    # No AVX2: left to TensorFlow.
    monkeypatch.delenv(_tf_env.ONEDNN_ENV)
    monkeypatch.setattr(_tf_env, "cpu_flags", lambda: {"sse4_2"})
    assert _tf_env.prefer_onednn() is False
    assert not _tf_env.cpu_has_native_bf16()
    monkeypatch.setattr(_tf_env, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert _tf_env.cpu_has_native_bf16()


def _update(model, batch):
    """The one-step change of every trainable weight, and the step's metrics."""
    before = [v.numpy() for v in model.trainable_variables]
    steps = steps_lib.make_train_steps(model.train_step, tf.distribute.get_strategy(),
                                       model.optimizer)
    steps(iter(tf.data.Dataset.from_tensors(batch).repeat()), tf.constant(1))
    metrics = {m.name: float(m.result()) for m in model.metrics}
    return [v.numpy() - b for v, b in zip(model.trainable_variables, before)], metrics


@pytest.mark.slow
def test_float16_step_with_loss_scaling_matches_float32():
    """One SGD step in mixed_float16 changes every weight as float32 does, to
    float16 accuracy; the encoder computes in float16, the rest stays float32."""
    batch = _batch()
    sgd = lambda: optimizers.build_optimizer("momentum", 0.1)  # noqa: E731
    reference = _build("float32", sgd())
    weights = reference.get_weights()
    ref, ref_metrics = _update(reference, batch)
    scale = DynamicLossScale(initial_scale=2.0 ** 12)
    model = _build("float16", sgd(), loss_scale=scale)
    model.set_weights(weights)
    assert model.network.encoder.dtype_policy.name == "mixed_float16"
    assert all(v.dtype == "float32" for v in model.variables)
    out = model(tf.random.uniform([2, SIZE, SIZE, 3]))
    assert out["final_avg_pool"].dtype == tf.float16
    assert out["proj_head_output"].dtype == tf.float32
    got, metrics = _update(model, batch)
    assert metrics["skipped_steps"] == 0
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=5e-3)
    bf16, _ = _update(_build("bfloat16", sgd()), batch)

    def relative_errors(update):
        errors = []
        for r, g, v in zip(ref, update, model.trainable_variables):
            if np.linalg.norm(r) == 0:  # residual branches whose last BN gamma is 0
                assert np.linalg.norm(g) == 0, v.path
                continue
            errors.append(np.linalg.norm(g - r) / np.linalg.norm(r))
        return np.array(errors)

    # The first step from random init on 16 images amplifies rounding: measured
    # median relative error of the update 0.08 in float16 (11 significant
    # bits), 0.18 in bfloat16 (8 bits). Unscaling wrong by the scale (4096)
    # or a float16 loss would be far outside.
    f16, b16 = relative_errors(got), relative_errors(bf16)
    assert len(f16) > 20 and f16.max() < 0.3 and np.median(f16) < 0.12, f16
    assert np.median(f16) < 0.7 * np.median(b16), (np.median(f16), np.median(b16))
    # Unscaled: without the division by the scale the update would be 4096x.
    assert float(scale.scale.numpy()) == 2.0 ** 12 and int(scale.good_steps.numpy()) == 1


@pytest.mark.slow
def test_loss_scale_backs_off_on_overflow_and_grows_after_finite_steps():
    batch = _batch()
    # 2**40 overflows float16 (max 65504) in the encoder's backward pass.
    scale = DynamicLossScale(initial_scale=2.0 ** 40)
    model = _build("float16", optimizers.build_optimizer("momentum", 0.1),
                   loss_scale=scale)
    update, metrics = _update(model, batch)
    assert metrics["skipped_steps"] == 1
    assert all(not np.any(d) for d in update)  # skipped: no weight moved
    assert int(model.optimizer.iterations.numpy()) == 1
    assert float(scale.scale.numpy()) == 2.0 ** 39
    # Growth: after growth_interval finite steps in a row the scale doubles.
    grow = DynamicLossScale(initial_scale=4.0, growth_interval=2)
    for finite, expected in ((True, 4.0), (True, 8.0), (False, 4.0), (True, 4.0)):
        grow.update(tf.constant(finite))
        assert float(grow.scale.numpy()) == expected
    floor = DynamicLossScale(initial_scale=1.0)
    floor.update(tf.constant(False))
    assert float(floor.scale.numpy()) == 1.0  # never below 1


@pytest.mark.slow
def test_float16_run_logs_and_checkpoints_its_loss_scale_and_resumes_a_float32_run(tmp_path):
    values = dict(dataset="cifar10", train_split="train", eval_split="test",
                  image_size=SIZE, width_multiplier=0.25, train_batch_size=16,
                  train_steps=2, warmup_epochs=0.0, proj_out_dim=16, log_every_steps=1,
                  checkpoint_steps=2, model_dir=str(tmp_path / "run"))
    with tfds.testing.mock_data(num_examples=64):
        first = runtime.build(config_lib.resolve(None, values))
        assert first.loss_scale is None
        os.makedirs(values["model_dir"])
        runtime.train(first)
        # The same run, lengthened in float16: the float32 checkpoint lacks the
        # loss scale, which starts at its initial value.
        values.update(precision="float16", train_steps=4)
        second = runtime.build(config_lib.resolve(None, values))
        runtime.train(second)
        assert second.step == 4
    log = read_train_log(values["model_dir"])
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert "loss_scale" not in log[1]
    # The scale starts at 2**15 and halves at each overflowing (skipped) step,
    # as Keras' LossScaleOptimizer does in a run's first steps.
    skipped = 0
    for entry in log[2:]:
        skipped += entry["skipped_steps"]
        assert entry["loss_scale"] == 2.0 ** (15 - skipped), log
    names = [n for n, _ in tf.train.list_variables(second.checkpointer.latest)]
    assert any(n.startswith("loss_scale/") for n in names), names

