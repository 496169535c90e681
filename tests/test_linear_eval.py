"""Frozen-feature linear evaluation."""

import numpy as np
import pytest
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


def test_weighted_knn_matches_a_numpy_loop():
    """simclr_tf.knn against the definition, one query at a time: cosine
    similarity to every training point, the k most similar vote with
    exp(sim / T), ties impossible with continuous features."""
    from simclr_tf import knn

    rng = np.random.default_rng(4)
    train_x = rng.normal(size=(60, 6)).astype(np.float32)
    train_y = rng.integers(0, 4, 60)
    query = rng.normal(size=(25, 6)).astype(np.float32)
    k, temperature = 7, 0.1
    expected = np.zeros((25, 4))
    for q in range(25):
        sims = [float(query[q] @ t / (np.linalg.norm(query[q]) * np.linalg.norm(t)))
                for t in train_x]
        for i in np.argsort(sims)[::-1][:k]:
            expected[q, train_y[i]] += np.exp(sims[i] / temperature)
    got = knn.knn_scores(train_x, train_y, query, 4, k=k, temperature=temperature,
                         batch_size=10)  # batches of queries give the same votes
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    labels = rng.integers(0, 4, 25)
    result = knn.evaluate((train_x, train_y, query, labels), 4, k=k, temperature=temperature)
    assert result["top1"] == pytest.approx(np.mean(np.argmax(expected, 1) == labels))
    assert result["k"] == 7 and result["top5"] == 1.0  # four classes
    # A well-separated case is classified perfectly.
    centres = np.eye(4, 6) * 10
    sep_x = np.repeat(centres, 10, 0) + rng.normal(size=(40, 6)) * 0.1
    sep_y = np.repeat(np.arange(4), 10)
    assert knn.evaluate((sep_x, sep_y, centres, np.arange(4)), 4)["top1"] == 1.0


def test_progress_lines_count_rate_and_eta():
    import time

    from simclr_tf.progress import Progress

    lines = []
    progress = Progress("scan", total=10, unit="files", every=0.0, log=lines.append)
    progress.update(4)
    time.sleep(0.01)
    progress.done()
    assert lines[0].startswith("scan: 4/10 files (") and "files/s, ETA" in lines[0]
    assert lines[-1].startswith("scan: 4/10 files (") and ", done in " in lines[-1]
    rate = float(lines[0].split("(")[1].split()[0])
    eta = float(lines[0].split("ETA ")[1].split()[0])
    assert eta == pytest.approx(6 / rate, abs=1.0)  # the 6 files left at that rate
