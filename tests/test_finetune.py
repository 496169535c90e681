"""Linear evaluation (train_mode=finetune, fine_tune_after_block=4): a strictly frozen encoder."""

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import tasks
from simclr_tf.runtime import TaskModel


def test_linear_evaluation_moves_the_head_and_nothing_of_the_encoder():
    """After a few SGD steps no encoder weight and no encoder BN statistic has moved
    (bit for bit), while the head's weights did."""
    cfg = config_lib.Config(train_mode="finetune", fine_tune_after_block=4, resnet_depth=18,
                            width_multiplier=0.25, image_size=16, proj_out_dim=8,
                            global_bn=False, batch_norm_decay=0.5)
    network = tasks.build_model(cfg, 5)
    network(tf.zeros([1, 16, 16, 3]))
    trainer = TaskModel(network, tasks.build_task("finetune", cfg.loss),
                        weight_decay=("momentum", 1e-3))
    trainer.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
    encoder = network.encoder
    stats = [v for v in encoder.non_trainable_weights
             if v.name in ("moving_mean", "moving_variance")]
    assert len(stats) > 20 and encoder.trainable_weights == []
    before = {v.path: v.numpy().copy() for v in encoder.weights}
    head_before = {v.path: v.numpy().copy() for v in network.trainable_weights}
    assert head_before  # something trains
    rng = np.random.default_rng(0)
    for step in range(3):
        images = tf.constant(rng.uniform(size=(8, 16, 16, 3)).astype("float32") * 3.0)
        labels = tf.constant(rng.integers(0, 5, size=8).astype("int32"))
        logs = trainer.train_step((images, labels))
        assert np.isfinite(float(logs["loss"]))
    for v in encoder.weights:
        np.testing.assert_array_equal(v.numpy(), before[v.path], err_msg=v.path)
    moved = [p for p, w in head_before.items()
             if np.abs(w - next(v for v in network.trainable_weights if v.path == p).numpy()).max() > 0]
    assert moved and not any(p in before for p in moved)
    assert any("kernel" in p for p in moved)
    # Control: the same steps with the encoder not frozen move its BN statistics.
    network.encoder.freeze(-1)
    trainer2 = TaskModel(network, tasks.build_task("finetune", cfg.loss))
    trainer2.compile(optimizer=keras.optimizers.SGD(0.5))
    trainer2.train_step((images, labels))
    assert any(np.abs(v.numpy() - before[v.path]).max() > 0 for v in stats)
