"""Training objectives: one :class:`Task` per ``train_mode``.

A task builds its input stream and computes the loss and metrics of one
replica's batch; the model (:class:`simclr_tf.SimCLRModel`) is only the
network, and the loop (:mod:`simclr_tf.runtime`) only runs steps.

Add an objective by subclassing :class:`Task` in a module of its own and
naming it in :data:`TASKS` (see CONTRIBUTING.md).
"""

from simclr_tf.tasks.base import Task
from simclr_tf.tasks.distill import DistillTask
from simclr_tf.tasks.finetune import FinetuneTask
from simclr_tf.tasks.pretrain import PretrainTask

#: ``train_mode`` -> task class.
TASKS = {"pretrain": PretrainTask, "finetune": FinetuneTask, "distill": DistillTask}


def build_task(train_mode, loss_cfg, teacher=None):
    """The task of ``train_mode`` with the loss settings ``loss_cfg`` (``cfg.loss``)."""
    if train_mode == "distill":
        if teacher is None:
            raise ValueError("train_mode='distill' needs a teacher: pass "
                             "teacher=simclr_tf.export.Teacher(path, image_size).")
        return DistillTask(loss_cfg, teacher)
    return TASKS[train_mode](loss_cfg)


__all__ = ["Task", "PretrainTask", "FinetuneTask", "DistillTask", "TASKS", "build_task"]
