"""The paper's protocol: l2 chosen on a held-out part of the training split, refit, score.

* Standardisation: per-feature mean and standard deviation of the whole
  training split (held-out part included: the statistics use no labels).
* l2 selection: a seeded, class-stratified :data:`HELD_OUT_FRACTION` (10%,
  at most :data:`HELD_OUT_MAX` examples) of the training split is held out;
  the rest is fitted for every l2 of :data:`L2_GRID` (1e-6 .. 1e-1, one per
  decade) as one warm-started path (:func:`.solver.fit_path`), and the l2
  with the best held-out top-1 wins (ties: the lower held-out cross-entropy,
  then the larger l2). With nothing to hold out (every class has a single
  example), :data:`.solver.DEFAULT_L2`.
* Refit on the whole training split with the chosen l2, started from the
  chosen held-out fit, and top-1/top-5 on the eval split.
* Deterministic: fixed chunking, a seeded split, zero or warm-start weights.
"""

import time

import numpy as np
from absl import logging

from simclr_tf.linear_eval import features as features_lib
from simclr_tf.linear_eval import solver

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
HELD_OUT_FRACTION = 0.1
HELD_OUT_MAX = 50_000


def topk_accuracy(logits, labels, k):
    """Fraction of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


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
    fraction = min(fraction, max_size / max(len(labels), 1))
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(int(round(fraction * len(members))), len(members) - 1)
        if take > 0:
            held.append(rng.permutation(members)[:take])
    held = np.sort(np.concatenate(held)) if held else np.zeros((0,), np.int64)
    keep = np.ones(len(labels), bool)
    keep[held] = False
    return np.flatnonzero(keep), held


def _choose_l2(features, labels, num_classes, grid, stats, eigen, seed, fit_options):
    """``(l2, {l2: held-out top-1}, num_heldout, the chosen l2's held-out fit or None)``."""
    fit_rows, held_rows = held_out_split(labels, seed=seed)
    if len(held_rows) == 0 or len(grid) == 1:
        l2 = grid[0] if len(grid) == 1 else solver.DEFAULT_L2
        logging.info("linear eval: no l2 to choose (or nothing to hold out); l2 = %g.", l2)
        return l2, {}, 0, None
    start = time.monotonic()
    fits = solver.fit_path(features, labels, fit_rows, num_classes, stats, tuple(grid),
                           eigen=eigen, **fit_options)
    held_y = labels[held_rows]
    scores = {}
    for clf in fits:
        logits = clf(features, held_rows)
        scores[clf.l2] = (topk_accuracy(logits, held_y, 1), -cross_entropy(logits, held_y),
                          clf.l2)
        logging.info("linear eval: l2 %g: held-out top-1 %.4f, cross-entropy %.4f "
                     "(%d examples; %d L-BFGS iterations, loss %.6f)", clf.l2,
                     scores[clf.l2][0], -scores[clf.l2][1], len(held_rows), clf.steps,
                     clf.loss)
    best = max(scores, key=scores.get)
    logging.info("linear eval: l2 %g chosen on %d held-out examples (%.1f s).", best,
                 len(held_rows), time.monotonic() - start)
    chosen = next(clf for clf in fits if clf.l2 == best)
    return best, {l2: s[0] for l2, s in scores.items()}, len(held_rows), chosen


def _setup(features, stats):
    """The standardisation (default: of all of ``features``) and the
    preconditioner's :func:`.solver.curvature`, computed once for the grid and the refit."""
    if stats is None:
        stats = solver.standardisation(features)
    return stats, solver.curvature(features, stats)


def select_l2(features, labels, num_classes, grid=L2_GRID, *, stats=None, seed=0,
              **fit_options):
    """The l2 of ``grid`` with the best held-out top-1 (see the module docstring).

    ``fit_options``: ``max_iter``, ``gtol`` of :func:`.solver.fit_path`.
    Returns ``(l2, {l2: held-out top-1}, num_heldout)``.
    """
    stats, eigen = _setup(features, stats)
    return _choose_l2(features, np.asarray(labels, np.int32), num_classes, grid, stats, eigen,
                      seed, fit_options)[:3]


def fit_and_score(features, num_classes, *, l2=None, l2_grid=L2_GRID, seed=0, **fit_options):
    """The protocol on ``(train_x, train_y, eval_x, eval_y)`` (:func:`.features.frozen_features`).

    ``l2=None`` chooses it from ``l2_grid`` on a held-out part of the
    training split, then refits on all of it; a number skips the choice.
    ``fit_options``: ``max_iter``, ``gtol`` of :func:`.solver.fit_path`.

    Returns ``{"top1", "top5", "num_train", "num_eval", "l2", "heldout_top1",
    "num_heldout", "solver"}`` (``heldout_top1``: ``{"%g" % l2: top-1}``).
    """
    train_x, train_y, eval_x, eval_y = features
    train_y = np.asarray(train_y, np.int32)
    start = time.monotonic()
    stats, eigen = _setup(train_x, None)
    heldout, num_heldout, init = {}, 0, None
    if l2 is None:
        l2, heldout, num_heldout, init = _choose_l2(train_x, train_y, num_classes, l2_grid,
                                                    stats, eigen, seed, fit_options)
    clf = solver.fit_path(train_x, train_y, None, num_classes, stats, (l2,), init=init,
                          eigen=eigen, **fit_options)[0]
    top1 = top5 = 0  # correct predictions, counted chunk by chunk
    for chunk, labels in features_lib.chunks(eval_x, eval_y):
        logits = clf(chunk)
        top1 += round(topk_accuracy(logits, labels, 1) * len(labels))
        top5 += round(topk_accuracy(logits, labels, 5) * len(labels))
    num_eval = len(eval_x)
    logging.info("linear eval: l2 %g, %d training features of dimension %d: eval top-1 %.4f "
                 "(%.1f s)", l2, len(train_x), train_x.shape[1], top1 / num_eval,
                 time.monotonic() - start)
    return {"top1": top1 / num_eval, "top5": top5 / num_eval,
            "num_train": int(len(train_x)), "num_eval": int(num_eval),
            "l2": float(l2), "heldout_top1": {f"{k:g}": v for k, v in heldout.items()},
            "num_heldout": int(num_heldout), "solver": clf.solver}


def evaluate(encoder, cfg, num_classes, train_indices=None, *, strategy=None, seed=0,
             memory_limit=None, scratch_dir=None):
    """Linear evaluation of ``encoder`` on the dataset of ``cfg`` (a ``DataConfig``, ``cfg.data``).

    :func:`.features.frozen_features` of ``cfg.train_split`` (only the
    examples at ``train_indices``, e.g. a label subset's, when given) and
    ``cfg.eval_split``, extracted through ``strategy`` (default: the current
    one), then :func:`fit_and_score`; returns its dict.
    """
    features = features_lib.frozen_features(encoder, cfg, train_indices, strategy=strategy,
                                            memory_limit=memory_limit,
                                            scratch_dir=scratch_dir)
    return fit_and_score(features, num_classes, seed=seed)
