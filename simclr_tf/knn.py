"""Weighted k-nearest-neighbour accuracy on frozen features: the monitor that needs no training.

For each evaluation image, the ``k`` training images whose L2-normalised
representations h are most similar (cosine) vote for their labels with
weight ``exp(similarity / temperature)``; the class with the largest total
wins (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", arXiv:1805.01978, section 3.4; k = 200 and
temperature 0.1 as solo-learn and lightly report it). It trains nothing, so
it is an honest number for short runs, where a linear classifier's own
training is a source of noise.
"""

import numpy as np

K = 200
TEMPERATURE = 0.1


def _normalise(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(train_x, train_y, query_x, num_classes, k=K, temperature=TEMPERATURE,
               batch_size=1024):
    """Class scores [Q, num_classes] of the weighted kNN vote (queries in batches)."""
    train = _normalise(train_x)
    train_y = np.asarray(train_y, np.int64)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(query_x), batch_size):
        sims = _normalise(query_x[start:start + batch_size]) @ train.T  # [q, N]
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sims, top, axis=1) / temperature)
        votes = np.zeros((len(top), num_classes), np.float64)
        np.add.at(votes, (np.arange(len(top))[:, None], train_y[top]), weights)
        scores.append(votes)
    return np.concatenate(scores) if scores else np.zeros((0, num_classes))


def evaluate(features, num_classes, k=K, temperature=TEMPERATURE):
    """``{"top1", "top5", "k", "temperature"}`` of the kNN vote on ``linear_eval.frozen_features``."""
    train_x, train_y, eval_x, eval_y = features
    scores = knn_scores(train_x, train_y, eval_x, num_classes, k, temperature)
    order = np.argsort(-scores, axis=1)
    top = {n: float(np.mean(np.any(order[:, :n] == eval_y[:, None], axis=1)))
           for n in (1, min(5, num_classes))}
    return {"top1": top[1], "top5": top[min(5, num_classes)], "k": int(min(k, len(train_x))),
            "temperature": float(temperature)}
