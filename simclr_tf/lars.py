"""LARS, the optimizer of SimCLR's large batches.

Layer-wise adaptive rate scaling (You, Gitman and Ginsburg, arXiv:1708.03888),
as SimCLR uses it (Chen et al. 2020, arXiv:2002.05709, Sec. 2). Exclusions are
matched on the Keras 3 variable *path* (``"encoder/.../batch_normalization/gamma"``),
never on ``variable.name``, which is only ``"gamma"`` in Keras 3 and would
silently give batch norm weight decay.
"""

import numbers

import keras
import tensorflow as tf

#: Weights never decayed: BN parameters and biases (path substrings).
NOT_DECAYED = ("batch_normalization", "bias")
#: The supervised head's layer: LARS leaves its decay to the loss, as the official
#: code (simclr_tf.optimizers.weight_decay_in_loss).
SUPERVISED_HEAD = "head_supervised"
DEFAULT_EXCLUDE = NOT_DECAYED + (SUPERVISED_HEAD,)



def variable_path(variable):
    """The full path of a variable: Keras 3 ``.path``, else ``.name``.

        Plain ``tf.Variable``s have no ``.path``; their ``.name`` carries the name
        scopes instead.
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
                weight decay. Default ``("batch_normalization", "bias",
                "head_supervised")``.
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
