"""Running an experiment: setup, the training loop, checkpoints and the model_dir.

- :mod:`~simclr_tf.runtime.experiment`: :func:`build` makes an
  :class:`Experiment` (strategy, data sizes, model, task, optimizer,
  checkpointer) from a config;
- :mod:`~simclr_tf.runtime.loop`: :func:`train`, :func:`evaluate`,
  :func:`export`;
- :mod:`~simclr_tf.runtime.steps`: the compiled train and eval steps;
- :mod:`~simclr_tf.runtime.checkpointer`: resume and the fallback over
  damaged checkpoints;
- :mod:`~simclr_tf.runtime.run_dir`: the model_dir layout and its files;
- :mod:`~simclr_tf.runtime.report`: progress bar, TensorBoard, train_log.jsonl;
- :mod:`~simclr_tf.runtime.task_model`: :class:`TaskModel`, the same step
  through Keras' ``compile``/``fit``/``evaluate``.
"""

from simclr_tf.runtime.experiment import Experiment, build
from simclr_tf.runtime.loop import evaluate, export, train
from simclr_tf.runtime.task_model import TaskModel

__all__ = ["Experiment", "build", "train", "evaluate", "export", "TaskModel"]
