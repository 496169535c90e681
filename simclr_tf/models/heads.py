"""SimCLR's heads: the projection head g(.) mapping h to z, and the supervised (linear) head.

One module per subsystem, as :mod:`simclr_tf.models.resnet`: both heads read
the representation h of the encoder.
"""

from __future__ import annotations

import keras
from keras import ops

from simclr_tf.config.choices import PROJ_HEAD_MODES, check_batch_norm_decay
from simclr_tf.weight_decay import SUPERVISED_HEAD

__all__ = ["PROJ_HEAD_MODES", "ProjectionHead", "SupervisedHead"]

_BATCH_NORM_EPSILON = 1e-5


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@keras.saving.register_keras_serializable(package="simclr_tf")
class ProjectionHead(keras.layers.Layer):
    """Projection head ``g`` of SimCLR: ``z = g(h)``, plus the intermediate outputs.

        SimCLR (Chen et al. 2020, arXiv:2002.05709) trains the contrastive loss on
        ``z = g(h)``; SimCLRv2 (arXiv:2006.10029) uses a 3-layer head and
        fine-tunes from a middle layer, hence the intermediate outputs.
        ``"nonlinear"``: ``num_proj_layers`` bias-free dense layers with BN, ReLU
        on all but the last, whose BN has no offset (as the official code);
        ``"linear"``: one such last layer; ``"none"``: ``z = h``.
        ``call(h)`` returns ``(z, hiddens)`` with ``hiddens[0] = h`` and
        ``hiddens[-1] = z``.

        Args:
          proj_head_mode: ``"nonlinear"``, ``"linear"`` or ``"none"``.
          proj_out_dim: output width of the last layer (``"linear"``/``"nonlinear"``).
          num_proj_layers: number of layers of the nonlinear head (SimCLR v1: 2,
            v2: 3); must be >= 1 for ``"nonlinear"``, ignored otherwise.
          batch_norm_decay: BN momentum in [0, 1).
          global_bn: synchronise BN statistics across replicas.
          **kwargs: ``keras.layers.Layer`` arguments (``name`` defaults to
            ``"head_projection"``).

        Example:
          >>> head = ProjectionHead("nonlinear", proj_out_dim=128, num_proj_layers=3)
          >>> z, hiddens = head(keras.ops.ones((8, 2048)), training=False)
          >>> tuple(z.shape), [tuple(t.shape) for t in hiddens]
          ((8, 128), [(8, 2048), (8, 2048), (8, 2048), (8, 128)])
    """

    def __init__(
        self,
        proj_head_mode="nonlinear",
        proj_out_dim=128,
        num_proj_layers=3,
        batch_norm_decay=0.9,
        global_bn=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "head_projection")
        super().__init__(**kwargs)
        if proj_head_mode not in PROJ_HEAD_MODES:
            raise ValueError(
                f"proj_head_mode must be one of {list(PROJ_HEAD_MODES)}, got {proj_head_mode!r}."
            )
        if not _is_int(proj_out_dim) or proj_out_dim < 1:
            raise ValueError(f"proj_out_dim must be an int >= 1, got {proj_out_dim!r}.")
        if not _is_int(num_proj_layers) or num_proj_layers < 0:
            raise ValueError(
                f"num_proj_layers must be a non-negative int, got {num_proj_layers!r}."
            )
        if proj_head_mode == "nonlinear" and num_proj_layers < 1:
            raise ValueError(
                "proj_head_mode='nonlinear' needs num_proj_layers >= 1 "
                f"(SimCLR v1 uses 2, v2 uses 3), got {num_proj_layers!r}; "
                "use proj_head_mode='none' for no projection."
            )
        check_batch_norm_decay(batch_norm_decay)
        self.proj_head_mode = proj_head_mode
        self.proj_out_dim = int(proj_out_dim)
        self.num_proj_layers = int(num_proj_layers)
        self.batch_norm_decay = float(batch_norm_decay)
        self.global_bn = bool(global_bn)
        if proj_head_mode == "nonlinear":
            self.num_layers = self.num_proj_layers
        elif proj_head_mode == "linear":
            self.num_layers = 1
        else:
            self.num_layers = 0
        # Created in build(), when the width of h is known.
        self.dense_layers = []
        self.bn_layers = []

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if self.num_layers and input_dim is None:
            raise ValueError("ProjectionHead needs a known last dimension of h.")
        dtype = self.dtype_policy
        dense_layers, bn_layers = [], []
        shape = tuple(input_shape)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            units = self.proj_out_dim if last else int(input_dim)
            dense = keras.layers.Dense(
                units,
                use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                name=f"dense_{i}",
                dtype=dtype,
            )
            bn = keras.layers.BatchNormalization(
                momentum=self.batch_norm_decay,
                epsilon=_BATCH_NORM_EPSILON,
                center=not last,
                synchronized=self.global_bn,
                name=f"batch_normalization_{i}",
                dtype=dtype,
            )
            dense.build(shape)
            shape = shape[:-1] + (units,)
            bn.build(shape)
            dense_layers.append(dense)
            bn_layers.append(bn)
        self.dense_layers = dense_layers
        self.bn_layers = bn_layers

    def call(self, inputs, training=None):
        hiddens = [inputs]
        x = inputs
        for i, (dense, bn) in enumerate(zip(self.dense_layers, self.bn_layers)):
            x = bn(dense(x), training=training)
            if i != self.num_layers - 1:
                x = ops.relu(x)
            hiddens.append(x)
        return x, hiddens

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        shapes = [input_shape]
        for i in range(self.num_layers):
            units = self.proj_out_dim if i == self.num_layers - 1 else input_shape[-1]
            shapes.append(input_shape[:-1] + (units,))
        return shapes[-1], shapes

    def get_config(self):
        config = super().get_config()
        config.update(
            proj_head_mode=self.proj_head_mode,
            proj_out_dim=self.proj_out_dim,
            num_proj_layers=self.num_proj_layers,
            batch_norm_decay=self.batch_norm_decay,
            global_bn=self.global_bn,
        )
        return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class SupervisedHead(keras.layers.Layer):
    """Linear classifier ``logits = h W + b`` for linear evaluation and fine-tuning.

        The probe / fine-tuning head of SimCLR (arXiv:2002.05709) and SimCLRv2
        (arXiv:2006.10029); kernel from N(0, 0.01^2), bias zero. ``zero_init``
        really zeroes the kernel (the official flag had no effect). With
        ``input_batch_norm`` the features first pass a parameter-free BN: the
        pretraining probe uses it because on raw h it diverged under the
        pretraining optimizer's large learning rate (MAE's linear-probing choice,
        He et al. 2021).

        Args:
          num_classes: number of classes (int >= 1).
          zero_init: initialise kernel and bias to zero.
          input_batch_norm: normalise the input features with a parameter-free BN.
          batch_norm_decay: momentum of that BN's moving statistics.
          global_bn: synchronise that BN across replicas.
          **kwargs: ``keras.layers.Layer`` arguments (``name`` defaults to
            :data:`simclr_tf.weight_decay.SUPERVISED_HEAD`, the name the
            weight-decay exclusion matches).

        Example:
          >>> head = SupervisedHead(10, zero_init=True)
          >>> logits = head(keras.ops.ones((4, 512)))
          >>> tuple(logits.shape), float(keras.ops.max(keras.ops.abs(logits)))
          ((4, 10), 0.0)
    """

    def __init__(self, num_classes, zero_init=False, input_batch_norm=False,
                 batch_norm_decay=0.9, global_bn=False, **kwargs):
        kwargs.setdefault("name", SUPERVISED_HEAD)
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
