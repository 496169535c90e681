"""Self-training by distillation (SimCLR v2)."""

import tensorflow as tf

from simclr_tf import losses
from simclr_tf.data import pipeline
from simclr_tf.errors import ConfigError, short_tf_error
from simclr_tf.export import Teacher
from simclr_tf.models import simclr_model
from simclr_tf.tasks.base import Task
from simclr_tf.tasks.finetune import _require_head


class DistillTask(Task):
    """A student learns a frozen teacher's soft labels (SimCLR v2, Eq. 2).

    Batches are ``(images [B, H, W, 3], labels)`` like fine-tuning, but from
    every image of the split (labels -1 outside the labelled subset). The
    teacher (a callable images -> logits, e.g.
    :class:`simclr_tf.export.Teacher`: run in inference mode, never trained,
    not part of the student) labels each image with
    ``softmax(teacher_logits / T)``; the student minimises
    :func:`simclr_tf.losses.distillation_loss` on its ``logits_sup``, plus
    ``distill_label_weight`` times the cross-entropy on the true labels of the
    examples that have one.

    Metrics: ``distill_loss``, ``distill_acc`` (agreement with the teacher's
    top class) and, with a label weight, ``sup_loss``, ``sup_acc``.

    Args:
        loss_cfg: a ``simclr_tf.config.LossConfig``.
        teacher: callable images -> float32 logits [B, C], no gradient.

    Reference: Chen et al., "Big Self-Supervised Models are Strong
    Semi-Supervised Learners", NeurIPS 2020 (arXiv:2006.10029), section 2.3.
    """

    name = "distill"

    @classmethod
    def labels_used(cls, loss_cfg, labelled):
        return labelled if loss_cfg.distill_label_weight > 0 else 0

    def __init__(self, loss_cfg, teacher):
        super().__init__(loss_cfg)
        self.teacher = teacher

    @classmethod
    def for_run(cls, cfg, strategy, num_classes):
        """Loads ``teacher_checkpoint`` (in the strategy's scope, at ``image_size``)
        and checks its classes against the data's; the head gets the teacher's."""
        try:
            with strategy.scope():
                teacher = Teacher(cfg.teacher_checkpoint, cfg.image_size)
        except (OSError, tf.errors.OpError) as e:
            raise ConfigError(f"Cannot load 'teacher_checkpoint' {cfg.teacher_checkpoint!r}: "
                              f"{short_tf_error(e)}") from None
        if num_classes and num_classes != teacher.num_classes:
            raise ConfigError(
                f"The teacher {cfg.teacher_checkpoint!r} predicts {teacher.num_classes} "
                f"classes but {cfg.dataset!r} has {num_classes}: distill on the teacher's "
                "dataset.")
        return cls(cfg.loss, teacher), teacher.num_classes

    @classmethod
    def build_model(cls, model_cfg, num_classes):
        _require_head(cls.name, num_classes)
        return simclr_model.build_model(model_cfg, num_classes)  # a fresh student

    def build_inputs(self, data_cfg, augment_cfg, shard, label_subset=None):
        # Every image, one crop+flip view as fine-tuning; labels only in the subset.
        return pipeline.build_finetune_dataset(data_cfg, shard, label_subset=label_subset,
                                               keep_unlabeled=True)

    def objective_metrics(self, model):
        names = ("distill_loss", "distill_acc")
        return names + (("sup_loss", "sup_acc") if self.cfg.distill_label_weight > 0 else ())

    def compute_loss(self, outputs, batch):
        images, labels = batch
        teacher_logits = self.teacher(images)
        logits = tf.cast(outputs["logits_sup"], tf.float32)
        distill = losses.distillation_loss(teacher_logits, logits,
                                           self.cfg.distill_temperature)
        agree = tf.equal(tf.argmax(logits, -1), tf.argmax(teacher_logits, -1))
        results = {"distill_loss": distill,
                   "distill_acc": tf.reduce_mean(tf.cast(agree, tf.float32))}
        total = distill
        if self.cfg.distill_label_weight > 0:
            sup_loss, sup_acc = losses.masked_cross_entropy(logits, labels)
            results.update(sup_loss=sup_loss, sup_acc=sup_acc)
            total = total + self.cfg.distill_label_weight * sup_loss
        return total, results
