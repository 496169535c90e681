"""The weighted kNN monitor (simclr_tf/knn.py) against a NumPy weighted-vote reference."""

import numpy as np
import pytest

from simclr_tf import knn


def test_weighted_knn_matches_a_numpy_loop():
    """simclr_tf.knn against the definition, one query at a time: cosine
    similarity to every training point, the k most similar vote with
    exp(sim / T), ties impossible with continuous features."""
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


def test_knn_reads_the_training_features_in_chunks():
    """Any chunk size gives the one-chunk votes (the running top-k merge is exact)."""
    rng = np.random.default_rng(9)
    train_x = rng.normal(size=(500, 8)).astype(np.float32)
    train_y = rng.integers(0, 5, 500)
    query = rng.normal(size=(70, 8)).astype(np.float32)
    whole = knn.knn_scores(train_x, train_y, query, 5, k=20, batch_size=1000,
                           train_chunk=1000)
    for chunk, batch in ((20, 7), (33, 70), (499, 16)):
        np.testing.assert_allclose(knn.knn_scores(train_x, train_y, query, 5, k=20,
                                                  batch_size=batch, train_chunk=chunk),
                                   whole, rtol=1e-6)
