"""NT-Xent, the contrastive loss of SimCLR, with negatives from every replica.

Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv:2002.05709), Eq. 1.

:func:`nt_xent_loss` returns the official objective (``tf2/objective.py``):
the cross-entropy of the view-1 anchors plus that of the view-2 anchors, each
a mean over the N pairs, which is twice the paper's mean over the 2N anchors.
The official learning rates and weight decays were tuned at this scale, so
they transfer unchanged. Under a ``tf.distribute`` strategy the keys are the
*global* batch: each anchor sees ``2 * global_batch - 2`` negatives, as on one
device.
"""

import keras
import tensorflow as tf

__all__ = ["nt_xent_loss", "NTXentLoss", "contrastive_metrics", "distillation_loss", "masked_cross_entropy",
           "LARGE_NUM"]

# Value written into an anchor's own column of the logits. Finite (not -inf) so
# that `p * log p` stays 0 (not NaN) in the entropy metric; exp(-1e9) is 0.
LARGE_NUM = 1e9


def _replica_layout(local_size):
    """(replica context or None, offset, global_size) of this replica's examples.

    ``offset`` counts the examples of lower replica ids. The sizes are gathered,
    so uneven last batches are laid out correctly.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None, tf.constant(0, tf.int32), local_size
    sizes = ctx.all_gather(tf.reshape(local_size, [1]), axis=0)  # [R]
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    # Sum of the sizes of the replicas before this one, written without a
    # data-dependent slice so that it also compiles under XLA (TPU).
    before = tf.range(tf.shape(sizes)[0]) < replica_id
    offset = tf.reduce_sum(tf.where(before, sizes, tf.zeros_like(sizes)))
    return ctx, offset, tf.reduce_sum(sizes)


def nt_xent_loss(z1, z2, temperature, hidden_norm=True):
    """NT-Xent (Eq. 1 of SimCLR) against the keys of every replica.

    ``z1[i]`` and ``z2[i]`` are the projections of two views of image ``i``;
    every other view of the global batch is a negative. In a replica context
    the keys are all-gathered (the gradient flows back to the replica that
    made them; replicas may hold different numbers of examples) and each
    anchor's own column is masked with ``-LARGE_NUM``. The loss is twice the
    mean over the 2B local anchors (the official scale); the caller divides it
    by ``num_replicas_in_sync`` before taking gradients, which are summed over
    replicas. Computed in float32 whatever the input dtype.

    Args:
        z1: [B, D] projections of the first views on this replica.
        z2: [B, D] projections of the second views, row-aligned with ``z1``.
        temperature: positive float ``tau``; the logits are divided by it.
        hidden_norm: if True (the paper's setting), L2-normalise ``z1``/``z2``
            along the feature axis before the dot products.

    Returns:
        ``(loss, logits, labels)``: the float32 scalar loss; the [2B, 2·R·B]
        logits of the local anchors (view 1 rows first) against every key;
        the int32 [2B] column of each anchor's positive.

    Example:
        >>> z1 = tf.random.normal([8, 128]); z2 = tf.random.normal([8, 128])
        >>> loss, logits, labels = nt_xent_loss(z1, z2, temperature=0.5)
        >>> logits.shape, labels.shape
        (TensorShape([16, 16]), TensorShape([16]))
    """
    z1 = tf.cast(z1, tf.float32)
    z2 = tf.cast(z2, tf.float32)
    if hidden_norm:
        z1 = tf.math.l2_normalize(z1, axis=-1)
        z2 = tf.math.l2_normalize(z2, axis=-1)

    local_size = tf.shape(z1, out_type=tf.int32)[0]
    ctx, offset, global_size = _replica_layout(local_size)
    if ctx is None:
        k1, k2 = z1, z2
    else:
        k1 = ctx.all_gather(z1, axis=0)
        k2 = ctx.all_gather(z2, axis=0)

    queries = tf.concat([z1, z2], axis=0)  # [2B, D]
    keys = tf.concat([k1, k2], axis=0)  # [2·global, D]
    logits = tf.matmul(queries, keys, transpose_b=True)
    logits = logits / tf.cast(temperature, tf.float32)

    local_idx = tf.range(local_size, dtype=tf.int32)
    # Columns of the view-1 and view-2 keys of this replica's rows.
    col_view1 = offset + local_idx
    col_view2 = global_size + offset + local_idx
    labels = tf.concat([col_view2, col_view1], axis=0)  # positives
    self_cols = tf.concat([col_view1, col_view2], axis=0)  # own columns
    columns = tf.range(tf.shape(logits, out_type=tf.int32)[1])
    self_mask = tf.equal(self_cols[:, None], columns[None, :])
    logits = tf.where(self_mask, tf.constant(-LARGE_NUM, tf.float32), logits)

    per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits)
    # Both directions summed, each a mean over the pairs: 2 x the anchor mean.
    loss = 2.0 * tf.reduce_mean(per_anchor)
    return loss, logits, labels


@keras.saving.register_keras_serializable(package="simclr_tf")
class NTXentLoss(keras.losses.Loss):
    """NT-Xent as a Keras loss, for a user's own model: ``model.compile(loss=NTXentLoss())``.

    ``y_pred`` is the projection z of both views stacked on the batch axis,
    view 1 first (``[2B, D]``, what :class:`simclr_tf.SimCLRModel` returns as
    ``proj_head_output`` for a dict of views); ``y_true`` is ignored (pass any
    array of B or 2B rows). The value is :func:`nt_xent_loss`'s, computed
    through it: the official scale, negatives from every replica. As for any
    Keras loss, ``fit`` under a strategy divides it by the number of replicas
    and sums the replicas' gradients.

    Args:
        temperature: the softmax temperature tau.
        hidden_norm: L2-normalise z first (cosine similarity).

    Example:

    ```python
    z = keras.layers.Dense(64)(keras.layers.GlobalAveragePooling2D()(images))
    model.compile(optimizer="sgd", loss=NTXentLoss(temperature=0.2))
    model.fit(both_views, np.zeros(len(both_views)))  # view-1 rows, then view-2 rows
    ```

    Reference: Chen et al. 2020, arXiv:2002.05709, Eq. 1.
    """

    def __init__(self, temperature=0.5, hidden_norm=True, name="nt_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)
        self.hidden_norm = bool(hidden_norm)

    def call(self, y_true, y_pred):
        z1, z2 = tf.split(y_pred, 2, axis=0)
        loss, _, _ = nt_xent_loss(z1, z2, self.temperature, self.hidden_norm)
        return loss

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature,
                "hidden_norm": self.hidden_norm}


def contrastive_metrics(logits, labels):
    """Accuracy and entropy of the contrastive prediction task.

    Accuracy: the fraction of anchors whose highest logit is their positive.
    Entropy: the mean entropy of each anchor's softmax over the keys.

    Args:
        logits: float [2B, K] as returned by ``nt_xent_loss``.
        labels: int [2B] positive columns as returned by ``nt_xent_loss``.

    Returns:
        dict with float32 scalars ``contrast_acc`` and ``contrast_entropy``.

    Example::

        loss, logits, labels = nt_xent_loss(z1, z2, temperature=0.1)
        m = contrastive_metrics(logits, labels)
        print(float(m["contrast_acc"]), float(m["contrast_entropy"]))
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
    acc = tf.reduce_mean(tf.cast(tf.equal(pred, labels), tf.float32))
    log_p = tf.nn.log_softmax(logits, axis=-1)
    entropy = -tf.reduce_mean(tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1))
    return {"contrast_acc": acc, "contrast_entropy": entropy}


def distillation_loss(teacher_logits, student_logits, temperature=1.0):
    """Soft-label cross-entropy of SimCLR v2 self-training (distillation).

    Eq. 2 of Chen et al., "Big Self-Supervised Models are Strong
    Semi-Supervised Learners", NeurIPS 2020 (arXiv:2006.10029):
    ``-mean_i sum_y softmax(t_i/T)_y log_softmax(s_i/T)_y`` over the global
    batch, without Hinton et al.'s ``T**2`` factor (Eq. 2 has none). The
    teacher gets no gradient. Each replica returns ``R * its sum / N_global``,
    so the mean over replicas is the global-batch loss however the examples
    fall. Computed in float32.

    Args:
        teacher_logits: [B, C] logits of the teacher (temperature not applied).
        student_logits: [B, C] logits of the student.
        temperature: positive float T.

    Returns:
        float32 scalar.

    Example:
        >>> teacher = tf.constant([[4.0, 0.0], [0.0, 4.0]])
        >>> student = tf.zeros([2, 2])                  # uniform: loss log(2)
        >>> round(float(distillation_loss(teacher, student, temperature=2.0)), 4)
        0.6931
    """
    temperature = tf.cast(temperature, tf.float32)
    targets = tf.stop_gradient(
        tf.nn.softmax(tf.cast(teacher_logits, tf.float32) / temperature, axis=-1))
    log_probs = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature,
                                  axis=-1)
    local_sum = -tf.reduce_sum(targets * log_probs)
    local_size = tf.cast(tf.shape(log_probs)[0], tf.float32)
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return local_sum / tf.maximum(local_size, 1.0)
    global_size = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_size)
    return local_sum * ctx.num_replicas_in_sync / tf.maximum(global_size, 1.0)


def masked_cross_entropy(logits, labels):
    """Softmax cross-entropy and accuracy, means over the labelled examples of the global batch.

    Label -1 marks an unlabelled example, which counts for nothing. As in the
    official code the mean is over the global batch: each replica returns
    ``R * its sum / global labelled count``. Returns ``(loss, acc)``, both 0
    when no example has a label.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    valid = labels >= 0
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    mask = tf.cast(valid, tf.float32)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                      tf.float32)
    count, scale = tf.reduce_sum(mask), 1.0
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
        scale = float(ctx.num_replicas_in_sync)
    count = tf.maximum(count, 1.0)
    return (scale * tf.reduce_sum(xent * mask) / count,
            scale * tf.reduce_sum(correct * mask) / count)
