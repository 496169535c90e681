"""Weighted k-nearest-neighbour accuracy on frozen features: the monitor that needs no training.

For each evaluation image, the ``k`` training images whose L2-normalised
representations h are most similar (cosine) vote for their labels with
weight ``exp(similarity / temperature)``; the class with the largest total
wins (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", arXiv:1805.01978, section 3.4; k = 200 and
temperature 0.1 as solo-learn and lightly report it). It trains nothing, so
it is an honest number for short runs, where a linear classifier's own
training is a source of noise.

Scale: the training features (a memmap from :mod:`simclr_tf.linear_eval`
above 1 GiB) are read once, through :func:`simclr_tf.linear_eval.chunks`,
and every query keeps its ``k`` best so far, so memory is ``Q x k`` plus one
chunk's similarities; the work is ``2 N D Q`` FLOP of matrix products plus a
top-k per chunk (docs/linear_eval.md has the ImageNet estimate).
"""

import numpy as np
from absl import logging

from simclr_tf.linear_eval.features import chunk_rows, chunks
from simclr_tf.linear_eval.protocol import topk_accuracy

K = 200
TEMPERATURE = 0.1


def _normalise(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(train_x, train_y, query_x, num_classes, k=K, temperature=TEMPERATURE,
               batch_size=1024, train_chunk=None):
    """Class scores [Q, num_classes] of the weighted kNN vote.

    The training rows are read once, ``train_chunk`` at a time (default:
    :func:`simclr_tf.linear_eval.features.chunk_rows`, at least ``k``); each
    query batch of ``batch_size`` merges a chunk's similarities into its
    ``k`` most similar rows so far.
    """
    k = min(k, len(train_y))
    num_queries = len(query_x)
    if num_queries == 0 or k == 0:
        return np.zeros((num_queries, num_classes))
    size = max(k, int(train_chunk or chunk_rows(train_x.shape[1])))
    best_sim = np.full((num_queries, k), -np.inf, np.float32)
    best_label = np.zeros((num_queries, k), np.int64)
    for train, labels in chunks(train_x, train_y, size=size):
        train = _normalise(train)
        for q in range(0, num_queries, batch_size):
            batch = slice(q, q + batch_size)
            sims = np.concatenate([best_sim[batch], _normalise(query_x[batch]) @ train.T],
                                  axis=1)  # [b, k + chunk]: the k best so far first
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            kept = np.take_along_axis(best_label[batch], np.minimum(top, k - 1), 1)
            best_label[batch] = np.where(top < k, kept, labels[np.maximum(top - k, 0)])
            best_sim[batch] = np.take_along_axis(sims, top, axis=1)
    votes = np.zeros((num_queries, num_classes), np.float64)
    np.add.at(votes, (np.arange(num_queries)[:, None], best_label),
              np.exp(best_sim / temperature))
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
            "k": int(min(k, len(train_y))), "temperature": float(temperature)}
