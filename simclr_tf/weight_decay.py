"""Weight decay, its one owner: which weights are decayed, and where the decay goes.

What is never decayed (``NOT_DECAYED``; the supervised head ``SUPERVISED_HEAD``,
whose name models/ gives the layer), matched on variable paths by
``is_excluded``; and where the decay is applied: inside LARS' update
(:mod:`simclr_tf.lars` takes its default exclusions from here), or as an L2
term in the loss for every other optimizer (``weight_decay_in_loss``).
It is a module of its own because both lars.py and optimizers.py (which
builds LARS) read it.
"""

import tensorflow as tf

#: Weights never decayed: BN parameters and biases (path substrings).
NOT_DECAYED = ("batch_normalization", "bias")
#: The supervised head's layer name (models/ names the layer with it; checkpoints
#: and .keras files depend on it). LARS leaves its decay to the loss, as the
#: official code (:func:`weight_decay_in_loss`).
SUPERVISED_HEAD = "head_supervised"
#: LARS' default exclusions from weight decay and from the trust ratio.
DEFAULT_EXCLUDE = NOT_DECAYED + (SUPERVISED_HEAD,)


def variable_path(variable):
    """The full path of a variable: Keras 3 ``.path``, else ``.name``.

    Exclusions match paths (``"encoder/.../batch_normalization/gamma"``), never
    Keras 3's ``variable.name`` (only ``"gamma"``, which would silently decay
    batch norm). Plain ``tf.Variable``s have no ``.path``; their ``.name``
    carries the name scopes instead.
    """
    path = getattr(variable, "path", None)
    if path is None:
        path = variable.name
    return path


def is_excluded(path, patterns):
    """True if any of ``patterns`` is a substring of ``path``.

    Args:
        path: a variable path (``variable.path`` in Keras 3) or a variable.
        patterns: iterable of substrings, or None / empty for "nothing
            excluded".

    Example:
        >>> is_excluded("resnet/stem/batch_normalization/gamma",
        ...             DEFAULT_EXCLUDE)
        True
        >>> is_excluded("resnet/stem/conv2d/kernel", DEFAULT_EXCLUDE)
        False
    """
    if not isinstance(path, str):
        path = variable_path(path)
    if not patterns:
        return False
    if isinstance(patterns, str):
        patterns = (patterns,)
    return any(p in path for p in patterns)


def decays_in_update(optimizer):
    """Whether ``optimizer`` (a name, as ``cfg.optimizer``, or an instance) decays in its update.

    Only LARS does; every other optimizer's weight decay goes in the loss
    (:func:`weight_decay_in_loss`).
    """
    if isinstance(optimizer, str):
        return optimizer == "lars"
    # Told by a class attribute, not isinstance: this module sits below lars.py.
    return bool(getattr(optimizer, "decays_weights_in_update", False))


def weight_decay_of(optimizer):
    """``(name, coefficient)`` for :func:`weight_decay_in_loss` of a built optimizer.

    For ``compile``/``fit`` (:class:`simclr_tf.TaskModel`), where only the
    optimizer is known: a LARS decays inside with its own coefficient (the
    loss adds the supervised head's L2); any other gets no decay in the loss.
    """
    if decays_in_update(optimizer):
        return "lars", optimizer.weight_decay
    return "none", 0.0


def weight_decay_in_loss(optimizer, weight_decay, variables):
    """Where weight decay goes, the one rule: ``(term to add to the loss, whole penalty)``.

    LARS decays inside its update (not BN, biases or the supervised head), so
    the loss adds the supervised head's L2 only; any other optimizer gets the
    whole L2 term ``weight_decay * sum(w^2) / 2`` over ``variables`` that are
    neither BN parameters nor biases. The whole penalty is what runs report as
    ``weight_decay``. Weights with an optimizer of their own (the probe's) are
    not in ``variables``.

    Args:
        optimizer: the optimizer's name (``cfg.optimizer``).
        weight_decay: the coefficient.
        variables: the weights the run's optimizer updates.
    """
    if not weight_decay:
        zero = tf.constant(0.0)
        return zero, zero
    penalty = weight_decay_l2(variables, weight_decay, exclude=NOT_DECAYED)
    if not decays_in_update(optimizer):
        return penalty, penalty
    head = [v for v in variables if is_excluded(v, SUPERVISED_HEAD)]
    return weight_decay_l2(head, weight_decay, exclude=NOT_DECAYED), penalty


def weight_decay_l2(variables, weight_decay, exclude=DEFAULT_EXCLUDE):
    """L2 regulariser ``weight_decay * sum_w ||w||^2 / 2`` for non-LARS optimizers.

    The convention is the official SimCLR one, ``wd * sum(tf.nn.l2_loss(w))``
    with ``tf.nn.l2_loss(w) = sum(w**2) / 2``: its gradient is ``wd * w``, the
    same decay LARS adds to the gradient, so ``--weight_decay`` means the
    same for every optimizer. Variables whose path contains one of ``exclude``
    are skipped (with the default: batch norm, biases, the supervised head).

    Args:
        variables: iterable of variables (e.g. ``model.trainable_variables``).
        weight_decay: float coefficient ``wd``.
        exclude: substrings of variable paths to skip.

    Returns:
        float32 scalar tensor (0.0 when nothing is left or ``wd == 0``).

    Example::

        reg = weight_decay_l2(model.trainable_variables, 1e-6)
        total_loss = contrastive_loss + reg
    """
    kept = [v for v in variables if not is_excluded(variable_path(v), exclude)]
    if not kept or not weight_decay:
        return tf.constant(0.0, tf.float32)
    sq = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kept])
    return tf.cast(weight_decay, tf.float32) * sq
