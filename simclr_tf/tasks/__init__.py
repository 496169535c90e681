"""Training objectives: one :class:`Task` per ``train_mode``, each in a file of its own.

A task owns what makes its objective: the model it trains, its optimizers,
its input stream and its loss. The model (:class:`simclr_tf.SimCLRModel`) is
only the network, and the runtime (:mod:`simclr_tf.runtime`) only runs steps.
Add an objective with a module here and a line in :data:`TASKS`
(CONTRIBUTING.md, "Where each change goes").
"""

from simclr_tf.tasks.base import Task
from simclr_tf.tasks.distill import DistillTask
from simclr_tf.tasks.finetune import FinetuneTask
from simclr_tf.tasks.pretrain import PretrainTask

#: ``train_mode`` -> task class.
TASKS = {"pretrain": PretrainTask, "finetune": FinetuneTask, "distill": DistillTask}


def _union(attribute):
    return tuple(dict.fromkeys(k for cls in TASKS.values() for k in getattr(cls, attribute)))


#: Every task's keys a run may change when it resumes (:attr:`Task.resume_free_keys`).
RESUME_FREE_KEYS = _union("resume_free_keys")
#: The train_modes that train the supervised head on labelled data alone.
SUPERVISED_MODES = tuple(name for name, cls in TASKS.items() if cls.labelled_only)


def build_task(train_mode, loss_cfg, teacher=None):
    """The task of ``train_mode`` with the loss settings ``loss_cfg`` (``cfg.loss``)."""
    if train_mode == "distill":
        if teacher is None:
            raise ValueError("train_mode='distill' needs a teacher: pass "
                             "teacher=simclr_tf.export.Teacher(path, image_size).")
        return DistillTask(loss_cfg, teacher)
    return TASKS[train_mode](loss_cfg)


def build_model(cfg, num_classes):
    """The network a run of ``cfg`` trains (its ``train_mode`` decides the head).

    ``cfg``: a ``simclr_tf.Config`` or its ``cfg.model`` section; ``num_classes``
    0 builds no supervised head.
    """
    model_cfg = getattr(cfg, "model", cfg)
    return TASKS[model_cfg.train_mode].build_model(model_cfg, num_classes)


__all__ = ["Task", "PretrainTask", "FinetuneTask", "DistillTask", "TASKS", "build_task",
           "build_model", "RESUME_FREE_KEYS", "SUPERVISED_MODES"]
