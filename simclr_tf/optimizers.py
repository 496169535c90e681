"""Optimisation for SimCLR: the optimizers, weight decay, the warm-up + cosine schedule.

- Weight decay, its one owner: what is never decayed (``NOT_DECAYED``, the
  supervised head ``SUPERVISED_HEAD``, matched on variable paths by
  ``is_excluded``) and where the decay goes (inside ``LARS``, or in the loss:
  ``weight_decay_in_loss``, ``weight_decay_l2``).
- ``LARS``: layer-wise adaptive rate scaling, the optimizer SimCLR uses for its
  large batches (:mod:`simclr_tf.lars` re-exports it).
- ``WarmUpAndCosine``: linear warm-up, then cosine decay to 0 without restarts,
  with the learning rate scaled by the batch size (SimCLR Appendix B.1).
- ``step_counts``: the one definition of steps per epoch, total and warm-up
  steps; ``build_optimizer``.
"""

import dataclasses
import math
import numbers

import keras
import tensorflow as tf

from simclr_tf.config.choices import LR_SCALINGS, OPTIMIZERS  # noqa: F401  (re-exported)

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


def _as_float_lr(learning_rate):
    # Keras' base optimizer accepts floats, schedules and callables but
    # rejects ints (and numpy scalars): normalise plain numbers to float.
    if isinstance(learning_rate, numbers.Real) and not isinstance(
            learning_rate, bool):
        return float(learning_rate)
    return learning_rate


@keras.saving.register_keras_serializable(package="simclr_tf")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling with classic momentum, as in SimCLR.

        One step for a variable ``w`` with gradient ``g`` (You et al. 2017,
        Algorithm 1, learning rate inside the momentum buffer)::

            g <- g + wd * w                     # unless excluded from weight decay
            t = eta * ||w|| / ||g||  (else 1)   # 1 if excluded from adaptation
            v <- m * v + lr * t * g;  w <- w - v   (Nesterov: w - (m * v + lr * t * g))

        Biases, BN parameters and the supervised head are excluded by default and
        follow plain momentum SGD; exclusions are resolved from variable paths in
        ``build``, since the distributed update only sees per-device variables.
        Keras' decoupled weight decay is off, so decay is not applied twice.
        Under ``MirroredStrategy``, build the optimizer in ``strategy.scope()``
        before the first step traced in ``tf.function`` (Keras cannot create slots
        lazily there), and divide each replica's loss by ``num_replicas_in_sync``.

        Args:
            learning_rate: float, ``LearningRateSchedule`` or callable.
            momentum: momentum coefficient ``m`` in [0, 1].
            weight_decay: L2 coefficient ``wd`` added to the gradient.
            trust_coefficient: ``eta`` of the trust ratio (paper: 0.001).
            exclude_from_weight_decay: substrings of variable paths that get no
                weight decay. Default ``DEFAULT_EXCLUDE`` (BN parameters,
                biases, the supervised head).
            exclude_from_layer_adaptation: substrings of variable paths whose
                trust ratio is fixed at 1; None uses
                ``exclude_from_weight_decay``.
            nesterov: use Nesterov momentum.
            name: optimizer name.
            **kwargs: other ``keras.optimizers.Optimizer`` arguments
                (``clipnorm``, ``global_clipnorm``, ``use_ema``, ...).

        Example::

            schedule = WarmUpAndCosine(0.3, 50000, 512, 100, 10)
            opt = LARS(schedule, momentum=0.9, weight_decay=1e-6)
            with strategy.scope():
                opt.build(model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))

        References:
            You, Gitman, Ginsburg. Large Batch Training of Convolutional Networks.
            arXiv:1708.03888. Chen et al. A Simple Framework for Contrastive
            Learning of Visual Representations. arXiv:2002.05709.
    """

    def __init__(self,
                 learning_rate,
                 momentum=0.9,
                 weight_decay=0.0,
                 trust_coefficient=0.001,
                 exclude_from_weight_decay=DEFAULT_EXCLUDE,
                 exclude_from_layer_adaptation=None,
                 nesterov=False,
                 name="LARS",
                 **kwargs):
        super().__init__(learning_rate=_as_float_lr(learning_rate),
                         weight_decay=float(weight_decay or 0.0),
                         name=name,
                         **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum}.")
        self.momentum = momentum
        self.trust_coefficient = float(trust_coefficient)
        self.nesterov = bool(nesterov)
        self._exclude_wd = tuple(exclude_from_weight_decay or ())
        if exclude_from_layer_adaptation is None:
            self._exclude_adapt = self._exclude_wd
        else:
            self._exclude_adapt = tuple(exclude_from_layer_adaptation)

    def build(self, var_list):
        """Creates one momentum slot per variable and resolves exclusions."""
        if self.built:
            return
        super().build(var_list)
        self.momentums = []
        self._decay_flags = []
        self._adapt_flags = []
        for var in var_list:
            self.momentums.append(
                self.add_variable_from_reference(var, name="momentum"))
            path = variable_path(var)
            self._decay_flags.append(not is_excluded(path, self._exclude_wd))
            self._adapt_flags.append(not is_excluded(path, self._exclude_adapt))

    def uses_weight_decay(self, variable):
        """Whether ``variable`` (a built-on variable) gets weight decay."""
        return self._decay_flags[self._get_variable_index(variable)]

    def uses_layer_adaptation(self, variable):
        """Whether ``variable`` (a built-on variable) gets the trust ratio."""
        return self._adapt_flags[self._get_variable_index(variable)]

    def _apply_weight_decay(self, variables):
        # Keras' decoupled weight decay is replaced by the LARS one inside
        # update_step; doing nothing here keeps it from being applied twice.
        return

    def update_step(self, gradient, variable, learning_rate):
        """One LARS step for one variable (see the class docstring)."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        grad = tf.cast(gradient, dtype)
        lr = tf.cast(learning_rate, dtype)
        w = tf.convert_to_tensor(variable)

        if self._decay_flags[index] and self.weight_decay:
            grad = grad + tf.cast(self.weight_decay, dtype) * w

        if self._adapt_flags[index]:
            w_norm = tf.norm(w)
            g_norm = tf.norm(grad)
            both = tf.logical_and(w_norm > 0, g_norm > 0)
            safe_g_norm = tf.where(both, g_norm, tf.ones_like(g_norm))
            trust = tf.where(
                both,
                tf.cast(self.trust_coefficient, dtype) * w_norm / safe_g_norm,
                tf.ones_like(w_norm))
            scaled_lr = lr * trust
        else:
            scaled_lr = lr

        v = self.momentums[index]
        m = tf.cast(self.momentum, dtype)
        next_v = m * tf.convert_to_tensor(v) + scaled_lr * grad
        self.assign(v, next_v)
        if self.nesterov:
            update = m * next_v + scaled_lr * grad
        else:
            update = next_v
        self.assign_sub(variable, update)

    def get_config(self):
        config = super().get_config()
        config.update({
            "momentum": self.momentum,
            "trust_coefficient": self.trust_coefficient,
            "exclude_from_weight_decay": list(self._exclude_wd),
            "exclude_from_layer_adaptation": list(self._exclude_adapt),
            "nesterov": self.nesterov,
        })
        return config


def decays_in_update(optimizer):
    """Whether ``optimizer`` (a name, as ``cfg.optimizer``, or an instance) decays in its update.

    Only LARS does; every other optimizer's weight decay goes in the loss
    (:func:`weight_decay_in_loss`).
    """
    if isinstance(optimizer, str):
        return optimizer == "lars"
    return isinstance(optimizer, LARS)


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


@dataclasses.dataclass(frozen=True)
class StepCounts:
    """How long a run is, in optimisation steps (see :func:`step_counts`)."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def step_counts(num_examples, batch_size, train_epochs, train_steps=None, warmup_epochs=0.0):
    """The one definition of a run's length in steps.

    An epoch is ``steps_per_epoch = num_examples // batch_size`` full batches:
    the input pipeline drops the last partial batch of each epoch (and
    refuses a batch larger than the split). ``total_steps`` is ``train_steps`` when it is given and positive
    (the official flag uses 0 for "not set"), else ``train_epochs *
    steps_per_epoch``; ``warmup_steps = round(warmup_epochs *
    steps_per_epoch)``. The trainer (checkpoint and resume positions), the
    input pipeline (epoch boundaries) and :class:`WarmUpAndCosine` all read
    these numbers.

    (Before 0.2 the schedule counted ``train_epochs * num_examples //
    batch_size`` steps, a few steps more than the epochs the pipeline streams
    when ``batch_size`` does not divide ``num_examples``.)

    Example:
        >>> step_counts(50000, 512, 100, warmup_epochs=10)
        StepCounts(steps_per_epoch=97, total_steps=9700, warmup_steps=970)
        >>> step_counts(50000, 512, 100, train_steps=10).total_steps
        10
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    per_epoch = int(num_examples) // int(batch_size)
    if train_steps is not None and int(train_steps) > 0:
        total = int(train_steps)
    else:
        total = int(train_epochs * per_epoch)
    return StepCounts(per_epoch, total, int(round(warmup_epochs * per_epoch)))


def steps_per_epoch(num_examples, batch_size):
    """Full batches in one epoch (see :func:`step_counts`)."""
    return step_counts(num_examples, batch_size, 0).steps_per_epoch


@keras.saving.register_keras_serializable(package="simclr_tf")
class WarmUpAndCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up followed by cosine decay to zero (SimCLR, App. B.1).

    The peak learning rate is scaled with the batch size ``B``:
    ``base * B / 256`` (``"linear"``) or ``base * sqrt(B)`` (``"sqrt"``, which
    the paper recommends for small batches / long runs). With
    ``warmup_steps`` and ``total_steps`` from :func:`step_counts`
    (``round(warmup_epochs * steps_per_epoch)`` and ``train_steps or
    train_epochs * steps_per_epoch``, ``steps_per_epoch = num_examples // B``)::

        lr(step) = peak * step / warmup_steps                  step < warmup
        lr(step) = peak * (1 + cos(pi * p)) / 2,
                   p = clip((step - warmup_steps)
                            / max(total_steps - warmup_steps, 1), 0, 1)

    so the rate rises from 0 to ``peak`` and then falls to 0 at
    ``total_steps`` and stays there. Runs shorter than the warm-up
    (``total_steps <= warmup_steps``) are legal: they end inside the
    warm-up, and the decay length is clamped to 1 step instead of failing
    like ``keras.optimizers.schedules.CosineDecay(decay_steps=0)``.
    ``warmup_epochs = 0`` starts directly at the peak. The schedule is pure
    TensorFlow arithmetic on ``step`` (int or float, tensor or Python),
    usable inside ``tf.function``.

    Not delegated to ``keras.optimizers.schedules.CosineDecay(0.0, total_steps
    - warmup_steps, warmup_target=peak, warmup_steps=warmup_steps)``: that is
    the same schedule to float32 rounding (both within 1.4e-7 x peak of the
    float64 formula), but it rounds differently (``step / warmup * peak``,
    ``ops.cond``) and gives a learning rate 1 ulp or more apart at about one
    step in five inside a ``tf.function`` (measured with TensorFlow 2.21 and
    Keras 3.15), which would change existing runs.

    Args:
        base_learning_rate: the unscaled learning rate (``--learning_rate``).
        num_examples: number of training examples per epoch.
        batch_size: global batch size ``B``.
        train_epochs: number of epochs (used when ``train_steps`` is not set).
        warmup_epochs: warm-up length in epochs (may be fractional or 0).
        learning_rate_scaling: ``"linear"`` or ``"sqrt"``.
        train_steps: total number of steps; None or 0 derives it from epochs.

    Example::

        sched = WarmUpAndCosine(0.3, num_examples=50000, batch_size=512,
                                train_epochs=100, warmup_epochs=10)
        float(sched(0)), float(sched(sched.warmup_steps))  # 0.0, 0.6
        opt = LARS(sched, weight_decay=1e-6)

    Reference:
        Chen et al. A Simple Framework for Contrastive Learning of Visual
        Representations. arXiv:2002.05709 (Appendix B.1).
    """

    def __init__(self,
                 base_learning_rate,
                 num_examples,
                 batch_size,
                 train_epochs,
                 warmup_epochs,
                 learning_rate_scaling="linear",
                 train_steps=None,
                 name=None):
        super().__init__()
        if learning_rate_scaling not in LR_SCALINGS:
            raise ValueError(
                "learning_rate_scaling must be 'linear' or 'sqrt', got "
                f"{learning_rate_scaling!r}.")
        counts = step_counts(num_examples, batch_size, train_epochs, train_steps,
                             warmup_epochs)
        self.base_learning_rate = float(base_learning_rate)
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.train_epochs = train_epochs
        self.warmup_epochs = warmup_epochs
        self.learning_rate_scaling = learning_rate_scaling
        self.train_steps = train_steps
        self.name = name

        if learning_rate_scaling == "linear":
            self.scaled_learning_rate = (
                self.base_learning_rate * self.batch_size / 256.0)
        else:
            self.scaled_learning_rate = (
                self.base_learning_rate * math.sqrt(self.batch_size))
        self.warmup_steps = counts.warmup_steps
        self.total_steps = counts.total_steps

    def __call__(self, step):
        with tf.name_scope(self.name or "WarmUpAndCosine"):
            step = tf.cast(step, tf.float32)
            peak = tf.constant(self.scaled_learning_rate, tf.float32)
            warmup = float(self.warmup_steps)
            decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
            progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
            cosine = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
            if self.warmup_steps <= 0:
                return cosine
            ramp = peak * step / warmup
            return tf.where(step < warmup, ramp, cosine)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "train_epochs": self.train_epochs,
            "warmup_epochs": self.warmup_epochs,
            "learning_rate_scaling": self.learning_rate_scaling,
            "train_steps": self.train_steps,
            "name": self.name,
        }


def build_optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0):
    """Creates the optimizer named by the ``--optimizer`` flag.

    - ``"lars"``: ``LARS(learning_rate, momentum, weight_decay)``; weight decay
      is inside the optimizer (default exclusions).
    - ``"momentum"``: ``keras.optimizers.SGD(learning_rate, momentum, nesterov=True)``;
      ``weight_decay`` is *not* applied by the optimizer — add
      ``weight_decay_l2(model.trainable_variables, weight_decay)`` to the loss.
    - ``"adam"``: ``keras.optimizers.Adam(learning_rate)``; same as momentum
      for the weight decay, ``momentum`` is unused.

    Args:
        name: ``"lars"``, ``"momentum"`` or ``"adam"`` (case-insensitive).
        learning_rate: float, schedule or callable.
        momentum: momentum coefficient (LARS and SGD).
        weight_decay: LARS weight decay (ignored by the other optimizers).

    Raises:
        ValueError: for any other name.

    Example::

        sched = WarmUpAndCosine(0.3, 50000, 512, 100, 10)
        opt = build_optimizer("lars", sched, momentum=0.9, weight_decay=1e-6)
    """
    key = str(name).strip().lower()
    learning_rate = _as_float_lr(learning_rate)
    if key == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay)
    if key == "momentum":
        # Nesterov momentum, as the official code's "momentum" optimizer.
        return keras.optimizers.SGD(learning_rate, momentum=float(momentum),
                                    nesterov=True)
    if key == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise ValueError(
        f"Unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}.")


#: Momentum of the linear probe's own optimizer (see :func:`build_probe_optimizer`).
PROBE_MOMENTUM = 0.9


def build_probe_optimizer(learning_rate, total_steps=None):
    """The optimizer of pretraining's linear probe when it has its own.

    SGD with momentum 0.9, no weight decay, the learning rate decayed by a
    cosine to 0 over ``total_steps`` (constant when None, e.g. under ``fit``):
    the online classifier of solo-learn and lightly. The pretraining
    optimizer's learning rate suits the encoder, not a linear classifier on a
    moving h (BENCHMARKS.md, "The online probe").
    """
    if total_steps is None:
        return keras.optimizers.SGD(float(learning_rate), momentum=PROBE_MOMENTUM,
                                    name="probe_sgd")
    schedule = keras.optimizers.schedules.CosineDecay(float(learning_rate),
                                                      max(int(total_steps), 1))
    return keras.optimizers.SGD(schedule, momentum=PROBE_MOMENTUM, name="probe_sgd")

