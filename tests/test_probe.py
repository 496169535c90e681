"""Pretraining's linear probe with its own optimizer (probe_learning_rate > 0)."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf import config as config_lib
from simclr_tf import optimizers, runtime, tasks
from simclr_tf.runtime import TaskModel

TINY = dict(resnet_depth=18, width_multiplier=0.25, image_size=16, proj_out_dim=16,
            num_proj_layers=2, temperature=0.5)


def _batch(n=8, size=16, seed=0, num_classes=5):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, size, size, 6)).astype("float32")
    labels = rng.integers(0, num_classes, size=n).astype("int32")
    views = {"view1": tf.constant(images[..., :3]), "view2": tf.constant(images[..., 3:])}
    return views, tf.constant(labels)


def _trainer(**overrides):
    tf.keras.utils.set_random_seed(3)
    cfg = config_lib.Config(**{**TINY, **overrides})
    trainer = TaskModel(tasks.build_model(cfg, 5), tasks.build_task("pretrain", cfg.loss),
                        weight_decay=(cfg.optimizer, cfg.weight_decay))
    trainer.compile(optimizer=optimizers.LARS(0.5, weight_decay=1e-4))
    trainer(tf.zeros([1, 16, 16, 3]))
    return trainer


def test_probe_takes_a_plain_sgd_step_and_the_encoder_its_lars_step():
    data = _batch()
    own = _trainer(probe_learning_rate=0.05, weight_decay=1e-4)
    head = own.network.supervised_head.trainable_variables
    (_, probe), = own.task.own_optimizers(own.network)
    assert probe == head and len(head) >= 2
    before = [v.numpy().copy() for v in head]
    with tf.GradientTape() as tape:
        loss, _ = own.compute_loss(data)
    grads = tape.gradient(loss, head)
    own.train_step(data)
    # First SGD-momentum step from zero velocity: w - lr * g, with g the
    # probe's cross-entropy gradient alone (no weight decay on the probe).
    for v, w0, g in zip(head, before, grads):
        np.testing.assert_allclose(v.numpy(), w0 - 0.05 * g.numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=v.path)
    shared = _trainer(probe_learning_rate=0.0, weight_decay=1e-4)
    assert shared.task.own_optimizers(shared.network) == []
    shared.train_step(data)
    # Same encoder update either way (stop-gradient); the probe's differs.
    for a, b in zip(own.network.encoder.trainable_variables,
                    shared.network.encoder.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    kernel = [i for i, v in enumerate(head) if "kernel" in v.path][0]
    assert not np.allclose(shared.network.supervised_head.trainable_variables[kernel],
                           head[kernel].numpy(), atol=1e-6)


def test_a_probe_with_its_own_optimizer_gets_no_weight_decay():
    for probe_lr in (0.1, 0.0):
        trainer = _trainer(probe_learning_rate=probe_lr, weight_decay=1e-3,
                           optimizer="momentum")
        _, results = trainer.compute_loss(_batch())
        decayed = [v for v in trainer.network.trainable_variables
                   if "batch_normalization" not in v.path and "bias" not in v.path
                   and (probe_lr == 0 or "head_supervised" not in v.path)]
        expected = sum(1e-3 * float(tf.reduce_sum(tf.square(v))) / 2 for v in decayed)
        np.testing.assert_allclose(float(results["weight_decay"]), expected, rtol=1e-5)


def test_finetuning_has_no_separate_probe():
    cfg = config_lib.Config(**TINY, train_mode="finetune", probe_learning_rate=0.1)
    model = tasks.build_model(cfg, 5)
    assert tasks.build_task("finetune", cfg.loss).own_optimizers(model) == []


def _with_clean(data, seed=1):
    views, labels = data
    clean = tf.random.stateless_uniform([views["view1"].shape[0], 16, 16, 3], [seed, 0])
    return {**views, "clean": clean}, labels


def test_clean_view_probe_reads_the_eval_image_through_the_inference_encoder():
    """probe_view=clean: the probe's loss is the cross-entropy of the head on
    stop_gradient(encoder(clean, training=False)) with each label once (a NumPy
    softmax here); the contrastive part is unchanged."""
    data = _batch()
    images, labels = _with_clean(data)
    clean = images["clean"]
    trainer = _trainer(probe_view="clean")
    _, results = trainer.compute_loss((images, labels))
    net = trainer.network
    h = net.encoder(clean, training=False).numpy()  # BN moving statistics: no update
    logits = net.supervised_head(tf.constant(h), training=True).numpy().astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    y = labels.numpy()
    np.testing.assert_allclose(float(results["sup_loss"]), -log_p[np.arange(8), y].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(float(results["sup_acc"]),
                               np.mean(log_p.argmax(axis=1) == y), rtol=1e-6)
    _, augmented = _trainer(probe_view="augmented").compute_loss(data)
    np.testing.assert_allclose(float(results["contrast_loss"]),
                               float(augmented["contrast_loss"]), rtol=1e-6)
    assert abs(float(results["sup_loss"]) - float(augmented["sup_loss"])) > 1e-4


def test_clean_view_probe_leaves_the_encoder_step_unchanged():
    data = _batch()
    clean = _trainer(probe_view="clean")
    clean.train_step(_with_clean(data))
    augmented = _trainer(probe_view="augmented")
    augmented.train_step(data)
    for a, b in zip(clean.network.encoder.trainable_variables,
                    augmented.network.encoder.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides,fragment", [
    (dict(lineareval_while_pretraining=False), "lineareval_while_pretraining"),
    (dict(train_mode="finetune"), "train_mode=pretrain"),
])
def test_clean_view_without_a_pretraining_probe_is_refused(overrides, fragment):
    with pytest.raises(config_lib.ConfigError, match="probe_view") as err:
        config_lib.Config(probe_view="clean", **overrides).validate()
    assert fragment in str(err.value)


def _cfg(tmp_path, **overrides):
    values = dict(dataset="cifar10", train_split="train", eval_split="test",
                  image_size=16, resnet_depth=18, width_multiplier=0.25,
                  train_batch_size=16, eval_batch_size=32, train_steps=2,
                  warmup_epochs=0.0, proj_out_dim=16, checkpoint_steps=2,
                  model_dir=str(tmp_path / "run"))
    values.update(overrides)
    return config_lib.resolve(None, values)


@pytest.mark.slow
def test_run_checkpoints_the_probe_optimizer_and_resumes_older_runs(tmp_path):
    """A run of the shared-probe layout (0.2) resumes with the probe's own SGD;
    a run with it restores its momentum exactly."""
    with tfds.testing.mock_data(num_examples=64):
        old = runtime.build(_cfg(tmp_path, probe_learning_rate=0.0))
        assert len(old.updates) == 1  # the probe under the run's optimizer
        os.makedirs(old.cfg.model_dir)
        runtime.train(old)
        head_old = [v.numpy() for v in old.model.supervised_head.weights]

        new = runtime.build(_cfg(tmp_path, train_steps=4, probe_learning_rate=0.1))
        assert len(new.updates) == 2
        probe_optimizer, probe = new.updates[1]
        assert probe == new.model.supervised_head.trainable_variables
        assert "resumed from" in new.checkpointer.restore_for_training()
        # Everything but the probe optimizer restored; its step follows the run.
        for v, w in zip(new.model.supervised_head.weights, head_old):
            np.testing.assert_array_equal(v.numpy(), w)
        assert int(probe_optimizer.iterations) == 2 == new.step
        runtime.train(new)
        assert new.step == 4 and int(probe_optimizer.iterations) == 4
        # Under the key 0.2 wrote, which the pretraining task declares.
        assert any(name.startswith("probe_optimizer/")
                   for name, _ in tf.train.list_variables(new.checkpointer.latest))
        slots = [v.numpy() for v in probe_optimizer.variables]
        assert any(np.abs(s).sum() > 0 for s in slots[1:])

        again = runtime.build(_cfg(tmp_path, train_steps=4, probe_learning_rate=0.1))
        again.checkpointer.restore_for_training()
        for v, s in zip(again.updates[1][0].variables, slots):
            np.testing.assert_array_equal(v.numpy(), s, err_msg=v.path)


def test_runtime_names_no_objective_the_tasks_declare_theirs():
    """The probe's checkpoint key and resume-free flag, the teacher and the advice
    to train a head come from the tasks, not from runtime/ (fails on code that
    names them in runtime/)."""
    import inspect

    from simclr_tf.runtime import checkpointer, experiment, loop, run_dir

    assert tasks.PretrainTask.own_optimizer_keys == ("probe_optimizer",)
    assert "probe_learning_rate" in run_dir.RESUME_FREE_KEYS
    assert tasks.SUPERVISED_MODES == ("finetune",)
    for module in (checkpointer, experiment, loop, run_dir):
        source = inspect.getsource(module)
        for name in ("probe_optimizer", "probe_learning_rate", "teacher", "Teacher",
                     "train_mode=finetune", '"distill"', '"pretrain"', '"finetune"'):
            assert name not in source, (module.__name__, name)
