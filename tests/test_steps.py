"""simclr_tf.runtime.steps: the XLA-compiled training step equals the plain one."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import optimizers, tasks
from simclr_tf.runtime import steps as steps_lib
from simclr_tf.tasks.base import others

SIZE = 16


def _one_step(train_mode, jit_compile):
    """(metrics, weights before, weights after) of one step from a fixed init."""
    cfg = config_lib.Config(image_size=SIZE, width_multiplier=0.25, proj_out_dim=16,
                            train_mode=train_mode, global_bn=False,
                            fine_tune_after_block=-1, ft_proj_selector=1)
    keras.utils.set_random_seed(0)
    model = tasks.build_model(cfg, 10)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    optimizer = optimizers.LARS(1.0, weight_decay=1e-4)
    optimizer.build(model.trainable_variables)
    task = tasks.build_task(train_mode, cfg.loss)
    metrics = steps_lib.train_metrics(task.metric_names(model))
    # pretraining: the probe's own SGD (probe_learning_rate=0.1), cosine over 10 steps
    own = task.own_optimizers(model, total_steps=10)
    assert len(own) == (train_mode == "pretrain")
    updates = [(optimizer, others(model, own))] + own
    weight_decay = functools.partial(optimizers.weight_decay_in_loss, cfg.optimizer,
                                     cfg.weight_decay)
    step_fn = steps_lib.make_train_step(model, task, updates, metrics,
                                        weight_decay=weight_decay)
    train_steps = steps_lib.make_train_steps(step_fn, tf.distribute.get_strategy(),
                                             optimizer, jit_compile=jit_compile)
    rng = np.random.default_rng(1)
    channels = 6 if train_mode == "pretrain" else 3
    images = tf.constant(rng.uniform(size=(8, SIZE, SIZE, channels)), tf.float32)
    if train_mode == "pretrain":
        images = {"view1": images[..., :3], "view2": images[..., 3:]}
    batch = (images, tf.constant(rng.integers(0, 10, 8), tf.int32))
    before = [v.numpy().copy() for v in model.trainable_variables]
    train_steps(iter(tf.data.Dataset.from_tensors(batch).repeat()), tf.constant(1))
    after = [v.numpy() for v in model.trainable_variables]
    return {n: float(m.result()) for n, m in metrics.items()}, before, after


@pytest.mark.slow
@pytest.mark.parametrize("train_mode", ["pretrain", "finetune"])
def test_xla_compiled_step_matches_the_uncompiled_step(train_mode):
    """jit_compile=True (what "auto" picks on one GPU) must take the same step."""
    plain, before, plain_after = _one_step(train_mode, jit_compile=False)
    xla, before_xla, xla_after = _one_step(train_mode, jit_compile=True)
    for a, b in zip(before, before_xla):  # same starting point
        np.testing.assert_array_equal(a, b)
    for name in plain:
        np.testing.assert_allclose(xla[name], plain[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    # The updates themselves agree (not just weights dominated by their init).
    moved = 0
    for w0, w_plain, w_xla in zip(before, plain_after, xla_after):
        update, update_xla = w_plain - w0, w_xla - w0
        scale = np.max(np.abs(update))
        moved += scale > 0
        np.testing.assert_allclose(update_xla, update, rtol=0, atol=1e-3 * scale + 1e-9)
    # Most weights took a step (at init the zero-initialised last BN of each
    # residual branch blocks the gradient of the convolutions before it).
    assert moved > 0.6 * len(before), (moved, len(before))
