"""Dynamic loss scaling for float16 training (``--precision=float16``)."""

import tensorflow as tf


class DynamicLossScale(tf.Module):
    """The loss scale of float16 mixed precision: grows while steps are finite, backs off on overflow.

    float16 has 5 exponent bits: gradients below about 6e-8 flush to zero in
    the float16 backward pass of the encoder. The training step multiplies
    the loss by ``scale`` before taking gradients and divides the gradients
    by it before the update. A step whose scaled gradients overflow (inf or
    NaN on any replica) is skipped by the training step's skip branch and
    halves the scale (not below 1); after ``growth_interval`` finite steps in
    a row the scale doubles. The defaults are those of Keras'
    ``LossScaleOptimizer`` (initial 2**15, growth every 2000 steps).

    The training step (:func:`simclr_tf.runtime.steps.make_train_step`)
    applies it instead of wrapping the optimizer in
    ``keras.optimizers.LossScaleOptimizer``: one scaled loss feeds two
    optimizers (the run's and the linear probe's), and the skip decision is
    the same all-reduced decision as ``nonfinite_policy=skip``, so every
    replica and worker skips together.

    Args:
        initial_scale: the first scale (a power of 2).
        growth_interval: finite steps in a row before the scale doubles.

    Example:

    ```python
    scale = DynamicLossScale()
    with tf.GradientTape() as tape:
        loss = scale.scale_loss(model_loss)
    grads = scale.unscale(tape.gradient(loss, variables))
    finite = all(tf.reduce_all(tf.math.is_finite(g)) for g in grads)
    scale.update(finite)  # and skip the update when not finite
    ```

    Reference: Micikevicius et al. 2018, "Mixed Precision Training", section 3.2.
    """

    def __init__(self, initial_scale=2.0 ** 15, growth_interval=2000, name="loss_scale"):
        super().__init__(name=name)
        if initial_scale < 1 or growth_interval < 1:
            raise ValueError(f"initial_scale ({initial_scale}) and growth_interval "
                             f"({growth_interval}) must be >= 1.")
        self.growth_interval = int(growth_interval)
        shared = dict(trainable=False,
                      synchronization=tf.VariableSynchronization.ON_WRITE,
                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.scale = tf.Variable(float(initial_scale), dtype=tf.float32, name="scale",
                                 **shared)
        self.good_steps = tf.Variable(0, dtype=tf.int64, name="good_steps", **shared)

    def scale_loss(self, loss):
        return tf.cast(loss, tf.float32) * self.scale

    def unscale(self, grads):
        """``grads`` divided by the scale (None stays None)."""
        inverse = 1.0 / self.scale
        return [None if g is None else tf.convert_to_tensor(g) * tf.cast(inverse, g.dtype)
                for g in grads]

    def update(self, finite):
        """After a step: count a finite one (and grow), or halve the scale."""
        finite = tf.convert_to_tensor(finite)
        good = tf.where(finite, self.good_steps + 1, tf.zeros_like(self.good_steps))
        grow = good >= self.growth_interval
        scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                         tf.maximum(self.scale / 2.0, 1.0))
        self.scale.assign(scale)
        self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good))
