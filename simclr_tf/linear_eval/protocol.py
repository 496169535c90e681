"""The paper's protocol: l2 chosen on a held-out part of the training split, refit, score.

* Standardisation: per-feature mean and standard deviation of the training
  features (the whole training split, held-out part included: the statistics
  use no labels).
* l2 selection: a seeded, class-stratified :data:`HELD_OUT_FRACTION` (10%,
  at most :data:`HELD_OUT_MAX` examples) of the training split is held out;
  a classifier is fitted on the rest for every l2 of :data:`L2_GRID`
  (1e-6 .. 1e-1, one per decade: on CIFAR-10 dev-set features of a
  ResNet-18 x0.5 the held-out top-1 peaked at 1e-3 .. 1e-2, fell at 1e-1 and
  1, and 1e-7 equalled 1e-6) and the one with the best held-out top-1 wins
  (ties: the lower held-out cross-entropy, then the larger l2). With L-BFGS
  the grid is one path, strongest l2 first, each fit warm-started from the
  previous one; with mini-batch Adam all values train at once. With no
  held-out example (every class has one example), :data:`DEFAULT_L2` is used.
* Refit on the whole training split with the chosen l2 (L-BFGS: from the
  chosen held-out fit's weights), scored on the eval split.
* Deterministic for fixed inputs: fixed chunking, a seeded split and seeded
  permutations, zero (or warm-start) initialisation.
"""

import time

import numpy as np
from absl import logging

from simclr_tf.linear_eval import features as features_lib
from simclr_tf.linear_eval import full_batch, logistic, streaming
from simclr_tf.linear_eval.logistic import DEFAULT_L2

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
HELD_OUT_FRACTION = 0.1
HELD_OUT_MAX = 50_000


def topk_accuracy(logits, labels, k):
    """Fraction of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def cross_entropy(logits, labels):
    """Mean cross-entropy of ``logits`` [N, C] at integer ``labels``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(lse - shifted[np.arange(len(labels)), labels]))


def held_out_split(labels, fraction=HELD_OUT_FRACTION, max_size=HELD_OUT_MAX, seed=0):
    """``(fit_rows, held_rows)``: sorted indices; a seeded, class-stratified
    ``fraction`` of ``labels`` (at most ``max_size``) held out, at least one
    example of every class left to fit on."""
    labels = np.asarray(labels)
    n = len(labels)
    fraction = min(fraction, max_size / max(n, 1))
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(int(round(fraction * len(members))), len(members) - 1)
        if take > 0:
            held.append(rng.permutation(members)[:take])
    held = np.sort(np.concatenate(held)) if held else np.zeros((0,), np.int64)
    mask = np.ones(n, bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def _choose_l2(features, labels, num_classes, grid, stats, solver, seed, eigen, options):
    """``(l2, {l2: held-out top-1}, num_heldout, the chosen l2's held-out fit or None)``."""
    fit_rows, held_rows = held_out_split(labels, seed=seed)
    if len(held_rows) == 0 or len(grid) == 1:
        l2 = grid[0] if len(grid) == 1 else DEFAULT_L2
        logging.info("linear eval: no held-out examples; l2 = %g.", l2)
        return l2, {}, 0, None
    start = time.monotonic()
    classifiers = logistic.fit_many(features, labels, fit_rows, num_classes, stats,
                                    tuple(grid), solver, seed, eigen=eigen, **options)
    held_y = labels[held_rows]
    scores = {}
    for clf in classifiers:
        logits = clf(features, held_rows)
        scores[clf.l2] = (topk_accuracy(logits, held_y, 1), -cross_entropy(logits, held_y),
                          clf.l2)
        logging.info("linear eval: l2 %g: held-out top-1 %.4f (%d examples), cross-entropy "
                     "%.4f; %s %d steps, loss %.6f", clf.l2, scores[clf.l2][0],
                     len(held_rows), -scores[clf.l2][1], clf.solver, clf.steps, clf.loss)
    best = max(scores, key=scores.get)
    logging.info("linear eval: l2 %g chosen on %d held-out examples (%.1f s).", best,
                 len(held_rows), time.monotonic() - start)
    chosen = next(clf for clf in classifiers if clf.l2 == best)
    return best, {l2: s[0] for l2, s in scores.items()}, len(held_rows), chosen


def _solver_setup(features, num_classes, stats, solver):
    """``(stats, solver, eigen)``: defaults filled in; ``eigen`` (the L-BFGS
    preconditioner's) computed once for the grid and the refit."""
    if stats is None:
        stats = streaming.standardisation(features)
    if solver == "auto":
        solver = logistic.choose_solver(len(features), features.shape[1], num_classes)
    eigen = full_batch.curvature(features, stats) if solver == "lbfgs" else None
    return stats, solver, eigen


def select_l2(features, labels, num_classes, grid=L2_GRID, *, stats=None, solver="auto",
              seed=0, **fit_options):
    """The l2 of ``grid`` with the best held-out top-1 (see the module docstring).

    Returns ``(l2, {l2: held-out top-1}, num_heldout)``.
    """
    options = logistic.fit_options(fit_options)
    stats, solver, eigen = _solver_setup(features, num_classes, stats, solver)
    return _choose_l2(features, np.asarray(labels, np.int32), num_classes, grid, stats,
                      solver, seed, eigen, options)[:3]


def fit_and_score(features, num_classes, *, l2=None, l2_grid=L2_GRID, seed=0,
                  solver="auto", **fit_options):
    """The paper's protocol on ``frozen_features``.

    ``l2=None`` chooses it from ``l2_grid`` on a held-out part of the
    training split, then refits on all of it; a number skips the choice.
    ``fit_options``: ``max_iter``, ``gtol``, ``steps``, ``batch_rows``,
    ``learning_rate`` (see :func:`fit_logistic_regression`).

    Returns ``{"top1", "top5", "num_train", "num_eval", "l2", "heldout_top1",
    "num_heldout", "solver"}`` (``heldout_top1``: ``{"%g" % l2: top-1}``).
    """
    train_x, train_y, eval_x, eval_y = features
    train_y = np.asarray(train_y, np.int32)
    options = logistic.fit_options(fit_options)
    start = time.monotonic()
    stats, solver, eigen = _solver_setup(train_x, num_classes, None, solver)
    heldout, num_heldout, init = {}, 0, None
    if l2 is None:
        l2, heldout, num_heldout, init = _choose_l2(train_x, train_y, num_classes, l2_grid,
                                                    stats, solver, seed, eigen, options)
    clf = logistic.fit_many(train_x, train_y, None, num_classes, stats, (l2,), solver, seed,
                            init=init, eigen=eigen, **options)[0]
    eval_y = np.asarray(eval_y)
    top1 = top5 = 0.0
    step = streaming.chunk_rows(eval_x.shape[1])
    for first in range(0, len(eval_x), step):
        logits, labels = clf(eval_x[first:first + step]), eval_y[first:first + step]
        top1 += topk_accuracy(logits, labels, 1) * len(labels)
        top5 += topk_accuracy(logits, labels, 5) * len(labels)
    logging.info("linear eval: %s, l2 %g, %d training features of dimension %d: eval top-1 "
                 "%.4f (%.1f s)", solver, l2, len(train_x), train_x.shape[1],
                 top1 / len(eval_x), time.monotonic() - start)
    return {"top1": top1 / len(eval_x), "top5": top5 / len(eval_x),
            "num_train": int(len(train_x)), "num_eval": int(len(eval_x)),
            "l2": float(l2), "heldout_top1": {f"{k:g}": v for k, v in heldout.items()},
            "num_heldout": int(num_heldout), "solver": solver}


def evaluate(encoder, cfg, num_classes, train_indices=None, *, strategy=None, seed=0,
             memory_limit=None, scratch_dir=None):
    """Linear evaluation of ``encoder`` on the dataset of ``cfg`` (a ``DataConfig``, ``cfg.data``).

    Returns :func:`fit_and_score`'s dict: a classifier fitted on frozen
    features of ``cfg.train_split`` (unlabelled examples dropped; only the
    examples at ``train_indices``, e.g. a
    :class:`simclr_tf.data.subsets.LabelSubset`'s, when given), its l2 chosen
    on a held-out part of them, scored on ``cfg.eval_split``. Extraction runs
    through ``strategy`` (default: the current one).
    """
    features = features_lib.frozen_features(encoder, cfg, train_indices, strategy=strategy,
                                            memory_limit=memory_limit,
                                            scratch_dir=scratch_dir)
    return fit_and_score(features, num_classes, seed=seed)
