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

    Distillation (``train_mode="distill"``, SimCLR v2 self-training) takes
    ``(images [B, H, W, 3], labels)`` like fine-tuning: a frozen teacher (see
    :meth:`set_teacher`; run in inference mode, never trained, not saved with
    this model) labels each image with ``softmax(teacher_logits / T)`` and
    the model (the student, usually freshly initialised) minimises
    :func:`simclr_tf.losses.distillation_loss` on its ``logits_sup`` (read
    from projection layer ``ft_proj_selector``), plus
    ``distill_label_weight`` times the cross-entropy on the true labels of
    the examples that have one (label >= 0).

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
        train_mode: ``"pretrain"``, ``"finetune"`` or ``"distill"``.
        temperature: NT-Xent temperature.
        hidden_norm: L2-normalise z before the loss.
        ft_proj_selector: projection-head layer the supervised head reads when
            fine-tuning.
        fine_tune_after_block: -1 trains the whole encoder; 0..4 freezes the
            stem and block groups up to that index when fine-tuning.
        weight_decay: coefficient of the L2 term for non-LARS optimisers.
        lineareval_while_pretraining: train the probe during pretraining.
        nonfinite_policy: ``"stop"`` (default) applies every update; the
            caller checks the loss and stops. ``"skip"``: a step whose loss or
            gradients are non-finite on any replica changes no weight (nor
            optimizer slot or BN statistic), only ``optimizer.iterations``
            advances, and the ``skipped_steps`` metric counts it.
        distill_temperature: temperature T of the distillation loss.
        distill_label_weight: weight of the true-label cross-entropy added to
            the distillation loss (0: pure distillation).

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
                 lineareval_while_pretraining=True, nonfinite_policy="stop",
                 distill_temperature=1.0, distill_label_weight=0.0, **kwargs):
        super().__init__(**kwargs)
        if nonfinite_policy not in ("stop", "skip"):
            raise ValueError(f"nonfinite_policy must be 'stop' or 'skip', got "
                             f"{nonfinite_policy!r}.")
        if train_mode not in ("pretrain", "finetune", "distill"):
            raise ValueError(f"train_mode must be 'pretrain', 'finetune' or 'distill', "
                             f"got {train_mode!r}.")
        if train_mode != "pretrain" and supervised_head is None:
            raise ValueError(f"train_mode={train_mode!r} needs a supervised_head (the "
                             "dataset, or the teacher, must have labels).")
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
        self.nonfinite_policy = nonfinite_policy
        self.distill_temperature = distill_temperature
        self.distill_label_weight = distill_label_weight
        self._teacher = None
        if train_mode == "finetune":
            self.encoder.freeze(fine_tune_after_block)
        names = ["loss"]
        if train_mode == "pretrain":
            names += ["contrast_loss", "contrast_acc", "contrast_entropy"]
        if train_mode == "distill":
            names += ["distill_loss", "distill_acc"]
        if supervised_head is not None and (train_mode != "distill"
                                            or distill_label_weight > 0):
            names += ["sup_loss", "sup_acc"]
        names.append("weight_decay")
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}
        if nonfinite_policy == "skip":
            self._trackers["skipped_steps"] = keras.metrics.Sum(name="skipped_steps")
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

    def set_teacher(self, teacher):
        """Sets the distillation teacher: a callable images -> logits [B, C].

        E.g. a :class:`simclr_tf.teacher.Teacher`. It is held outside Keras'
        tracking: its weights are not this model's (not trained, saved,
        checkpointed or exported).
        """
        object.__setattr__(self, "_teacher", teacher)

    def _sup_features(self, h, hiddens):
        if self.train_mode != "pretrain":
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

    def _distill_losses(self, images, labels, training=True):
        if self._teacher is None:
            raise ValueError("train_mode='distill' needs a teacher: call "
                             "model.set_teacher(simclr_tf.teacher.Teacher(path, size)).")
        teacher_logits = self._teacher(images)
        h = self.encoder(images, training=training)
        _, hiddens = self.projection_head(h, training=training)
        logits = tf.cast(self.supervised_head(hiddens[self.ft_proj_selector],
                                              training=training), tf.float32)
        distill = losses_lib.distillation_loss(teacher_logits, logits,
                                               self.distill_temperature)
        agree = tf.equal(tf.argmax(logits, -1), tf.argmax(teacher_logits, -1))
        results = {"distill_loss": distill,
                   "distill_acc": tf.reduce_mean(tf.cast(agree, tf.float32))}
        total = distill
        if self.distill_label_weight > 0:
            sup_loss, sup_acc = _masked_cross_entropy(logits, labels)
            results.update(sup_loss=sup_loss, sup_acc=sup_acc)
            total = total + self.distill_label_weight * sup_loss
        return total, results

    def compute_train_losses(self, data, training=True):
        """Returns (total loss on this replica, dict of metric values)."""
        images, labels = data
        labels = tf.cast(labels, tf.int32)
        if self.train_mode == "pretrain":
            total, results = self._pretrain_losses(images, labels, training)
        elif self.train_mode == "distill":
            total, results = self._distill_losses(images, labels, training)
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
        bn_state = None
        if self.nonfinite_policy == "skip":  # snapshot before the forward pass
            bn_state = [tf.identity(v) for v in self._bn_state()]
        with tf.GradientTape() as tape:
            loss, results = self.compute_train_losses(data, training=True)
            # Each replica holds the mean over its own anchors; gradients are
            # summed across replicas, so scale to get the global-batch mean.
            scaled_loss = loss / num_replicas
        variables = self.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        # Unused weights (the probe when it is off, projection layers above
        # ft_proj_selector when fine-tuning) have no gradient.
        grads_and_vars = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if self.nonfinite_policy == "skip":
            self._apply_or_skip(loss, grads_and_vars, results, bn_state, num_replicas)
        else:
            self.optimizer.apply_gradients(grads_and_vars)
            for name, value in results.items():
                if name in self._trackers:
                    self._trackers[name].update_state(value)
        return {name: t.result() for name, t in self._trackers.items()}

    def _bn_state(self):
        """The variables a training-mode forward pass updates (BN statistics)."""
        return [v for v in self.non_trainable_variables
                if v.name in ("moving_mean", "moving_variance")]

    def _apply_or_skip(self, loss, grads_and_vars, results, bn_state, num_replicas):
        """nonfinite_policy="skip": the update unless the step is non-finite.

        The decision is all-reduced, so every replica (and worker) takes the
        same branch. A skipped step restores the BN statistics its forward pass
        changed, leaves weights and optimizer slots alone and only advances
        ``optimizer.iterations`` (so the step keeps pointing at the same batch
        of the data stream when the run resumes).
        """
        optimizer = self.optimizer
        if not optimizer.built:  # no variable creation inside tf.cond
            optimizer.build(self.trainable_variables)
        finite = tf.math.is_finite(tf.cast(loss, tf.float32))
        for g, _ in grads_and_vars:
            finite = tf.logical_and(finite, tf.reduce_all(
                tf.math.is_finite(tf.convert_to_tensor(g))))
        bad_replicas = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
        skip = bad_replicas > 0

        def apply_fn(pairs):
            optimizer.apply_gradients(pairs)

        def skip_fn():
            optimizer.iterations.assign_add(1)

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(skip, skip_fn, lambda: apply_fn(grads_and_vars))
        else:
            # As keras.optimizers.LossScaleOptimizer: a strategy cannot run a
            # tf.cond whose branch calls merge_call (apply_gradients does) in
            # a replica context, so branch in the cross-replica context.
            def merge_fn(strategy, skip, pairs):
                skip = strategy.experimental_local_results(skip)[0]
                tf.cond(skip, skip_fn, lambda: strategy.extended.call_for_each_replica(
                    apply_fn, args=(pairs,)))

            tf.distribute.get_replica_context().merge_call(
                merge_fn, args=(skip, grads_and_vars))
        for v, old in zip(self._bn_state(), bn_state):
            v.assign(tf.where(skip, old, v))
        keep = 1.0 - tf.cast(skip, tf.float32)
        for name, value in results.items():
            if name in self._trackers:
                value = tf.cast(value, tf.float32)
                self._trackers[name].update_state(
                    tf.where(skip, tf.zeros_like(value), value), sample_weight=keep)
        # Sum metrics add up their replicas when read: count each step once.
        self._trackers["skipped_steps"].update_state(
            tf.cast(skip, tf.float32) / num_replicas)

    def test_step(self, data):
        images, labels = data
        if self.supervised_head is None:
            raise ValueError("Evaluation needs a supervised head: the training data "
                             "had no labels. Fine-tune on a labelled split first.")
        outputs = self(images, training=False)
        labels = tf.cast(labels, tf.int32)
        logits = tf.cast(outputs["logits_sup"], tf.float32)
        # Unlabelled examples (label -1) do not count; metric ``count`` is the
        # number of labelled ones.
        valid = tf.cast(labels >= 0, tf.float32)
        labels = tf.maximum(labels, 0)
        self._top1.update_state(labels, logits, sample_weight=valid)
        self._top5.update_state(labels, logits, sample_weight=valid)
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
            "nonfinite_policy": self.nonfinite_policy,
            "distill_temperature": self.distill_temperature,
            "distill_label_weight": self.distill_label_weight,
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

    ``cfg.precision == "bfloat16"`` gives the encoder the Keras policy
    ``mixed_bfloat16`` (bfloat16 compute, float32 variables; Keras' BN computes
    its statistics in float32) and keeps the heads in float32, so z, the
    logits and the losses are float32. No global policy is set; with
    ``"float32"`` every part follows the global policy, as before.
    """
    from simclr_tf.models import heads, resnet

    encoder_dtype = head_dtype = None
    if getattr(cfg, "precision", "float32") == "bfloat16":
        encoder_dtype, head_dtype = "mixed_bfloat16", "float32"
    encoder = resnet.ResNet(
        cfg.resnet_depth, width_multiplier=cfg.width_multiplier,
        cifar_stem=cfg.cifar_stem, sk_ratio=cfg.sk_ratio,
        batch_norm_decay=cfg.batch_norm_decay, global_bn=cfg.global_bn,
        name="encoder", dtype=encoder_dtype)
    projection_head = heads.ProjectionHead(
        cfg.proj_head_mode, proj_out_dim=cfg.proj_out_dim,
        num_proj_layers=cfg.num_proj_layers, batch_norm_decay=cfg.batch_norm_decay,
        global_bn=cfg.global_bn, name="projection_head", dtype=head_dtype)
    supervised_head = None
    if num_classes > 0:
        supervised_head = heads.SupervisedHead(
            num_classes, zero_init=cfg.zero_init_logits_layer,
            input_batch_norm=cfg.train_mode == "pretrain",
            batch_norm_decay=cfg.batch_norm_decay, global_bn=cfg.global_bn,
            name="head_supervised", dtype=head_dtype)
    return SimCLRModel(
        encoder, projection_head, supervised_head, train_mode=cfg.train_mode,
        temperature=cfg.temperature, hidden_norm=cfg.hidden_norm,
        ft_proj_selector=cfg.ft_proj_selector,
        fine_tune_after_block=cfg.fine_tune_after_block,
        weight_decay=cfg.weight_decay,
        lineareval_while_pretraining=cfg.lineareval_while_pretraining,
        nonfinite_policy=getattr(cfg, "nonfinite_policy", "stop"),
        distill_temperature=getattr(cfg, "distill_temperature", 1.0),
        distill_label_weight=getattr(cfg, "distill_label_weight", 0.0),
        name="simclr")
