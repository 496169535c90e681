"""Contrastive pretraining (SimCLR) with its online linear probe."""

import tensorflow as tf

from simclr_tf import losses, optimizers
from simclr_tf.data import pipeline
from simclr_tf.errors import ConfigError
from simclr_tf.models import simclr_model
from simclr_tf.tasks.base import Task


class PretrainTask(Task):
    """SimCLR pretraining: NT-Xent between two views of each image, plus a linear probe.

    Batches are ``({"view1", "view2"[, "clean"]}, labels)``. The model encodes
    both views as one batch and projects h to z; :func:`simclr_tf.losses.nt_xent_loss`
    (Eq. 1) contrasts each view with the other view of its image against every
    view of the global batch. With labels and ``lineareval_while_pretraining``
    the supervised head is a linear probe on ``stop_gradient(h)``, trained on
    the examples that have a label: on both augmented views, or with
    ``probe_view="clean"`` on a third, unaugmented view seen in inference mode
    (it then tracks the frozen-feature evaluation). With
    ``probe_learning_rate > 0`` the probe has its own optimizer (SGD, momentum
    0.9, cosine decay, no weight decay); with 0 the run's optimizer trains it,
    as the official code does.

    Metrics: ``contrast_loss``, ``contrast_acc``, ``contrast_entropy`` and,
    with the probe, ``sup_loss``, ``sup_acc``.

    Example:

    ```python
    task = PretrainTask(cfg.loss)
    model = task.build_model(cfg.model, num_classes=10)
    views, labels = batch
    loss, metrics = task.compute_loss(model(views, training=True), batch)
    ```

    Reference: Chen et al. 2020, arXiv:2002.05709, section 2.1 and Eq. 1.
    """

    name = "pretrain"
    learns_representation = True
    # The key 0.2 wrote the probe's optimizer under.
    own_optimizer_keys = ("probe_optimizer",)
    # The probe never changes the encoder; a run of 0.2 (probe under the
    # pretraining optimizer) resumes with the probe's own optimizer.
    resume_free_keys = ("probe_learning_rate",)

    @classmethod
    def build_model(cls, model_cfg, num_classes):
        return simclr_model.build_model(model_cfg, num_classes, probe=True)

    def check_data(self, num_classes, where):
        if self.cfg.probe_view == "clean" and not num_classes:
            raise ConfigError(f"probe_view=clean but {where} has no labels, so there is no "
                              "probe to feed: drop probe_view.")

    def _probe(self, model):
        return model.supervised_head is not None and self.cfg.lineareval_while_pretraining

    def own_optimizers(self, model, total_steps=None):
        if not (self._probe(model) and self.cfg.probe_learning_rate > 0):
            return []
        probe = list(model.supervised_head.trainable_variables)
        if not probe:  # an unbuilt model: the run's optimizer trains the probe
            return []
        optimizer = optimizers.build_probe_optimizer(self.cfg.probe_learning_rate, total_steps)
        optimizer.build(probe)
        return [(optimizer, probe)]

    def build_inputs(self, data_cfg, augment_cfg, shard, label_subset=None):
        return pipeline.build_train_dataset(data_cfg, augment_cfg, shard,
                                            label_subset=label_subset,
                                            clean_view=self.cfg.probe_view == "clean")

    def objective_metrics(self, model):
        names = ("contrast_loss", "contrast_acc", "contrast_entropy")
        return names + (("sup_loss", "sup_acc") if self._probe(model) else ())

    def compute_loss(self, outputs, batch):
        views, labels = batch
        z1, z2 = tf.split(outputs["proj_head_output"], 2, axis=0)
        contrast_loss, logits, contrast_labels = losses.nt_xent_loss(
            z1, z2, self.cfg.temperature, hidden_norm=self.cfg.hidden_norm)
        results = {"contrast_loss": contrast_loss}
        results.update(losses.contrastive_metrics(logits, contrast_labels))
        total = contrast_loss
        if self.cfg.lineareval_while_pretraining and "logits_sup" in outputs:
            # The probe saw both augmented views (2B rows), or the clean one (B).
            probe_labels = labels if "clean" in views else tf.concat([labels, labels], 0)
            sup_loss, sup_acc = losses.masked_cross_entropy(outputs["logits_sup"], probe_labels)
            results.update(sup_loss=sup_loss, sup_acc=sup_acc)
            total = total + sup_loss
        return total, results

