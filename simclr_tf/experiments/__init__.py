"""Experiments on top of the library: the paper's ablation studies.

``python -m simclr_tf.study`` runs them (:mod:`simclr_tf.experiments.study`),
:mod:`~simclr_tf.experiments.grids` defines their cells,
:mod:`~simclr_tf.experiments.plots` draws their figures and
:mod:`~simclr_tf.experiments.summary` folds a cell's seeds into mean +- std.
"""
