"""Multinomial logistic regression on frozen features: the solver choice and the fit.

The objective is mean cross-entropy + ``l2 * ||W||^2 / 2`` (the bias is not
penalised) on the standardised features (:func:`streaming.standardisation`).
The solver is chosen by the work of one pass over the rows fitted
(``rows x dim x classes`` multiply-adds, :data:`FULL_BATCH_MAX_WORK` = 2^35):
up to it (offline_shapes, CIFAR-10/100, ImageNet 1%), full-batch L-BFGS
(:mod:`.full_batch`), which reaches the optimum (the tests check it against
Newton's method); above it (ImageNet 10% and 100%), mini-batch Adam
(:mod:`.minibatch`).
"""

import numpy as np

from simclr_tf.linear_eval import full_batch, minibatch, quasi_newton, streaming

DEFAULT_L2 = 1e-4  # of a single fit, and when nothing can be held out to choose it
FULL_BATCH_MAX_WORK = 2 ** 35  # rows * dim * classes of one pass; above: mini-batch Adam


def choose_solver(num_rows, dim, num_classes):
    """``"lbfgs"`` when one pass costs at most :data:`FULL_BATCH_MAX_WORK`, else ``"minibatch"``."""
    return "lbfgs" if num_rows * dim * num_classes <= FULL_BATCH_MAX_WORK else "minibatch"


def fit_options(options):
    """The solvers' options: the defaults (the module constants, read now)
    updated with ``options``; an unknown name is a TypeError."""
    defaults = {"max_iter": quasi_newton.LBFGS_MAX_ITER, "gtol": quasi_newton.LBFGS_GTOL,
                "steps": minibatch.MINIBATCH_STEPS, "batch_rows": minibatch.MINIBATCH_ROWS,
                "learning_rate": minibatch.MINIBATCH_LEARNING_RATE}
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"Unknown fit options {sorted(unknown)}; allowed: {sorted(defaults)}.")
    return {**defaults, **options}


def fit_many(x, y, rows, num_classes, stats, l2s, solver, seed, *, init=None, eigen=None,
             **options):
    """One :class:`LinearClassifier` per l2 of ``l2s`` with ``solver``
    (``"lbfgs"``: along the l2 path, from ``init``; ``"minibatch"``: all at
    once, from zero). ``options``: see :func:`fit_options`."""
    options = fit_options(options)
    if solver == "lbfgs":
        return full_batch.fit_path(x, y, rows, num_classes, stats, l2s, init=init,
                                   eigen=eigen, max_iter=options["max_iter"],
                                   gtol=options["gtol"])
    if solver == "minibatch":
        return minibatch.fit_minibatch(x, y, rows, num_classes, stats, l2s, seed,
                                       options["steps"], options["batch_rows"],
                                       options["learning_rate"])
    raise ValueError(f"solver must be 'auto', 'lbfgs' or 'minibatch', got {solver!r}.")


def fit_logistic_regression(features, labels, num_classes, l2=DEFAULT_L2, *, rows=None,
                            stats=None, solver="auto", seed=0, init=None, **options):
    """Fits multinomial logistic regression; returns a :class:`LinearClassifier`
    (``clf(features) -> logits``).

    The objective is mean cross-entropy + ``l2 * ||W||^2 / 2`` on features
    standardised with ``stats`` (default: those of the rows fitted, see
    :func:`standardisation`). ``rows``: fit on ``features[rows]`` only
    (sorted indices). ``solver``: ``"lbfgs"`` (full batch, from ``init``, a
    :class:`LinearClassifier`, or zero weights; options ``max_iter``,
    ``gtol``), ``"minibatch"`` (Adam from zero weights, ``steps`` of
    ``batch_rows`` rows, ``learning_rate`` with a cosine decay, seeded) or
    ``"auto"`` (:func:`choose_solver`). ``features`` may be a memmap: it is
    read in chunks.
    """
    labels = np.asarray(labels, np.int32)
    if stats is None:
        stats = streaming.standardisation(features, rows)
    if solver == "auto":
        solver = choose_solver(streaming.num_rows(features, rows), features.shape[1],
                               num_classes)
    return fit_many(features, labels, rows, num_classes, stats, (l2,), solver, seed,
                    init=init, **options)[0]
