"""SimCLRModel with its tasks (through TaskModel): steps, distribution, freezing, config."""

import numpy as np
import pytest
import tensorflow as tf

from multidevice import run_with_devices
from simclr_tf import config as config_lib
from simclr_tf import optimizers, tasks
from simclr_tf.models import simclr_model
from simclr_tf.runtime import TaskModel

TINY = dict(resnet_depth=18, width_multiplier=0.25, image_size=16, proj_out_dim=16,
            num_proj_layers=2, temperature=0.5)


def _model(num_classes=5, **overrides):
    """A TaskModel: the network of the config with the task of its train_mode
    and the config's weight decay."""
    cfg = config_lib.Config(**{**TINY, **overrides})
    return TaskModel(tasks.build_model(cfg, num_classes),
                     tasks.build_task(cfg.train_mode, cfg.loss),
                     weight_decay=(cfg.optimizer, cfg.weight_decay))


def _batch(n=8, size=16, seed=0, views=2, num_classes=5):
    """``(images, labels)`` with views=1, else ``({"view1", "view2"}, labels)``."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, size, size, 3 * views)).astype("float32")
    labels = rng.integers(0, num_classes, size=n).astype("int32")
    if views == 2:
        return _views(images), tf.constant(labels)
    return tf.constant(images), tf.constant(labels)


def _views(images):
    """Two views of [B, H, W, 6] (channels 0:3 and 3:6) as a pretraining batch's dict."""
    return {"view1": tf.constant(images[..., :3]), "view2": tf.constant(images[..., 3:])}


def test_call_outputs_and_shapes():
    """h is the encoder's output, z and the hidden layers the projection head's on h,
    and the probe's logits the supervised head's on h, with no gradient into the
    encoder (stop_gradient(h))."""
    model = _model()
    network = model.network
    images = tf.random.uniform([3, 16, 16, 3], seed=3)
    network(images)
    rng = np.random.default_rng(5)
    for v in network.supervised_head.trainable_weights:  # the probe starts at zero
        v.assign(rng.normal(size=v.shape).astype("float32"))
    out = model(images)
    assert set(out) == {"final_avg_pool", "proj_head_output", "proj_head_hidden_1",
                        "proj_head_hidden_2", "logits_sup"}
    assert out["final_avg_pool"].shape == (3, network.encoder.feature_dim)
    assert out["proj_head_output"].shape == (3, 16)
    assert out["logits_sup"].shape == (3, 5)
    h = network.encoder(images, training=False)
    np.testing.assert_allclose(out["final_avg_pool"].numpy(), h.numpy(), rtol=1e-6, atol=1e-6)
    z, hiddens = network.projection_head(h, training=False)
    np.testing.assert_allclose(out["proj_head_output"].numpy(), z.numpy(), rtol=1e-5, atol=1e-6)
    for i in (1, 2):
        np.testing.assert_allclose(out[f"proj_head_hidden_{i}"].numpy(), hiddens[i].numpy(),
                                   rtol=1e-5, atol=1e-6)
    logits = network.supervised_head(h, training=False)
    np.testing.assert_allclose(out["logits_sup"].numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)
    # Not trivially equal: the logits and z are not zero (their scale follows the random
    # initialisation: only non-zero is asserted).
    assert np.abs(out["logits_sup"].numpy()).max() > 1e-6
    assert np.abs(out["proj_head_output"].numpy()).max() > 1e-6
    # stop_gradient(h): the logits send no gradient into the encoder, z does.
    with tf.GradientTape(persistent=True) as tape:
        out = network(images, training=True)
        from_logits = tf.reduce_sum(out["logits_sup"] ** 2)
        from_z = tf.reduce_sum(out["proj_head_output"] ** 2)
    encoder_vars = network.encoder.trainable_variables
    assert all(g is None for g in tape.gradient(from_logits, encoder_vars))
    head_grads = tape.gradient(from_logits, network.supervised_head.trainable_variables)
    assert all(g is not None and np.abs(g.numpy()).max() > 0 for g in head_grads)
    assert sum(g is not None for g in tape.gradient(from_z, encoder_vars)) == len(encoder_vars)


def test_call_on_views_gives_both_views_and_the_clean_views_probe():
    model = _model().network
    views, _ = _batch(n=4)
    clean = tf.random.uniform([4, 16, 16, 3], seed=2)
    out = model(views)
    both = model(tf.concat([views["view1"], views["view2"]], 0))
    # Inference-mode BN: the 2B rows are those of the stacked views, view 1 first.
    for key in both:
        assert out[key].shape[0] == 8, key
        np.testing.assert_allclose(out[key].numpy(), both[key].numpy(), rtol=1e-5, atol=1e-6)
    with_clean = model({**views, "clean": clean})
    np.testing.assert_allclose(with_clean["proj_head_output"].numpy(),
                               out["proj_head_output"].numpy(), rtol=1e-5, atol=1e-6)
    assert with_clean["logits_sup"].shape == (4, 5)  # the probe classifies the clean view
    np.testing.assert_allclose(with_clean["logits_sup"].numpy(),
                               model(clean)["logits_sup"].numpy(), rtol=1e-5, atol=1e-6)
    for bad in ({"view1": clean}, {**views, "view3": clean}):
        with pytest.raises(ValueError, match="view1 and view2 required"):
            model(bad)


def test_probe_does_not_change_the_encoder_update():
    """The linear probe reads stop_gradient(h): encoder updates are identical
    with and without it."""
    data = _batch()
    weights = []
    for probe in (True, False):
        tf.keras.utils.set_random_seed(1)
        model = _model(lineareval_while_pretraining=probe)
        model.compile(optimizer=optimizers.LARS(0.5, weight_decay=1e-4))
        model(tf.zeros([1, 16, 16, 3]))
        model.train_step(data)
        weights.append([v.numpy() for v in model.network.encoder.trainable_variables])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_pretrain_logs_and_probe_learns_on_a_fixed_batch():
    tf.keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer=optimizers.LARS(1.0, weight_decay=1e-6))
    data = _batch()
    logs = []
    for _ in range(15):
        for m in model.metrics:
            m.reset_state()
        logs.append({k: float(v) for k, v in model.train_step(data).items()})
    first, last = logs[0], logs[-1]
    assert {"loss", "contrast_loss", "contrast_acc", "contrast_entropy", "sup_loss",
            "sup_acc", "weight_decay"} == set(first)
    # A random net starts near chance on both tasks: the contrastive loss (the
    # official scale, both directions) near 2 ln(2N-1) (2N = 16 views), the
    # 5-way probe near ln(5).
    assert abs(first["contrast_loss"] - 2 * np.log(15)) < 1.0
    assert abs(first["sup_loss"] - np.log(5)) < 1.0
    # On one fixed batch both must fit: the encoder learns the pairs, the
    # probe the labels.
    assert last["contrast_loss"] < first["contrast_loss"] - 0.3, (first, last)
    assert last["sup_loss"] < first["sup_loss"] - 0.3, (first, last)
    assert last["contrast_acc"] > first["contrast_acc"]


def test_fit_traces_the_train_step_once():
    # fit builds both optimizers (LARS for the encoder, the probe's SGD) before
    # it traces the step; a step that creates variables is traced twice.
    traces = []

    class Counting(TaskModel):
        def train_step(self, data):
            traces.append(1)
            return super().train_step(data)

    cfg = config_lib.Config(**TINY)
    model = Counting(tasks.build_model(cfg, 5), tasks.build_task("pretrain", cfg.loss))
    model.compile(optimizer=optimizers.LARS(0.5, weight_decay=1e-4))
    model(tf.zeros([1, 16, 16, 3]))
    model.fit(tf.data.Dataset.from_tensors(_batch()).repeat(), steps_per_epoch=2, verbose=0)
    (probe_optimizer, probe), = model._own_optimizers()  # the probe's, built by fit
    assert probe_optimizer.built and probe == model.network.supervised_head.trainable_variables
    assert int(model.optimizer.iterations) == 2 and len(traces) == 1


def test_l2_weight_decay_for_non_lars_optimizers():
    # The probe under the pretraining optimizer (the official code's way; with
    # its own optimizer it is not decayed: tests/test_probe.py).
    model = _model(weight_decay=1e-3, optimizer="momentum", probe_learning_rate=0.0)
    model.compile(optimizer=optimizers.build_optimizer("momentum", 0.1))
    model(tf.zeros([1, 16, 16, 3]))
    _, results = model.compute_loss(_batch())
    expected = sum(1e-3 * float(tf.reduce_sum(tf.square(v))) / 2
                   for v in model.trainable_variables
                   if "batch_normalization" not in v.path and "bias" not in v.path)
    np.testing.assert_allclose(float(results["weight_decay"]), expected, rtol=1e-5)
    lars_model = _model(weight_decay=1e-3, probe_learning_rate=0.0)
    lars_model.compile(optimizer=optimizers.LARS(0.1, weight_decay=1e-3))
    lars_model(tf.zeros([1, 16, 16, 3]))
    loss, results = lars_model.compute_loss(_batch())
    # LARS decays inside its update: the penalty is reported, and only the
    # supervised head's part (which LARS leaves out) is added, as the official code.
    assert float(results["weight_decay"]) > 0
    head = sum(1e-3 * float(tf.reduce_sum(tf.square(v))) / 2
               for v in lars_model.trainable_variables
               if "head_supervised" in v.path and "bias" not in v.path
               and "batch_normalization" not in v.path)
    assert 0 < head < float(results["weight_decay"])
    np.testing.assert_allclose(
        float(loss), float(results["contrast_loss"] + results["sup_loss"]) + head,
        rtol=1e-6)


def test_finetune_freezes_blocks_and_their_bn_statistics():
    model = _model(train_mode="finetune", fine_tune_after_block=2, ft_proj_selector=1)
    model.compile(optimizer=optimizers.build_optimizer("momentum", 0.1))
    model(tf.zeros([1, 16, 16, 3]))
    encoder = model.network.encoder
    frozen = encoder.stem.weights + encoder.block_groups[0].weights + \
        encoder.block_groups[1].weights
    free = encoder.block_groups[3].weights
    before_frozen = [v.numpy().copy() for v in frozen]
    before_free = [v.numpy().copy() for v in free]
    model.train_step(_batch(views=1))
    for v, old in zip(frozen, before_frozen):
        np.testing.assert_array_equal(v.numpy(), old, err_msg=v.path)
    assert any(not np.array_equal(v.numpy(), old) for v, old in zip(free, before_free))


def test_linear_eval_mode_only_trains_the_head():
    model = _model(train_mode="finetune", fine_tune_after_block=4)
    model.compile(optimizer=optimizers.build_optimizer("momentum", 0.1))
    model(tf.zeros([1, 16, 16, 3]))
    encoder_before = [v.numpy().copy() for v in model.network.encoder.weights]
    model.train_step(_batch(views=1))
    for v, old in zip(model.network.encoder.weights, encoder_before):
        np.testing.assert_array_equal(v.numpy(), old)
    assert [v.path for v in model.trainable_variables
            if "encoder" in v.path] == []


def test_test_step_top1_top5_match_numpy():
    model = _model(num_classes=7)
    images, _ = _batch(n=32, views=1)
    labels = tf.constant(np.random.default_rng(3).integers(0, 7, 32), tf.int32)
    metrics = model.test_step((images, labels))
    logits = model(images)["logits_sup"].numpy()
    order = np.argsort(-logits, axis=1)
    top1 = np.mean(order[:, 0] == labels.numpy())
    top5 = np.mean([labels.numpy()[i] in order[i, :5] for i in range(32)])
    assert float(metrics["top1"]) == pytest.approx(top1)
    assert float(metrics["top5"]) == pytest.approx(top5)


def test_unlabelled_examples_are_masked_from_the_probe():
    model = _model()
    model(tf.zeros([1, 16, 16, 3]))
    images, labels = _batch()
    _, all_labelled = model.compute_loss((images, labels), training=False)
    masked = tf.concat([labels[:4], -tf.ones([4], tf.int32)], 0)
    _, half = model.compute_loss((images, masked), training=False)
    _, first_half = model.compute_loss(({k: v[:4] for k, v in images.items()}, labels[:4]),
                                       training=False)
    # Eval-mode BN makes each example independent of the others.
    np.testing.assert_allclose(float(half["sup_loss"]), float(first_half["sup_loss"]),
                               rtol=1e-5)
    assert float(all_labelled["sup_loss"]) != pytest.approx(float(half["sup_loss"]))


def test_get_config_round_trip_gives_identical_outputs():
    model = _model(train_mode="finetune", ft_proj_selector=1).network
    images = tf.random.uniform([2, 16, 16, 3], seed=1)
    out = model(images)
    clone = simclr_model.SimCLRModel.from_config(model.get_config())
    clone(images)
    clone.set_weights(model.get_weights())
    out2 = clone(images)
    for key in out:
        np.testing.assert_allclose(out[key].numpy(), out2[key].numpy(), rtol=1e-6)
    assert clone.probe is False and clone.ft_proj_selector == 1


_TWO_REPLICA_STEP = """
import json, numpy as np, tensorflow as tf
from simclr_tf import config as config_lib, optimizers, tasks
from simclr_tf.runtime import TaskModel
cfg = config_lib.Config(resnet_depth=18, width_multiplier=0.25, image_size=16,
                        proj_out_dim=16, temperature=0.5, global_bn=True)
rng = np.random.default_rng(0)
images = rng.uniform(size=(8, 16, 16, 6)).astype("float32")
labels = rng.integers(0, 5, size=8).astype("int32")

def one_step(strategy):
    tf.keras.utils.set_random_seed(4)
    with strategy.scope():
        model = TaskModel(tasks.build_model(cfg, 5), tasks.build_task("pretrain", cfg.loss),
                          weight_decay=(cfg.optimizer, cfg.weight_decay))
        model.compile(optimizer=optimizers.LARS(0.5, weight_decay=1e-4))
        model(tf.zeros([1, 16, 16, 3]))
        model.optimizer.build(model.trainable_variables)
    start = [v.numpy().copy() for v in model.trainable_variables]
    views = {"view1": images[..., :3], "view2": images[..., 3:]}
    ds = tf.data.Dataset.from_tensor_slices((views, labels)).batch(8)
    dist = strategy.experimental_distribute_dataset(ds)
    @tf.function
    def step(batch):
        return strategy.run(model.train_step, args=(batch,))
    logs = step(next(iter(dist)))
    logs = {k: float(strategy.reduce("MEAN", v, axis=None)) for k, v in logs.items()}
    moving = np.concatenate([v.numpy().ravel()
                             for v in model.network.encoder.non_trainable_variables]).tolist()
    updates = [v.numpy() - w0 for v, w0 in zip(model.trainable_variables, start)]
    return logs, updates, moving, [v.path for v in model.trainable_variables]

devices = tf.config.list_logical_devices("CPU")
one = one_step(tf.distribute.OneDeviceStrategy(devices[0].name))
two = one_step(tf.distribute.MirroredStrategy([d.name for d in devices]))
# The step's update of each weight, compared relative to its own size (the
# weights themselves are dominated by their shared initial values).
diffs = [float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
         for a, b in zip(one[1], two[1]) if np.max(np.abs(a)) > 0]
print(json.dumps({"loss": [one[0]["contrast_loss"], two[0]["contrast_loss"]],
                  "sup": [one[0]["sup_loss"], two[0]["sup_loss"]],
                  "max_rel_diff": max(diffs), "updated": len(diffs),
                  "worst": [p for p, u in zip(one[3], one[1]) if np.max(np.abs(u)) > 0][
                      int(np.argmax(diffs))],
                  "moving": [one[2], two[2]]}))
"""


@pytest.mark.slow
def test_one_device_and_two_replicas_take_the_same_step():
    """Global BN + all-gathered negatives + loss scaling: a step on 2 replicas
    equals the step on one device with the global batch."""
    out = run_with_devices(_TWO_REPLICA_STEP, n_devices=2)
    np.testing.assert_allclose(out["loss"][0], out["loss"][1], rtol=1e-5)
    np.testing.assert_allclose(out["sup"][0], out["sup"][1], rtol=1e-5)
    assert out["updated"] > 30  # most weights moved (not a 0 = 0 comparison)
    assert out["max_rel_diff"] < 1e-3, out["worst"]
    # Synchronised BN: the moving statistics match the global batch's too.
    np.testing.assert_allclose(out["moving"][0], out["moving"][1], rtol=1e-4,
                               atol=1e-6)
