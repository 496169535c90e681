"""Optimisation for SimCLR: building the optimizers, the warm-up + cosine schedule, step counts.

- ``build_optimizer`` (LARS from :mod:`simclr_tf.lars`, SGD momentum, Adam) and
  ``build_probe_optimizer``. Weight decay (what is decayed, and whether in the
  optimizer or in the loss) is :mod:`simclr_tf.weight_decay`'s; its names are
  importable from here too.
- ``WarmUpAndCosine``: linear warm-up, then cosine decay to 0 without restarts,
  with the learning rate scaled by the batch size (SimCLR Appendix B.1).
- ``step_counts``: the one definition of steps per epoch, total and warm-up
  steps.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from simclr_tf.config.choices import LR_SCALINGS, OPTIMIZERS  # noqa: F401  (re-exported)
from simclr_tf.lars import LARS, _as_float_lr  # noqa: F401  (LARS re-exported)
from simclr_tf.weight_decay import (  # noqa: F401  (re-exported: the names runs use)
    DEFAULT_EXCLUDE, NOT_DECAYED, SUPERVISED_HEAD, decays_in_update, is_excluded,
    variable_path, weight_decay_in_loss, weight_decay_l2, weight_decay_of)


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

