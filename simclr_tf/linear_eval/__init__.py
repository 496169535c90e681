"""Linear evaluation on frozen features: l2-regularised logistic regression on h.

The SimCLR paper measures transfer with "an l2-regularized multinomial
logistic regression classifier on features extracted from the frozen
pretrained network", its l2 strength chosen on a validation set (Chen et al.
2020, arXiv:2002.05709, appendix B.8). This package does the same for any
encoder, at any scale, including ImageNet (1.28M x 2048 features, 10.5 GB in
float32). It complements the linear probe trained during pretraining (which
sees augmented views of a moving encoder): this one reads a fixed encoder, so
it also scores a randomly initialised encoder, the baseline that pretraining
must beat.

In the order things happen (each module's docstring lists its choices):

- :mod:`.features`: h of a split's labelled examples, extracted through the
  run's strategy, in memory up to 1 GiB a split, else a memmap of a
  temporary file (:func:`frozen_features`, :func:`split_features`);
- :mod:`.streaming`: everything after extraction reads rows in chunks
  (an ndarray and a memmap give the same result bit for bit), and the
  standardisation statistics;
- :mod:`.classifier`: :class:`LinearClassifier` and its cross-entropy on
  one chunk;
- :mod:`.logistic`: :func:`fit_logistic_regression`, the solver by the
  work of one pass: :mod:`.full_batch` (L-BFGS, :mod:`.quasi_newton`,
  preconditioned, along the l2 path with warm starts) or :mod:`.minibatch`
  (Adam, every l2 at once);
- :mod:`.protocol`: l2 chosen on a held-out 10% of the training split,
  refit, top-1/top-5 on the eval split (:func:`fit_and_score`,
  :func:`evaluate`).

The result (:func:`fit_and_score`) has ``top1``, ``top5``, ``num_train``,
``num_eval``, and ``l2`` (the chosen value), ``heldout_top1`` (by l2),
``num_heldout`` and ``solver``. Module constants are read where they are
defined (patch ``linear_eval.features.MEMORY_LIMIT_BYTES``, not the name
re-exported here).
"""

from simclr_tf.linear_eval.classifier import LinearClassifier
from simclr_tf.linear_eval.features import (MEMORY_LIMIT_BYTES, PAD_LABEL, extract_features,
                                            frozen_features, split_features)
from simclr_tf.linear_eval.quasi_newton import LBFGS_GTOL, LBFGS_MAX_ITER, lbfgs
from simclr_tf.linear_eval.logistic import (DEFAULT_L2, FULL_BATCH_MAX_WORK, choose_solver,
                                            fit_logistic_regression)
from simclr_tf.linear_eval.minibatch import (MINIBATCH_LEARNING_RATE, MINIBATCH_ROWS,
                                             MINIBATCH_STEPS)
from simclr_tf.linear_eval.protocol import (HELD_OUT_FRACTION, HELD_OUT_MAX, L2_GRID,
                                            evaluate, fit_and_score, held_out_split,
                                            select_l2, topk_accuracy)
from simclr_tf.linear_eval.streaming import CHUNK_BYTES, standardisation

__all__ = [
    "evaluate", "fit_and_score", "frozen_features", "split_features", "extract_features",
    "fit_logistic_regression", "choose_solver", "select_l2", "held_out_split",
    "topk_accuracy", "standardisation", "lbfgs", "LinearClassifier", "L2_GRID",
    "DEFAULT_L2", "HELD_OUT_FRACTION", "HELD_OUT_MAX", "FULL_BATCH_MAX_WORK",
    "LBFGS_MAX_ITER", "LBFGS_GTOL", "MINIBATCH_ROWS", "MINIBATCH_STEPS",
    "MINIBATCH_LEARNING_RATE", "MEMORY_LIMIT_BYTES", "PAD_LABEL", "CHUNK_BYTES",
]
