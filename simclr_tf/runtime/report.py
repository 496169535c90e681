"""What a training run reports at each log point: progress bar, TensorBoard, train_log.jsonl."""

import keras
import tensorflow as tf
from absl import logging

from simclr_tf.data import view_grid
from simclr_tf.runtime.run_dir import TRAIN_EVENTS


class TrainReport:
    """The chief's training output; on other workers only the warnings.

    Args:
        run_dir: the run's ``RunDir``.
        total_steps: the run's length (for the progress bar).
        start_step: the step the run (re)starts at.
        metric_names: the step metrics (``lr`` is added).
        is_chief: whether this process writes.
        files_gone_bad: optional callable returning the image files found
            unreadable since the scan (:meth:`Experiment.files_gone_bad`); their
            number goes into each log line once there is one.
        views: optional iterator of ``(views, labels)``, ``views`` a dict
            ``{"view1", "view2"[, "clean"]}`` of ``[N, S, S, 3]`` images: a grid of
            the view1 | view2 pairs goes to TensorBoard (``augmented_views``) at
            every log point.
    """

    def __init__(self, run_dir, total_steps, start_step, metric_names, is_chief=True,
                 views=None, files_gone_bad=None):
        self.writer = run_dir.summary_writer(TRAIN_EVENTS, is_chief)
        self.progbar = keras.utils.Progbar(total_steps,
                                           stateful_metrics=list(metric_names) + [
                                               "lr", "knn_top1"],
                                           verbose=1 if is_chief else 0)
        self.train_log = run_dir.train_log(start_step) if is_chief else None
        self.skipped_total = 0
        self.views = views if is_chief else None
        self.files_gone_bad = files_gone_bad
        self.progbar.update(start_step)

    def write(self, first, step, logs):
        """Reports the metrics of steps ``first..step`` (``logs``: name -> float)."""
        if "skipped_steps" in logs:
            logs["skipped_steps"] = skipped = int(round(logs["skipped_steps"]))
            self.skipped_total += skipped
            if skipped:
                logging.warning(
                    "Skipped %d of steps %d-%d: non-finite loss or gradients "
                    "(%d skipped in this run).", skipped, first, step, self.skipped_total)
        gone_bad = len(self.files_gone_bad()) if self.files_gone_bad else 0
        if gone_bad:  # image files unreadable since the scan, each stood in for (warned once)
            logs["files_gone_bad"] = gone_bad
        with self.writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
            if self.views is not None:
                views = next(self.views)[0]
                scale = max(1, 96 // int(views["view1"].shape[1]))
                tf.summary.image("augmented_views", view_grid.grid(views, scale)[None])
        if self.train_log is not None:
            self.train_log.write(step, logs)
        self.progbar.update(step, list(logs.items()))

    def close(self):
        self.writer.flush()
