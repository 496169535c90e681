"""The SimCLR Keras model: encoder + projection head + supervised head."""

import keras
import tensorflow as tf

from simclr_tf import losses as losses_lib
from simclr_tf import optimizers as optimizers_lib

_SERIALIZE = keras.saving.serialize_keras_object
_DESERIALIZE = keras.saving.deserialize_keras_object


@keras.saving.register_keras_serializable(package="simclr_tf")
class SimCLRModel(keras.Model):
    """SimCLR: contrastive pretraining and supervised fine-tuning in one model.

    Pretraining (``train_mode="pretrain"``) takes batches ``(images, labels)``
    whose images hold two augmented views on the channel axis
    (``[B, H, W, 6]``). Both views go through the encoder in one batch of 2B
    (so BN statistics cover both views, as in the paper), the projection head
    maps the representations h to z, and the NT-Xent loss (Eq. 1 of the
    paper) contrasts each view with the other view of the same image against
    the 2N-2 other views of the global batch. When labels exist (>= 0) and
    ``lineareval_while_pretraining`` is on, a linear probe on
    ``stop_gradient(h)`` learns to classify both views at the same time; it
    never changes the encoder.

    Fine-tuning (``train_mode="finetune"``) takes ``(images [B, H, W, 3],
    labels)`` and trains the supervised head on the projection-head layer
    ``ft_proj_selector`` (0 = h). ``fine_tune_after_block`` freezes the stem
    and block groups up to that index; frozen layers run in inference mode, so
    their BN statistics do not drift (``fine_tune_after_block=4`` is linear
    evaluation with a frozen encoder).

    Weight decay: LARS applies it itself (excluding BN, biases and the
    supervised head, by variable path). For other optimisers the model adds
    the official code's L2 term ``weight_decay * sum(w^2) / 2`` (gradient
    ``weight_decay * w``) over weights that are neither BN parameters nor biases.

    Args:
        encoder: a ``simclr_tf.models.resnet.ResNet`` (any layer mapping images
            to h [B, C] works).
        projection_head: a ``simclr_tf.models.heads.ProjectionHead``.
        supervised_head: a ``simclr_tf.models.heads.SupervisedHead`` or None
            (pretraining on unlabelled data).
        train_mode: ``"pretrain"`` or ``"finetune"``.
        temperature: NT-Xent temperature.
        hidden_norm: L2-normalise z before the loss.
        ft_proj_selector: projection-head layer the supervised head reads when
            fine-tuning.
        fine_tune_after_block: -1 trains the whole encoder; 0..4 freezes the
            stem and block groups up to that index when fine-tuning.
        weight_decay: coefficient of the L2 term for non-LARS optimisers.
        lineareval_while_pretraining: train the probe during pretraining.

    Example:

    ```python
    from simclr_tf.models import resnet, heads, simclr_model
    from simclr_tf import optimizers
    model = simclr_model.SimCLRModel(
        resnet.ResNet(18, width_multiplier=0.25, cifar_stem=True),
        heads.ProjectionHead("nonlinear", proj_out_dim=64, num_proj_layers=2),
        heads.SupervisedHead(10), temperature=0.5)
    model.compile(optimizer=optimizers.LARS(0.3, weight_decay=1e-6))
    model.fit(train_ds, steps_per_epoch=100)   # (images [B,32,32,6], labels)
    model.evaluate(eval_ds)                     # (images [B,32,32,3], labels)
    ```

    Reference: Chen et al., "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020 (arXiv:2002.05709); Chen et al., "Big
    Self-Supervised Models are Strong Semi-Supervised Learners", NeurIPS 2020
    (arXiv:2006.10029).
    """

    def __init__(self, encoder, projection_head, supervised_head=None, *,
                 train_mode="pretrain", temperature=0.1, hidden_norm=True,
                 ft_proj_selector=0, fine_tune_after_block=-1, weight_decay=0.0,
                 lineareval_while_pretraining=True, **kwargs):
        super().__init__(**kwargs)
        if train_mode not in ("pretrain", "finetune"):
            raise ValueError(f"train_mode must be 'pretrain' or 'finetune', got "
                             f"{train_mode!r}.")
        if train_mode == "finetune" and supervised_head is None:
            raise ValueError("train_mode='finetune' needs a supervised_head (the "
                             "dataset must have labels).")
        self.encoder = encoder
        self.projection_head = projection_head
        self.supervised_head = supervised_head
        self.train_mode = train_mode
        self.temperature = temperature
        self.hidden_norm = hidden_norm
        self.ft_proj_selector = ft_proj_selector
        self.fine_tune_after_block = fine_tune_after_block
        self.weight_decay = weight_decay
        self.lineareval_while_pretraining = lineareval_while_pretraining
        if train_mode == "finetune":
            self.encoder.freeze(fine_tune_after_block)
        names = ["loss"]
        if train_mode == "pretrain":
            names += ["contrast_loss", "contrast_acc", "contrast_entropy"]
        if supervised_head is not None:
            names += ["sup_loss", "sup_acc"]
        names.append("weight_decay")
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self._top1 = keras.metrics.SparseTopKCategoricalAccuracy(k=1, name="top1")
        self._top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")

    # ------------------------------------------------------------------ calls
    def call(self, images, training=False):
        """Maps images [B, H, W, 3] in [0, 1] to a dict of named outputs.

        Keys: ``final_avg_pool`` (h), ``proj_head_output`` (z),
        ``proj_head_hidden_<i>`` for each projection layer i >= 1 and, with a
        supervised head, ``logits_sup``. A pretraining batch [B, H, W, 6] (two
        views on the channel axis, as ``fit`` passes it when it builds the
        model) gives the outputs of its 2B views, view 1 first.
        """
        images = _views_to_batch(images)
        h = self.encoder(images, training=training)
        z, hiddens = self.projection_head(h, training=training)
        outputs = {"final_avg_pool": h, "proj_head_output": z}
        for i, hidden in enumerate(hiddens[1:], start=1):
            outputs[f"proj_head_hidden_{i}"] = hidden
        if self.supervised_head is not None:
            outputs["logits_sup"] = self.supervised_head(
                self._sup_features(h, hiddens), training=training)
        return outputs

    def _sup_features(self, h, hiddens):
        if self.train_mode == "finetune":
            return hiddens[self.ft_proj_selector]
        return tf.stop_gradient(h)

    @property
    def metrics(self):
        return list(self._trackers.values()) + [self._top1, self._top5]

    # --------------------------------------------------------------- training
    def _weight_decay_term(self):
        """(L2 penalty value, whether it belongs in the loss).

        The value is reported for every optimizer; LARS applies the decay in
        its update instead of through the loss.
        """
        if self.weight_decay <= 0:
            return tf.constant(0.0), False
        # The supervised head is decayed too (only LARS leaves it out).
        penalty = optimizers_lib.weight_decay_l2(
            self.trainable_variables, self.weight_decay,
            exclude=("batch_normalization", "bias"))
        optimizer = getattr(self, "optimizer", None)
        return penalty, not isinstance(optimizer, optimizers_lib.LARS)

    def _pretrain_losses(self, images, labels, training=True):
        h = self.encoder(_views_to_batch(images), training=training)
        z, _ = self.projection_head(h, training=training)
        z1, z2 = tf.split(z, 2, axis=0)
        contrast_loss, logits, contrast_labels = losses_lib.nt_xent_loss(
            z1, z2, self.temperature, hidden_norm=self.hidden_norm)
        results = {"contrast_loss": contrast_loss}
        results.update(losses_lib.contrastive_metrics(logits, contrast_labels))
        total = contrast_loss
        if self.supervised_head is not None and self.lineareval_while_pretraining:
            sup_logits = self.supervised_head(tf.stop_gradient(h), training=training)
            both_labels = tf.concat([labels, labels], axis=0)
            sup_loss, sup_acc = _masked_cross_entropy(sup_logits, both_labels)
            results.update(sup_loss=sup_loss, sup_acc=sup_acc)
            total = total + sup_loss
        return total, results

    def _finetune_losses(self, images, labels, training=True):
        h = self.encoder(images, training=training)
        _, hiddens = self.projection_head(h, training=training)
        logits = self.supervised_head(hiddens[self.ft_proj_selector],
                                      training=training)
        sup_loss, sup_acc = _masked_cross_entropy(logits, labels)
        return sup_loss, {"sup_loss": sup_loss, "sup_acc": sup_acc}

    def compute_train_losses(self, data, training=True):
        """Returns (total loss on this replica, dict of metric values)."""
        images, labels = data
        labels = tf.cast(labels, tf.int32)
        if self.train_mode == "pretrain":
            total, results = self._pretrain_losses(images, labels, training)
        else:
            total, results = self._finetune_losses(images, labels, training)
        penalty, in_loss = self._weight_decay_term()
        results["weight_decay"] = penalty
        if in_loss:
            total = total + penalty
        results["loss"] = total
        return total, results

    def train_step(self, data):
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, results = self.compute_train_losses(data, training=True)
            # Each replica holds the mean over its own anchors; gradients are
            # summed across replicas, so scale to get the global-batch mean.
            scaled_loss = loss / num_replicas
        variables = self.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        # Unused weights (the probe when it is off, projection layers above
        # ft_proj_selector when fine-tuning) have no gradient.
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables) if g is not None])
        for name, value in results.items():
            if name in self._trackers:
                self._trackers[name].update_state(value)
        return {name: t.result() for name, t in self._trackers.items()}

    def test_step(self, data):
        images, labels = data
        if self.supervised_head is None:
            raise ValueError("Evaluation needs a supervised head: the training data "
                             "had no labels. Fine-tune on a labelled split first.")
        outputs = self(images, training=False)
        labels = tf.cast(labels, tf.int32)
        logits = tf.cast(outputs["logits_sup"], tf.float32)
        self._top1.update_state(labels, logits)
        self._top5.update_state(labels, logits)
        return {"top1": self._top1.result(), "top5": self._top5.result()}

    # ------------------------------------------------------------------ config
    def get_config(self):
        return {
            "name": self.name,
            "encoder": _SERIALIZE(self.encoder),
            "projection_head": _SERIALIZE(self.projection_head),
            "supervised_head": (_SERIALIZE(self.supervised_head)
                                if self.supervised_head is not None else None),
            "train_mode": self.train_mode,
            "temperature": self.temperature,
            "hidden_norm": self.hidden_norm,
            "ft_proj_selector": self.ft_proj_selector,
            "fine_tune_after_block": self.fine_tune_after_block,
            "weight_decay": self.weight_decay,
            "lineareval_while_pretraining": self.lineareval_while_pretraining,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "projection_head", "supervised_head"):
            if config.get(key) is not None:
                config[key] = _DESERIALIZE(config[key])
        return cls(**config)


def _views_to_batch(images):
    """[B, H, W, 6] (two views on channels) -> [2B, H, W, 3]; else unchanged."""
    if images.shape[-1] == 6:
        return tf.concat(tf.split(images, 2, axis=-1), axis=0)
    return images


def _masked_cross_entropy(logits, labels):
    """Mean softmax cross-entropy and accuracy over examples with labels >= 0."""
    logits = tf.cast(logits, tf.float32)
    valid = labels >= 0
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    mask = tf.cast(valid, tf.float32)
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    loss = tf.reduce_sum(xent * mask) / count
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                      tf.float32)
    return loss, tf.reduce_sum(correct * mask) / count


def build_model(cfg, num_classes):
    """Builds the SimCLRModel described by a ``simclr_tf.config.Config``.

    ``num_classes`` of 0 builds no supervised head (unlabelled data).
    """
    from simclr_tf.models import heads, resnet

    encoder = resnet.ResNet(
        cfg.resnet_depth, width_multiplier=cfg.width_multiplier,
        cifar_stem=cfg.cifar_stem, sk_ratio=cfg.sk_ratio,
        batch_norm_decay=cfg.batch_norm_decay, global_bn=cfg.global_bn,
        name="encoder")
    projection_head = heads.ProjectionHead(
        cfg.proj_head_mode, proj_out_dim=cfg.proj_out_dim,
        num_proj_layers=cfg.num_proj_layers, batch_norm_decay=cfg.batch_norm_decay,
        global_bn=cfg.global_bn, name="projection_head")
    supervised_head = None
    if num_classes > 0:
        supervised_head = heads.SupervisedHead(
            num_classes, zero_init=cfg.zero_init_logits_layer, name="head_supervised")
    return SimCLRModel(
        encoder, projection_head, supervised_head, train_mode=cfg.train_mode,
        temperature=cfg.temperature, hidden_norm=cfg.hidden_norm,
        ft_proj_selector=cfg.ft_proj_selector,
        fine_tune_after_block=cfg.fine_tune_after_block,
        weight_decay=cfg.weight_decay,
        lineareval_while_pretraining=cfg.lineareval_while_pretraining,
        name="simclr")
