"""Contrastive pretraining (SimCLR), with the optional linear probe."""

import tensorflow as tf

from simclr_tf import losses
from simclr_tf.data import pipeline
from simclr_tf.models.simclr_model import views_to_batch
from simclr_tf.tasks.base import Task


class PretrainTask(Task):
    """SimCLR pretraining: NT-Xent between two views, plus the linear probe.

    Batches are ``(images [B, H, W, 6], labels)``: two augmented views on the
    channel axis. Both views go through the encoder as one batch of 2B (so BN
    statistics cover both views, as in the paper), the projection head maps
    h to z, and :func:`simclr_tf.losses.nt_xent_loss` (Eq. 1 of the paper)
    contrasts each view with the other view of its image against every other
    view of the global batch. When the model has a supervised head and
    ``lineareval_while_pretraining`` is on, the head is a linear probe on
    ``stop_gradient(h)`` that learns to classify both views (labels >= 0
    only) at the same time; it never changes the encoder. With
    ``probe_learning_rate > 0`` (the default) the probe's weights are
    :meth:`probe_variables`: the training step updates them with their own
    optimizer (:func:`simclr_tf.optimizers.build_probe_optimizer`) and they
    get no weight decay; with 0 the pretraining optimizer trains them, as in
    the official code. With ``probe_view="clean"`` the batches carry a third,
    unaugmented view of each image (channels 6:9, preprocessed as for
    evaluation) and the probe learns from it instead, through the encoder in
    inference mode (BN moving statistics, as the frozen-feature evaluation
    reads h): its accuracy then tracks that evaluation instead of trailing it
    by the cost of classifying augmented views (BENCHMARKS.md, "The online
    probe"), for one more forward pass of the batch per step.

    Metrics: ``contrast_loss``, ``contrast_acc``, ``contrast_entropy`` and,
    with the probe, ``sup_loss``, ``sup_acc``.

    Example:

    ```python
    task = PretrainTask(cfg.loss)
    loss, metrics = task.compute_loss(model, (views, labels))
    ```

    Reference: Chen et al. 2020, arXiv:2002.05709, section 2.1 and Eq. 1.
    """

    name = "pretrain"

    def _probe(self, model):
        return model.supervised_head is not None and self.cfg.lineareval_while_pretraining

    def probe_variables(self, model):
        if self._probe(model) and self.cfg.probe_learning_rate > 0:
            return list(model.supervised_head.trainable_variables)
        return []

    def objective_metrics(self, model):
        names = ("contrast_loss", "contrast_acc", "contrast_entropy")
        return names + (("sup_loss", "sup_acc") if self._probe(model) else ())

    def objective(self, model, images, labels, training):
        clean = images[..., 6:] if images.shape[-1] == 9 else None  # probe_view=clean
        if clean is not None:
            images = images[..., :6]
        h = model.encoder(views_to_batch(images), training=training)
        z, _ = model.projection_head(h, training=training)
        z1, z2 = tf.split(z, 2, axis=0)
        contrast_loss, logits, contrast_labels = losses.nt_xent_loss(
            z1, z2, self.cfg.temperature, hidden_norm=self.cfg.hidden_norm)
        results = {"contrast_loss": contrast_loss}
        results.update(losses.contrastive_metrics(logits, contrast_labels))
        total = contrast_loss
        if self._probe(model):
            if clean is None:  # both augmented views, as the official code
                probe_h, probe_labels = h, tf.concat([labels, labels], axis=0)
            else:  # each image once, as the frozen-feature evaluation sees it
                probe_h, probe_labels = model.encoder(clean, training=False), labels
            probe_logits = model.supervised_head(tf.stop_gradient(probe_h),
                                                 training=training)
            sup_loss, sup_acc = losses.masked_cross_entropy(probe_logits, probe_labels)
            results.update(sup_loss=sup_loss, sup_acc=sup_acc)
            total = total + sup_loss
        return total, results

    def train_dataset(self, data_cfg, augment_cfg, batch_size, label_subset, **stream):
        return pipeline.build_train_dataset(
            data_cfg.dataset, data_cfg.train_split, batch_size, data_cfg.image_size,
            color_jitter_strength=augment_cfg.color_jitter_strength,
            color_jitter_impl=augment_cfg.color_jitter_impl,
            view1_augmentations=augment_cfg.view1, view2_augmentations=augment_cfg.view2,
            shared_augmentations=augment_cfg.shared,
            clean_view=self.cfg.probe_view == "clean",
            label_subset=label_subset, **stream)
