"""Linear evaluation on frozen features: l2-regularised logistic regression on h.

The SimCLR paper measures representations with "an l2-regularized
multinomial logistic regression classifier on features extracted from the
frozen pretrained network", the l2 strength chosen on a validation set
(Chen et al. 2020, arXiv:2002.05709, appendix B.8). This package does that
for any encoder and any dataset size, ImageNet's 1.28M x 2048 included. It
complements the linear probe trained during pretraining (which sees augmented
views of a moving encoder): this one reads a fixed encoder, so it also scores
a randomly initialised encoder, the baseline pretraining must beat.

One module per step:

- :mod:`.features`: h of a split's labelled examples, extracted through the
  run's strategy, in memory up to 1 GiB a split, else a memmap of a
  temporary file (:func:`frozen_features`, :func:`split_features`), and
  :func:`chunks`, the one way every later step (and :mod:`simclr_tf.knn`)
  reads them;
- :mod:`.solver`: the classifier and its one solver, preconditioned L-BFGS
  (:func:`fit_logistic_regression`);
- :mod:`.protocol`: l2 chosen on a held-out 10% of the training split,
  refit on all of it, top-1/top-5 on the eval split (:func:`fit_and_score`,
  :func:`evaluate`).

:func:`fit_and_score` returns ``top1``, ``top5``, ``num_train``,
``num_eval``, ``l2`` (the chosen value), ``heldout_top1`` (by l2),
``num_heldout`` and ``solver`` (``"lbfgs"``). Constants are read from the
module that defines them (patch ``linear_eval.features.MEMORY_LIMIT_BYTES``,
not the name re-exported here). docs/linear_eval.md has the measurements.
"""

from simclr_tf.linear_eval.features import (CHUNK_BYTES, MEMORY_LIMIT_BYTES, PAD_LABEL, chunks,
                                            extract_features, frozen_features, split_features)
from simclr_tf.linear_eval.protocol import (HELD_OUT_FRACTION, HELD_OUT_MAX, L2_GRID, evaluate,
                                            fit_and_score, held_out_split, select_l2,
                                            topk_accuracy)
from simclr_tf.linear_eval.solver import (DEFAULT_L2, LBFGS_GTOL, LBFGS_MAX_ITER,
                                          LinearClassifier, fit_logistic_regression, lbfgs,
                                          standardisation)

__all__ = [
    "evaluate", "fit_and_score", "frozen_features", "split_features", "extract_features",
    "chunks", "fit_logistic_regression", "select_l2", "held_out_split", "topk_accuracy",
    "standardisation", "lbfgs", "LinearClassifier", "L2_GRID", "DEFAULT_L2",
    "HELD_OUT_FRACTION", "HELD_OUT_MAX", "LBFGS_MAX_ITER", "LBFGS_GTOL",
    "MEMORY_LIMIT_BYTES", "PAD_LABEL", "CHUNK_BYTES",
]
