"""LARS, the optimizer of SimCLR's large batches: defined in :mod:`simclr_tf.optimizers`.

LARS and its weight-decay exclusions (``NOT_DECAYED``, ``SUPERVISED_HEAD``,
``DEFAULT_EXCLUDE``, ``is_excluded``, ``variable_path``) live in
:mod:`simclr_tf.optimizers`, the one owner of weight decay: what is excluded,
and whether it is applied in the optimizer or in the loss. LARS is defined
there, not here, because ``build_optimizer`` needs it and LARS needs the
exclusions: defining them in two modules would make the two import each other.
This module only keeps the names importable from ``simclr_tf.lars``
(imports stay one-directional: lars -> optimizers).
"""

from simclr_tf.optimizers import (  # noqa: F401  (the names importable from here)
    DEFAULT_EXCLUDE, LARS, NOT_DECAYED, SUPERVISED_HEAD, is_excluded, variable_path)

__all__ = ["DEFAULT_EXCLUDE", "LARS", "NOT_DECAYED", "SUPERVISED_HEAD", "is_excluded",
           "variable_path"]
