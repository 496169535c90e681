"""NT-Xent, the contrastive loss of SimCLR, with negatives from every replica.

Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020, arXiv:2002.05709.

The paper's Eq. 1 defines, for a positive pair of examples ``(i, j)`` (two
augmented views of the same image) among the ``2N`` views of a batch of ``N``
images::

    l(i, j) = -log( exp(sim(z_i, z_j) / tau)
                    / sum_{k = 1..2N, k != i} exp(sim(z_i, z_k) / tau) )

where ``sim(u, v) = u.v / (||u|| ||v||)`` is the cosine similarity and ``tau``
the temperature. Each of the ``2N`` views is an anchor once: its positive is
the other view of its image and the remaining ``2N - 2`` views are its
negatives. The paper's loss is the mean over all anchors,
``L = 1/(2N) * sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``.

Scale: :func:`nt_xent_loss` returns ``2 L``, the objective the official code
optimises (``tf2/objective.py``: the cross-entropy of the view-1 anchors
plus that of the view-2 anchors, each a mean over the N pairs). The official
learning rates and weight decays were tuned on that scale, so they transfer
unchanged (under LARS the excluded BN and bias parameters, and with SGD
every parameter, would otherwise train at half the official rate), and the
``contrast_loss`` in our logs reads like the official logs. Collapsed
embeddings give ``2 ln(2N - 1)``. Written as a classification
problem, ``l(i, j)`` is the softmax cross-entropy of a ``2N``-way logit vector
``sim(z_i, .) / tau`` whose own entry ``k = i`` is removed and whose target is
the column of ``j``.

Under a ``tf.distribute`` strategy the "batch" of Eq. 1 is the *global* batch:
every replica gathers the embeddings of all replicas and uses them as keys,
so each local anchor sees ``2 * global_batch - 2`` negatives, exactly as on a
single device with the global batch.
"""

import tensorflow as tf

__all__ = ["nt_xent_loss", "contrastive_metrics", "distillation_loss", "masked_cross_entropy",
           "LARGE_NUM"]

# Value written into an anchor's own column of the logits. Finite (not -inf) so
# that `p * log p` stays 0 (not NaN) in the entropy metric; exp(-1e9) is 0.
LARGE_NUM = 1e9


def _replica_layout(local_size):
    """Returns (replica context or None, offset, global_size) for this replica.

    ``offset`` is the number of examples on replicas with a smaller replica id
    and ``global_size`` the total number of examples over all replicas. The
    sizes are gathered, so replicas holding different numbers of examples
    (the uneven last batch of a distributed dataset) are laid out correctly.
    Outside a multi-replica context, ``(None, 0, local_size)``.
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
    """Normalised temperature-scaled cross-entropy (NT-Xent), Eq. 1 of SimCLR.

    ``z1[i]`` and ``z2[i]`` are the projections of two augmented views of the
    same image ``i`` (a positive pair). All other views in the global batch
    are negatives. With ``hidden_norm=True`` the embeddings are L2-normalised
    so the dot products are the cosine similarities ``sim`` of Eq. 1.

    In a replica context of a ``tf.distribute`` strategy with ``R`` replicas,
    the keys are gathered from every replica (``ReplicaContext.all_gather``,
    whose gradient sums the key gradients of all replicas back onto the
    replica that produced them)::

        K = concat([z1 of replica 0, ..., z1 of replica R-1,
                    z2 of replica 0, ..., z2 of replica R-1])      # [2·R·B, D]

    and the queries are this replica's ``concat([z1, z2])`` ([2B, D]). For the
    local row ``i`` on replica ``r`` the positive of the view-1 anchor is at
    column ``R·B + r·B + i`` (its view 2) and the positive of the view-2 anchor
    at column ``r·B + i``; each anchor's own column (``r·B + i`` resp.
    ``R·B + r·B + i``) is set to ``-LARGE_NUM`` so that it drops out of the
    softmax, which leaves the ``2·R·B - 1`` other views of Eq. 1's denominator.
    (The offsets come from the gathered per-replica sizes, so replicas may
    hold different numbers of examples.)

    The returned loss is twice the mean of ``l(i, j)`` over the ``2B`` local
    anchors: the official objective (see the module docstring), i.e. the mean
    over the B local pairs of ``l(view 1 anchor) + l(view 2 anchor)``. When
    all replicas hold ``B`` examples, the mean of the per-replica losses is
    the single-device loss of the global batch. The caller divides each
    replica's loss by ``num_replicas_in_sync`` before taking gradients; the
    optimizer then sums the gradients over the replicas, which gives the
    gradient of the global-batch loss.

    Outside any strategy (default strategy) or in a cross-replica context the
    function works on the local batch only (``R = 1``, ``r = 0``).

    The computation runs in float32 even when ``z1``/``z2`` are bfloat16 or
    float16 (mixed precision): the inputs are cast first.

    Args:
        z1: [B, D] projections of the first views on this replica.
        z2: [B, D] projections of the second views, row-aligned with ``z1``.
        temperature: positive float ``tau``; the logits are divided by it.
        hidden_norm: if True (the paper's setting), L2-normalise ``z1``/``z2``
            along the feature axis before the dot products.

    Returns:
        A tuple ``(loss, logits, labels)``:
        ``loss`` float32 scalar, 2 x the mean over the 2B local anchors (the
        official objective's scale);
        ``logits`` float32 [2B, 2·R·B], row ``a`` = similarities of local
        anchor ``a`` (rows ``0..B-1`` view 1, ``B..2B-1`` view 2) with every
        key divided by the temperature, own column at ``-LARGE_NUM``;
        ``labels`` int32 [2B], the column of each anchor's positive.

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


def contrastive_metrics(logits, labels):
    """Accuracy and entropy of the contrastive prediction task.

    Each anchor (row of ``logits``) "classifies" which of the other views is
    its positive: the contrastive accuracy is the fraction of anchors whose
    highest logit is the positive's column, and the contrastive entropy is
    the mean over anchors of the entropy ``-sum_k p_k log p_k`` of the softmax
    over the keys (the anchor's own column, at ``-LARGE_NUM``, has ``p = 0``).
    Both are computed over all ``2B`` local anchors (both views).

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
    Semi-Supervised Learners", NeurIPS 2020 (arXiv:2006.10029)::

        L = -1/N * sum_i sum_y P_T(y|x_i; T) log P_S(y|x_i; T)
        P_T = softmax(teacher_logits / T),  log P_S = log_softmax(student_logits / T)

    averaged over the N examples of the *global* batch. No ``T**2`` factor
    (Hinton et al. scale by ``T**2`` to keep gradient magnitudes comparable
    across temperatures when mixing with a hard-label loss; the SimCLR v2
    paper's Eq. 2 has none, and ``distill_label_weight`` sets the mix).
    The teacher side gets no gradient.

    In a replica context with R replicas, the value returned on each replica
    is ``R * (sum of its per-example losses) / N_global`` (N_global gathered
    with an all-reduce), so the mean over replicas is exactly the global-batch
    loss, also when replicas hold different numbers of examples; with equal
    batches it is the local mean, as ``nt_xent_loss`` returns. The train step
    divides by R before taking gradients, which the optimizer then sums.
    Outside a strategy (or in a cross-replica context) it is the plain mean.
    Computed in float32 whatever the input dtypes.

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

    Unlabelled examples (label -1: outside a label subset, or an unlabelled
    split) count for nothing. In a replica context with R replicas the
    labelled count is all-reduced and each replica returns ``R * (its sum) /
    global count``, so the mean over replicas (what the step's gradient
    follows) is the global-batch mean however the labels fall on the
    replicas, as the official code's single cross-entropy over the global
    batch; outside a strategy it is the plain mean. Computed in float32.
    Returns ``(loss, acc)``; both 0 when no example has a label.
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
