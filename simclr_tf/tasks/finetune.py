"""Supervised fine-tuning (and linear evaluation) of a SimCLR model."""

from simclr_tf import losses
from simclr_tf.data import pipeline
from simclr_tf.tasks.base import Task


class FinetuneTask(Task):
    """Cross-entropy of the supervised head on labelled images.

    Batches are ``(images [B, H, W, 3], labels)`` of random crop + flip views
    (:func:`simclr_tf.data.pipeline.build_finetune_dataset`) from the labelled
    subset only. The supervised head reads projection layer
    ``ft_proj_selector`` (0 = h); which encoder layers train is the model's
    ``fine_tune_after_block`` (4: linear evaluation with a frozen encoder).

    Metrics: ``sup_loss``, ``sup_acc``.

    Reference: Chen et al. 2020 (arXiv:2006.10029), section 2.2: fine-tuning
    from a middle layer of the projection head.
    """

    name = "finetune"

    def objective_metrics(self, model):
        return ("sup_loss", "sup_acc")

    def objective(self, model, images, labels, training):
        logits = model(images, training=training)["logits_sup"]
        sup_loss, sup_acc = losses.masked_cross_entropy(logits, labels)
        return sup_loss, {"sup_loss": sup_loss, "sup_acc": sup_acc}

    def train_dataset(self, data_cfg, augment_cfg, batch_size, label_subset, **stream):
        return pipeline.build_finetune_dataset(
            data_cfg.dataset, data_cfg.train_split, batch_size, data_cfg.image_size,
            label_subset=label_subset, keep_unlabeled=False, **stream)
