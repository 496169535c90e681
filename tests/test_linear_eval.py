"""Frozen-feature linear evaluation."""

import numpy as np
import tensorflow as tf

from simclr_tf import linear_eval


def test_topk_accuracy_matches_a_direct_count():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 8))
    labels = rng.integers(0, 8, 50)
    for k in (1, 3, 5):
        expected = np.mean([labels[i] in np.argsort(-logits[i])[:k] for i in range(50)])
        assert linear_eval.topk_accuracy(logits, labels, k) == expected
    assert linear_eval.topk_accuracy(logits[:, :3], labels % 3, 5) == 1.0


def test_logistic_regression_separates_gaussian_classes():
    """Three well-separated Gaussian blobs: a linear classifier must be
    nearly perfect on fresh samples, whatever the feature scale/offset."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 4
    def sample(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(size=(n, 16))) * 50 + 1000, y
    x, y = sample(600)
    predict = linear_eval.fit_logistic_regression(x, y, 3)
    xt, yt = sample(300)
    assert linear_eval.topk_accuracy(predict(xt), yt, 1) > 0.97


def test_logistic_regression_is_at_chance_on_noise():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 8)), rng.integers(0, 4, 400)
    predict = linear_eval.fit_logistic_regression(x, y, 4)
    xt, yt = rng.normal(size=(2000, 8)), rng.integers(0, 4, 2000)
    assert abs(linear_eval.topk_accuracy(predict(xt), yt, 1) - 0.25) < 0.05


def test_extract_features_runs_the_encoder_in_inference_mode():
    calls = []

    class Encoder(tf.keras.layers.Layer):
        def call(self, images, training=None):
            calls.append(training)
            return tf.reduce_mean(images, axis=[1, 2])

    images = np.random.default_rng(3).uniform(size=(10, 4, 4, 3)).astype("float32")
    labels = np.arange(10, dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    feats, got = linear_eval.extract_features(Encoder(), ds)
    np.testing.assert_allclose(feats, images.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(got, labels)
    assert set(calls) == {False}
