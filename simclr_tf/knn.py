"""Weighted k-nearest-neighbour accuracy on frozen features: the monitor that needs no training.

For each evaluation image, the ``k`` training images whose L2-normalised
representations h are most similar (cosine) vote for their labels with
weight ``exp(similarity / temperature)``; the class with the largest total
wins (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", arXiv:1805.01978, section 3.4; k = 200 and
temperature 0.1 as solo-learn and lightly report it). It trains nothing, so
it is an honest number for short runs, where a linear classifier's own
training is a source of noise.

Scale: the training features are read once, in chunks of about 64 MB (a
memmap from :mod:`simclr_tf.linear_eval` when they exceed 1 GiB), and every
query keeps its ``k`` best so far, so memory stays at ``Q x k`` plus one
chunk's similarities. Time is ``2 N D Q`` FLOP of matrix products plus a
single-threaded top-k: for ImageNet (N 1.28M, D 2048, Q 50,000) about 78 min
on 2 cores, of which 10 min is the top-k (README, "Frozen-feature linear
evaluation").
"""

import numpy as np
from absl import logging

from simclr_tf.linear_eval.protocol import topk_accuracy

K = 200
TEMPERATURE = 0.1
CHUNK_BYTES = 64 << 20  # training rows read per chunk: about this many bytes of float32


def _normalise(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(train_x, train_y, query_x, num_classes, k=K, temperature=TEMPERATURE,
               batch_size=1024, train_chunk=None):
    """Class scores [Q, num_classes] of the weighted kNN vote.

    The training features are read once, ``train_chunk`` rows at a time
    (default: about 64 MB), so a memmap of any size is never held in memory
    whole; each query batch of ``batch_size`` keeps its ``k`` most similar
    rows so far. Memory: ``Q x k`` running neighbours plus one chunk's
    similarities.
    """
    train_y = np.asarray(train_y, np.int64)
    k = min(k, len(train_y))
    num_queries = len(query_x)
    if num_queries == 0 or k == 0:
        return np.zeros((num_queries, num_classes))
    chunk = max(k, int(train_chunk or CHUNK_BYTES // (4 * max(train_x.shape[1], 1))))
    best_sim = np.full((num_queries, k), -np.inf, np.float32)
    best_label = np.zeros((num_queries, k), np.int64)
    for start in range(0, len(train_y), chunk):
        train = _normalise(train_x[start:start + chunk])
        labels = train_y[start:start + chunk]
        for q in range(0, num_queries, batch_size):
            sims = np.concatenate(
                [best_sim[q:q + batch_size],
                 _normalise(query_x[q:q + batch_size]) @ train.T], axis=1)  # [b, k + c]
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            old = np.take_along_axis(best_label[q:q + batch_size], np.minimum(top, k - 1), 1)
            best_label[q:q + batch_size] = np.where(top < k, old, labels[np.maximum(top - k, 0)])
            best_sim[q:q + batch_size] = np.take_along_axis(sims, top, axis=1)
    weights = np.exp(best_sim / temperature)
    votes = np.zeros((num_queries, num_classes), np.float64)
    np.add.at(votes, (np.arange(num_queries)[:, None], best_label), weights)
    return votes


def evaluate(features, num_classes, k=K, temperature=TEMPERATURE):
    """``{"top1", "top5", "k", "temperature"}`` of the kNN vote on ``linear_eval.frozen_features``."""
    train_x, train_y, eval_x, eval_y = features
    if isinstance(train_x, np.memmap):
        logging.info("kNN: the %d x %d training features are on disk (memmap); they are "
                     "read once, in chunks, for the %d queries (%.0f GFLOP).",
                     train_x.shape[0], train_x.shape[1], len(eval_x),
                     2e-9 * train_x.shape[0] * train_x.shape[1] * len(eval_x))
    scores = knn_scores(train_x, train_y, eval_x, num_classes, k, temperature)
    eval_y = np.asarray(eval_y)
    return {"top1": topk_accuracy(scores, eval_y, 1), "top5": topk_accuracy(scores, eval_y, 5),
            "k": int(min(k, len(train_x))), "temperature": float(temperature)}
