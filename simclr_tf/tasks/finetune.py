"""Supervised fine-tuning (and linear evaluation) of a SimCLR model."""

from simclr_tf import losses
from simclr_tf.data import pipeline
from simclr_tf.models import simclr_model
from simclr_tf.tasks.base import Task


class FinetuneTask(Task):
    """Cross-entropy of the supervised head on labelled images.

    Batches are ``(images [B, H, W, 3], labels)``: random crop + flip views of
    the labelled subset only. The supervised head reads projection layer
    ``ft_proj_selector`` (0 = h); ``fine_tune_after_block`` freezes the encoder
    up to that block group (4: linear evaluation with a frozen encoder).

    Metrics: ``sup_loss``, ``sup_acc``.

    Reference: Chen et al. 2020 (arXiv:2006.10029), section 2.2: fine-tuning
    from a middle layer of the projection head.
    """

    name = "finetune"
    labelled_only = True

    @classmethod
    def build_model(cls, model_cfg, num_classes):
        _require_head(cls.name, num_classes)
        return simclr_model.build_model(model_cfg, num_classes,
                                        fine_tune_after_block=model_cfg.fine_tune_after_block)

    def build_inputs(self, data_cfg, augment_cfg, shard, label_subset=None):
        return pipeline.build_finetune_dataset(data_cfg, shard, label_subset=label_subset)

    def objective_metrics(self, model):
        return ("sup_loss", "sup_acc")

    def compute_loss(self, outputs, batch):
        sup_loss, sup_acc = losses.masked_cross_entropy(outputs["logits_sup"], batch[1])
        return sup_loss, {"sup_loss": sup_loss, "sup_acc": sup_acc}


def _require_head(name, num_classes):
    if num_classes <= 0:
        raise ValueError(f"train_mode={name!r} needs a supervised head (the dataset, or "
                         "the teacher, must have labels).")
