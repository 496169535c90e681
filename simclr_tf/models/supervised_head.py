"""Supervised (linear classification) head on the representation h."""

from __future__ import annotations

import keras

__all__ = ["SupervisedHead"]


@keras.saving.register_keras_serializable(package="simclr_tf")
class SupervisedHead(keras.layers.Layer):
    """Linear classifier ``logits = h W + b`` for linear evaluation and fine-tuning.

    The linear probe / fine-tuning head of SimCLR (Chen et al. 2020,
    arXiv:2002.05709) and SimCLRv2 (arXiv:2006.10029): one ``Dense`` layer with
    a bias, kernel initialised from N(0, 0.01^2) and bias at zero. With
    ``zero_init=True`` the kernel starts at zero too, so the initial logits are
    exactly zero (the official code's ``zero_init_logits_layer`` flag had no
    effect; this one does). The default layer name is ``"head_supervised"``,
    which the optimizers' weight-decay exclusion list matches by variable path.

    Args:
      num_classes: number of classes (int >= 1).
      zero_init: initialise kernel and bias to zero.
      **kwargs: ``keras.layers.Layer`` arguments (``name`` defaults to
        ``"head_supervised"``).

    Example:
      >>> head = SupervisedHead(10, zero_init=True)
      >>> logits = head(keras.ops.ones((4, 512)))
      >>> tuple(logits.shape), float(keras.ops.max(keras.ops.abs(logits)))
      ((4, 10), 0.0)
    """

    def __init__(self, num_classes, zero_init=False, **kwargs):
        kwargs.setdefault("name", "head_supervised")
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
        self.num_classes = num_classes
        self.zero_init = bool(zero_init)
        kernel_init = (
            "zeros" if self.zero_init else keras.initializers.RandomNormal(stddev=0.01)
        )
        self.dense = keras.layers.Dense(
            num_classes,
            use_bias=True,
            kernel_initializer=kernel_init,
            bias_initializer="zeros",
            name="dense",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, inputs):
        return self.dense(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, zero_init=self.zero_init)
        return config
