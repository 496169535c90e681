"""LARS, layer-wise adaptive rate scaling: the optimizer of SimCLR's large batches.

You et al. 2017, "Large Batch Training of Convolutional Networks"; SimCLR
(Chen et al. 2020) trains with it at batch sizes up to 8192. Which weights it
decays and adapts by default comes from :mod:`simclr_tf.weight_decay`.
"""

import numbers

import keras
import tensorflow as tf

from simclr_tf.weight_decay import DEFAULT_EXCLUDE, is_excluded, variable_path

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

    #: Read by :func:`simclr_tf.weight_decay.decays_in_update`: LARS applies
    #: weight decay in its update, so the loss adds only the excluded head's.
    decays_weights_in_update = True

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
