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

    With ``input_batch_norm=True`` the features first pass a
    BatchNormalization without scale or offset (no trainable weights). The
    trainer turns this on for the linear probe trained during pretraining:
    the probe shares the pretraining optimizer's large learning rate, and on
    raw h (hundreds of O(1) features) plain SGD at that rate diverges; the
    normalisation keeps the probe stable whatever the feature scale (the
    linear-probing choice of MAE, He et al. 2021). Fine-tuning heads keep a
    plain ``Dense``, as in the papers.

    Args:
      num_classes: number of classes (int >= 1).
      zero_init: initialise kernel and bias to zero.
      input_batch_norm: normalise the input features with a parameter-free BN.
      batch_norm_decay: momentum of that BN's moving statistics.
      global_bn: synchronise that BN across replicas.
      **kwargs: ``keras.layers.Layer`` arguments (``name`` defaults to
        ``"head_supervised"``).

    Example:
      >>> head = SupervisedHead(10, zero_init=True)
      >>> logits = head(keras.ops.ones((4, 512)))
      >>> tuple(logits.shape), float(keras.ops.max(keras.ops.abs(logits)))
      ((4, 10), 0.0)
    """

    def __init__(self, num_classes, zero_init=False, input_batch_norm=False,
                 batch_norm_decay=0.9, global_bn=False, **kwargs):
        kwargs.setdefault("name", "head_supervised")
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
        self.num_classes = num_classes
        self.zero_init = bool(zero_init)
        self.input_batch_norm = bool(input_batch_norm)
        self.batch_norm_decay = batch_norm_decay
        self.global_bn = bool(global_bn)
        self.input_norm = None
        if self.input_batch_norm:
            self.input_norm = keras.layers.BatchNormalization(
                momentum=batch_norm_decay, epsilon=1e-5, center=False, scale=False,
                synchronized=global_bn, name="batch_normalization",
                dtype=self.dtype_policy)
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
        if self.input_norm is not None:
            self.input_norm.build(input_shape)
        self.dense.build(input_shape)

    def call(self, inputs, training=None):
        if self.input_norm is not None:
            inputs = self.input_norm(inputs, training=training)
        return self.dense(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, zero_init=self.zero_init,
                      input_batch_norm=self.input_batch_norm,
                      batch_norm_decay=self.batch_norm_decay,
                      global_bn=self.global_bn)
        return config
