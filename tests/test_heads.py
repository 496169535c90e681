"""Tests for simclr_tf.models.heads (ProjectionHead, SupervisedHead).

References are NumPy re-implementations of the heads as described in SimCLR
(arXiv:2002.05709) / SimCLRv2 (arXiv:2006.10029) and closed-form counts.
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from simclr_tf.models.heads import ProjectionHead, SupervisedHead

D, P, B = 24, 8, 6


def count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def randomise(layer, seed=0):
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        vals = rng.normal(size=v.shape)
        if "variance" in v.path:
            vals = np.abs(vals) + 0.5
        v.assign(vals.astype("float32"))


def np_projection(head, h, training):
    """NumPy reference of the projection head from its weights."""
    hiddens = [h]
    x = h
    n = head.num_layers
    for i, (dense, bn) in enumerate(zip(head.dense_layers, head.bn_layers)):
        x = x @ dense.kernel.numpy()
        if training:
            mean, var = x.mean(axis=0), x.var(axis=0)
        else:
            mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
        x = (x - mean) / np.sqrt(var + 1e-5) * bn.gamma.numpy()
        if i < n - 1:
            x = np.maximum(x + bn.beta.numpy(), 0.0)
        hiddens.append(x)
    return x, hiddens


@pytest.mark.parametrize("num_proj_layers", [1, 2, 3])
@pytest.mark.parametrize("training", [False, True])
def test_nonlinear_head_matches_numpy(num_proj_layers, training):
    head = ProjectionHead("nonlinear", proj_out_dim=P, num_proj_layers=num_proj_layers)
    h = np.random.default_rng(1).normal(size=(B, D)).astype("float32")
    head.build((None, D))
    randomise(head, seed=num_proj_layers)
    z, hiddens = head(h, training=training)
    z_ref, hiddens_ref = np_projection(head, h, training)
    assert len(hiddens) == num_proj_layers + 1
    assert [tuple(t.shape) for t in hiddens] == [(B, D)] * num_proj_layers + [(B, P)]
    np.testing.assert_array_equal(hiddens[0], h)
    np.testing.assert_array_equal(np.asarray(z), np.asarray(hiddens[-1]))
    for got, ref in zip(hiddens, hiddens_ref):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(z), z_ref, rtol=1e-4, atol=1e-4)
    for t in hiddens[1:-1]:  # ReLU on all but the last layer
        assert np.min(np.asarray(t)) >= 0.0
    assert np.min(np.asarray(z)) < 0.0  # no ReLU on the output


@pytest.mark.parametrize("num_proj_layers", [2, 3])
def test_nonlinear_param_counts(num_proj_layers):
    head = ProjectionHead("nonlinear", proj_out_dim=P, num_proj_layers=num_proj_layers)
    head.build((None, D))
    hidden = num_proj_layers - 1
    # hidden layers: D*D kernel + gamma + beta; last: D*P kernel + gamma (no bias, no beta)
    assert count(head.trainable_weights) == hidden * (D * D + 2 * D) + D * P + P
    assert count(head.non_trainable_weights) == hidden * 2 * D + 2 * P


def test_linear_head():
    head = ProjectionHead("linear", proj_out_dim=P, num_proj_layers=3)
    h = np.random.default_rng(2).normal(size=(B, D)).astype("float32")
    head.build((None, D))
    randomise(head, seed=3)
    z, hiddens = head(h, training=False)
    assert len(hiddens) == 2 and tuple(z.shape) == (B, P)
    np.testing.assert_array_equal(np.asarray(hiddens[1]), np.asarray(z))
    bn = head.bn_layers[0]
    ref = (h @ head.dense_layers[0].kernel.numpy() - bn.moving_mean.numpy()) / np.sqrt(
        bn.moving_variance.numpy() + 1e-5) * bn.gamma.numpy()
    np.testing.assert_allclose(np.asarray(z), ref, rtol=1e-4, atol=1e-4)
    assert count(head.trainable_weights) == D * P + P
    # trains: gradients reach the kernel in training mode
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(head(h, training=True)[0] * tf.range(P, dtype=tf.float32))
    grads = tape.gradient(loss, head.trainable_weights)
    assert all(g is not None and np.any(np.asarray(g) != 0) for g in grads)


def test_none_head_is_identity():
    head = ProjectionHead("none", proj_out_dim=P)
    h = np.random.default_rng(3).normal(size=(B, D)).astype("float32")
    z, hiddens = head(h, training=True)
    np.testing.assert_array_equal(np.asarray(z), h)
    assert len(hiddens) == 1
    np.testing.assert_array_equal(np.asarray(hiddens[0]), h)
    assert head.weights == []


@pytest.mark.parametrize("mode", ["nonlinear", "linear"])
def test_last_layer_has_no_bias_and_no_centre(mode):
    head = ProjectionHead(mode, proj_out_dim=P, num_proj_layers=3)
    head.build((None, D))
    for dense in head.dense_layers:
        assert not dense.use_bias and dense.bias is None
    assert not head.bn_layers[-1].center and head.bn_layers[-1].beta is None
    for bn in head.bn_layers[:-1]:
        assert bn.center
    paths = [v.path for v in head.weights]
    assert not any("bias" in p for p in paths)
    assert not any(p.endswith(f"batch_normalization_{len(head.bn_layers) - 1}/beta") for p in paths)


def test_projection_bn_settings_and_paths():
    head = ProjectionHead("nonlinear", P, 3, batch_norm_decay=0.97, global_bn=True)
    head.build((None, D))
    assert len(head.bn_layers) == 3
    for bn in head.bn_layers:
        assert bn.momentum == 0.97 and bn.epsilon == 1e-5 and bn.synchronized
    for v in head.weights:
        if "batch_normalization" not in v.path:
            assert v.path.endswith("/kernel") and len(v.shape) == 2, v.path
    for bn in head.bn_layers:
        for v in bn.weights:
            assert "batch_normalization" in v.path


@pytest.mark.parametrize(
    "kwargs",
    [dict(proj_head_mode="mlp"), dict(proj_head_mode=None), dict(proj_out_dim=0),
     dict(proj_out_dim=12.5), dict(num_proj_layers=0), dict(num_proj_layers=-1),
     dict(num_proj_layers=2.0), dict(batch_norm_decay=1.5)],
)
def test_projection_head_rejects_bad_args(kwargs):
    with pytest.raises(ValueError):
        ProjectionHead(**kwargs)


def test_invalid_mode_message():
    with pytest.raises(ValueError, match="nonlinear.*linear.*none"):
        ProjectionHead("Nonlinear")


def test_none_and_linear_accept_any_num_proj_layers():
    ProjectionHead("none", num_proj_layers=0)
    ProjectionHead("linear", num_proj_layers=0)


@pytest.mark.parametrize("mode", ["nonlinear", "linear", "none"])
def test_projection_get_config_round_trip(mode):
    head = ProjectionHead(mode, proj_out_dim=P, num_proj_layers=2, batch_norm_decay=0.95)
    h = np.random.default_rng(4).normal(size=(B, D)).astype("float32")
    head(h, training=True)  # builds and moves BN statistics
    config = head.get_config()
    assert config["proj_head_mode"] == mode and config["batch_norm_decay"] == 0.95
    clone = ProjectionHead.from_config(config)
    clone.build((None, D))
    assert count(clone.weights) == count(head.weights)
    clone.set_weights(head.get_weights())
    for a, b in zip(clone(h, training=False)[1], head(h, training=False)[1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_projection_head_in_functional_model():
    inputs = keras.Input((D,))
    z, hiddens = ProjectionHead("nonlinear", P, 3)(inputs)
    model = keras.Model(inputs, [z, hiddens[1]])
    out = model(np.ones((2, D), "float32"))
    assert tuple(out[0].shape) == (2, P) and tuple(out[1].shape) == (2, D)


def test_supervised_head_matches_numpy_and_defaults():
    head = SupervisedHead(5)
    assert head.name == "head_supervised"
    h = np.random.default_rng(5).normal(size=(B, D)).astype("float32")
    logits = np.asarray(head(h))
    kernel, bias = head.dense.kernel.numpy(), head.dense.bias.numpy()
    assert np.all(bias == 0) and np.std(kernel) > 0
    assert abs(np.std(kernel) - 0.01) < 0.003
    np.testing.assert_allclose(logits, h @ kernel + bias, rtol=1e-5, atol=1e-6)
    assert count(head.trainable_weights) == D * 5 + 5
    for v in head.weights:
        assert "head_supervised" in v.path


def test_supervised_head_zero_init_gives_zero_logits():
    head = SupervisedHead(7, zero_init=True)
    h = np.random.default_rng(6).normal(size=(B, D)).astype("float32")
    with tf.GradientTape() as tape:
        logits = head(h)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(np.arange(B) % 7, logits, from_logits=True))
    np.testing.assert_array_equal(np.asarray(logits), np.zeros((B, 7)))
    grads = tape.gradient(loss, head.trainable_weights)
    assert all(np.any(np.asarray(g) != 0) for g in grads)  # still learns


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, "10", True])
def test_supervised_head_rejects_bad_num_classes(num_classes):
    with pytest.raises(ValueError):
        SupervisedHead(num_classes)


def test_supervised_head_get_config_round_trip(tmp_path):
    head = SupervisedHead(3, zero_init=True, name="probe")
    h = np.random.default_rng(7).normal(size=(B, D)).astype("float32")
    head.build((None, D))
    randomise(head, seed=8)
    config = head.get_config()
    assert config["num_classes"] == 3 and config["zero_init"] is True and config["name"] == "probe"
    clone = SupervisedHead.from_config(config)
    clone.build((None, D))
    clone.set_weights(head.get_weights())
    np.testing.assert_allclose(np.asarray(clone(h)), np.asarray(head(h)), rtol=1e-6)
    # whole-model save/load through the registered names
    inputs = keras.Input((D,))
    z, _ = ProjectionHead("nonlinear", P, 2)(inputs)
    model = keras.Model(inputs, [z, SupervisedHead(3)(inputs)])
    path = str(tmp_path / "heads.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(loaded(h), model(h)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
