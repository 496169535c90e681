"""ResNet v1 encoders for SimCLR (v1 and v2), channels-last, Keras 3.

The post-activation ResNet of He et al. 2015 (arXiv:1512.03385) with the
stride of a bottleneck block on its 3x3 convolution ("v1.5"), laid out as the
official SimCLR code (arXiv:2002.05709, arXiv:2006.10029) so its released
weights load one to one. Every BN layer's name contains
``"batch_normalization"`` and no convolution has a bias: weight-decay and LARS
exclusion by variable path rely on it.
"""

from __future__ import annotations

import keras
from keras import ops

from simclr_tf.config.choices import RESNET_DEPTHS, check_batch_norm_decay

__all__ = [
    "BATCH_NORM_EPSILON",
    "BLOCK_CONFIGS",
    "ResNet",
    "BasicBlock",
    "BottleneckBlock",
    "BlockGroup",
    "SelectiveKernelConv2D",
    "Stem",
    "FixedPaddingConv2D",
]

BATCH_NORM_EPSILON = 1e-5

# depth -> (block type, number of blocks in each of the 4 block groups); the depths are
# the config's RESNET_DEPTHS (tests/test_config.py).
BLOCK_CONFIGS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}
_GROUP_BASE_FILTERS = (64, 128, 256, 512)
_GROUP_STRIDES = (1, 2, 2, 2)


def _conv_initializer():
    # He initialisation (variance scaling, fan-in, truncated normal).
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="truncated_normal"
    )


def _batch_norm(name, batch_norm_decay, global_bn, dtype, zero_init=False):
    return keras.layers.BatchNormalization(
        axis=-1,
        momentum=batch_norm_decay,
        epsilon=BATCH_NORM_EPSILON,
        gamma_initializer="zeros" if zero_init else "ones",
        synchronized=global_bn,
        name=name,
        dtype=dtype,
    )


def _scaled(base, width_multiplier):
    return max(1, int(round(base * width_multiplier)))


def _shape_after(layer, shape):
    return tuple(layer.compute_output_shape(tuple(shape)))


def _shape_through(layers, input_shape):
    """Output shape of ``layers`` applied one after the other."""
    shape = tuple(input_shape)
    for layer in layers:
        shape = _shape_after(layer, shape)
    return shape


def _build_in_sequence(layers, input_shape):
    """Builds ``layers`` in order, each on the output shape of the one before."""
    shape = tuple(input_shape)
    for layer in layers:
        layer.build(shape)
        shape = _shape_after(layer, shape)


class _ConfigMixin:
    """Shared constructor-argument handling of the layers below.

    ``_config_keys`` names the attributes that ``get_config`` adds (in that
    order) to the base class's config; each is stored by ``__init__`` under
    the name of its constructor argument.
    """

    _config_keys = ()

    def _set_bn_args(self, batch_norm_decay, global_bn):
        check_batch_norm_decay(batch_norm_decay)
        self.batch_norm_decay = float(batch_norm_decay)
        self.global_bn = bool(global_bn)

    def _config_values(self):
        return {key: getattr(self, key) for key in self._config_keys}

    def get_config(self):
        config = super().get_config()
        config.update(self._config_values())
        return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class FixedPaddingConv2D(keras.layers.Conv2D):
    """Bias-free square convolution with input-size-independent padding.

        A strided convolution pads explicitly and runs ``"valid"``, so even and odd
        input sizes pad alike (TensorFlow's ``"same"`` does not), as the SimCLR
        ResNet code does; stride 1 uses ``"same"``.

        Args:
          filters: number of output channels.
          kernel_size: int, side of the square kernel.
          strides: int stride (same on both axes).
          **kwargs: other ``keras.layers.Conv2D`` arguments (``padding`` and
            ``use_bias`` are fixed and ignored when present, e.g. in a config).

        Example:
          >>> conv = FixedPaddingConv2D(64, 7, strides=2)
          >>> tuple(conv(keras.ops.zeros((1, 224, 224, 3))).shape)
          (1, 112, 112, 64)
    """

    def __init__(self, filters, kernel_size, strides=1, **kwargs):
        kwargs.pop("padding", None)
        kwargs.pop("use_bias", None)
        kwargs.setdefault("kernel_initializer", _conv_initializer())
        stride = strides if isinstance(strides, int) else int(tuple(strides)[0])
        size = kernel_size if isinstance(kernel_size, int) else int(tuple(kernel_size)[0])
        super().__init__(
            filters,
            size,
            strides=stride,
            padding="same" if stride == 1 else "valid",
            use_bias=False,
            **kwargs,
        )
        total = size - 1
        self._fixed_pad = (total // 2, total - total // 2) if stride > 1 else None

    def _padded_shape(self, shape):
        if self._fixed_pad is None:
            return tuple(shape)
        extra = sum(self._fixed_pad)
        shape = list(shape)
        for axis in (1, 2):
            if shape[axis] is not None:
                shape[axis] += extra
        return tuple(shape)

    def build(self, input_shape):
        super().build(self._padded_shape(input_shape))

    def call(self, inputs):
        if self._fixed_pad is not None:
            inputs = ops.pad(inputs, [[0, 0], self._fixed_pad, self._fixed_pad, [0, 0]])
        return super().call(inputs)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._padded_shape(input_shape))


@keras.saving.register_keras_serializable(package="simclr_tf")
class SelectiveKernelConv2D(_ConfigMixin, keras.layers.Layer):
    """Selective-kernel 3x3 convolution with two branches (SimCLRv2).

        SimCLRv2 (arXiv:2006.10029) after SKNet (Li et al. 2019, arXiv:1903.06586):
        one 3x3 convolution makes two branches of ``filters`` channels; a
        per-channel softmax attention, computed from their pooled sum through a
        squeeze of ``max(int(filters * sk_ratio), min_dim)`` channels, weights
        their sum.

        Args:
          filters: output channels.
          strides: stride of the 3x3 convolution.
          sk_ratio: reduction ratio of the attention squeeze (> 0).
          min_dim: lower bound of the squeezed width.
          batch_norm_decay: BN momentum.
          global_bn: synchronise BN statistics across replicas.

        Example:
          >>> sk = SelectiveKernelConv2D(64, strides=2, sk_ratio=0.0625)
          >>> tuple(sk(keras.ops.ones((2, 8, 8, 16))).shape)
          (2, 4, 4, 64)
    """

    _config_keys = (
        "filters", "strides", "sk_ratio", "min_dim", "batch_norm_decay", "global_bn",
    )

    def __init__(
        self,
        filters,
        strides=1,
        sk_ratio=0.0625,
        min_dim=32,
        batch_norm_decay=0.9,
        global_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if sk_ratio <= 0:
            raise ValueError(f"sk_ratio must be > 0, got {sk_ratio!r}.")
        self._set_bn_args(batch_norm_decay, global_bn)
        self.filters = int(filters)
        self.strides = int(strides)
        self.sk_ratio = float(sk_ratio)
        self.min_dim = int(min_dim)
        self.mid_dim = max(int(self.filters * self.sk_ratio), self.min_dim)
        dtype = self.dtype_policy
        self.conv = FixedPaddingConv2D(
            2 * self.filters, 3, self.strides, name="conv2d", dtype=dtype
        )
        self.bn = _batch_norm("batch_normalization", batch_norm_decay, global_bn, dtype)
        self.squeeze_conv = FixedPaddingConv2D(
            self.mid_dim, 1, 1, name="squeeze_conv2d", dtype=dtype
        )
        self.squeeze_bn = _batch_norm(
            "squeeze_batch_normalization", batch_norm_decay, global_bn, dtype
        )
        self.attention_conv = FixedPaddingConv2D(
            2 * self.filters, 1, 1, name="attention_conv2d", dtype=dtype
        )

    def build(self, input_shape):
        self.conv.build(input_shape)
        shape = _shape_after(self.conv, input_shape)
        self.bn.build(shape)
        pooled = (shape[0], 1, 1, self.filters)
        self.squeeze_conv.build(pooled)
        squeezed = _shape_after(self.squeeze_conv, pooled)
        self.squeeze_bn.build(squeezed)
        self.attention_conv.build(squeezed)

    def call(self, inputs, training=None):
        x = ops.relu(self.bn(self.conv(inputs), training=training))
        branch_a, branch_b = ops.split(x, 2, axis=-1)
        pooled = ops.mean(branch_a + branch_b, axis=(1, 2), keepdims=True)
        squeezed = ops.relu(self.squeeze_bn(self.squeeze_conv(pooled), training=training))
        logit_a, logit_b = ops.split(self.attention_conv(squeezed), 2, axis=-1)
        # softmax over two branches: weight of branch a = sigmoid(logit_a - logit_b)
        weight_a = ops.sigmoid(logit_a - logit_b)
        return branch_b + weight_a * (branch_a - branch_b)

    def compute_output_shape(self, input_shape):
        shape = _shape_after(self.conv, input_shape)
        return shape[:-1] + (self.filters,)


class _ResidualBlockBase(_ConfigMixin, keras.layers.Layer):
    """Shared shortcut handling of the basic and bottleneck blocks."""

    expansion = 1
    _config_keys = (
        "filters", "strides", "use_projection", "sk_ratio", "batch_norm_decay", "global_bn",
    )

    def __init__(
        self,
        filters,
        strides=1,
        use_projection=False,
        sk_ratio=0.0,
        batch_norm_decay=0.9,
        global_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_bn_args(batch_norm_decay, global_bn)
        if sk_ratio < 0:
            raise ValueError(f"sk_ratio must be >= 0, got {sk_ratio!r}.")
        self.filters = int(filters)
        self.strides = int(strides)
        self.use_projection = bool(use_projection)
        self.sk_ratio = float(sk_ratio)
        self.out_channels = self.expansion * self.filters
        dtype = self.dtype_policy
        self.shortcut_pool = None
        self.shortcut_conv = None
        self.shortcut_bn = None
        self._shortcut_pad = None
        if self.use_projection:
            if self.sk_ratio > 0:
                # ResNet-D (He et al. 2018, arXiv:1812.01187) as in SimCLRv2:
                # average-pool, then a stride-1 1x1 projection.
                if self.strides > 1:
                    self._shortcut_pad = (0, 1)
                    self.shortcut_pool = keras.layers.AveragePooling2D(
                        2, self.strides, padding="valid", name="shortcut_average_pooling2d",
                        dtype=dtype,
                    )
                else:
                    self.shortcut_pool = keras.layers.AveragePooling2D(
                        2, 1, padding="same", name="shortcut_average_pooling2d", dtype=dtype
                    )
                conv_strides = 1
            else:
                conv_strides = self.strides
            self.shortcut_conv = FixedPaddingConv2D(
                self.out_channels, 1, conv_strides, name="shortcut_conv2d", dtype=dtype
            )
            self.shortcut_bn = _batch_norm(
                "shortcut_batch_normalization", batch_norm_decay, global_bn, dtype
            )

    def _bn(self, index, zero_init=False):
        return _batch_norm(
            f"batch_normalization_{index}",
            self.batch_norm_decay,
            self.global_bn,
            self.dtype_policy,
            zero_init=zero_init,
        )

    def _conv(self, index, filters, kernel_size, strides=1):
        return FixedPaddingConv2D(
            filters, kernel_size, strides, name=f"conv2d_{index}", dtype=self.dtype_policy
        )

    def _pad_shape(self, shape):
        if self._shortcut_pad is None:
            return tuple(shape)
        return tuple(
            s + 1 if (axis in (1, 2) and s is not None) else s for axis, s in enumerate(shape)
        )

    def _build_shortcut(self, input_shape):
        if not self.use_projection:
            return
        shape = self._pad_shape(input_shape)
        if self.shortcut_pool is not None:
            self.shortcut_pool.build(shape)
            shape = _shape_after(self.shortcut_pool, shape)
        self.shortcut_conv.build(shape)
        self.shortcut_bn.build(_shape_after(self.shortcut_conv, shape))

    def _shortcut(self, inputs, training):
        if not self.use_projection:
            return inputs
        x = inputs
        if self._shortcut_pad is not None:
            x = ops.pad(x, [[0, 0], self._shortcut_pad, self._shortcut_pad, [0, 0]])
        if self.shortcut_pool is not None:
            x = self.shortcut_pool(x)
        return self.shortcut_bn(self.shortcut_conv(x), training=training)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for axis in (1, 2):
            if shape[axis] is not None:
                shape[axis] = (shape[axis] - 1) // self.strides + 1
        shape[-1] = self.out_channels
        return tuple(shape)


@keras.saving.register_keras_serializable(package="simclr_tf")
class BasicBlock(_ResidualBlockBase):
    """Post-activation basic residual block (two 3x3 convolutions).

        The first convolution carries the stride. The last BN's gamma starts at
        zero, so a new block returns ``relu(shortcut(x))``, as in the SimCLR code.
        With ``sk_ratio > 0`` a projection shortcut is ResNet-D style (average pool,
        then a stride-1 1x1 convolution), as in SimCLRv2.

        Args:
          filters: output channels.
          strides: stride of the first convolution (and of the shortcut).
          use_projection: use a 1x1 convolution + BN shortcut (:class:`ResNet`
            gives one to the first block of every group, as the official code).
          sk_ratio: > 0 selects the ResNet-D projection shortcut.
          batch_norm_decay: BN momentum.
          global_bn: synchronise BN statistics across replicas.

        Example:
          >>> block = BasicBlock(128, strides=2, use_projection=True)
          >>> tuple(block(keras.ops.ones((2, 8, 8, 64))).shape)
          (2, 4, 4, 128)
    """

    expansion = 1

    def __init__(self, filters, strides=1, use_projection=False, **kwargs):
        super().__init__(filters, strides, use_projection, **kwargs)
        self.conv_0 = self._conv(0, self.filters, 3, self.strides)
        self.bn_0 = self._bn(0)
        self.conv_1 = self._conv(1, self.filters, 3)
        self.bn_1 = self._bn(1, zero_init=True)

    @property
    def last_batch_norm(self):
        """The zero-initialised BN closing the residual branch."""
        return self.bn_1

    def build(self, input_shape):
        self._build_shortcut(input_shape)
        _build_in_sequence([self.conv_0, self.bn_0, self.conv_1, self.bn_1], input_shape)

    def call(self, inputs, training=None):
        shortcut = self._shortcut(inputs, training)
        x = ops.relu(self.bn_0(self.conv_0(inputs), training=training))
        x = self.bn_1(self.conv_1(x), training=training)
        return ops.relu(x + shortcut)


@keras.saving.register_keras_serializable(package="simclr_tf")
class BottleneckBlock(_ResidualBlockBase):
    """Post-activation bottleneck block (1x1, 3x3, 1x1; stride on the 3x3).

        Outputs ``4 * filters`` channels; the last BN's gamma starts at zero. With
        ``sk_ratio > 0`` the 3x3 convolution is a :class:`SelectiveKernelConv2D`
        and a projection shortcut is ResNet-D style, as in SimCLRv2.

        Args:
          filters: bottleneck width; the block outputs ``4 * filters`` channels.
          strides: stride of the 3x3 (or selective-kernel) convolution.
          use_projection: use a 1x1 convolution + BN shortcut.
          sk_ratio: > 0 enables selective kernels with this squeeze ratio.
          batch_norm_decay: BN momentum.
          global_bn: synchronise BN statistics across replicas.

        Example:
          >>> block = BottleneckBlock(64, strides=1, use_projection=True)
          >>> tuple(block(keras.ops.ones((2, 8, 8, 64))).shape)
          (2, 8, 8, 256)
    """

    expansion = 4

    def __init__(self, filters, strides=1, use_projection=False, **kwargs):
        super().__init__(filters, strides, use_projection, **kwargs)
        self.conv_0 = self._conv(0, self.filters, 1)
        self.bn_0 = self._bn(0)
        if self.sk_ratio > 0:
            self.sk_conv = SelectiveKernelConv2D(
                self.filters,
                self.strides,
                self.sk_ratio,
                batch_norm_decay=self.batch_norm_decay,
                global_bn=self.global_bn,
                name="selective_kernel_conv2d",
                dtype=self.dtype_policy,
            )
            self.conv_1 = None
            self.bn_1 = None
        else:
            self.sk_conv = None
            self.conv_1 = self._conv(1, self.filters, 3, self.strides)
            self.bn_1 = self._bn(1)
        self.conv_2 = self._conv(2, self.out_channels, 1)
        self.bn_2 = self._bn(2, zero_init=True)

    @property
    def last_batch_norm(self):
        """The zero-initialised BN closing the residual branch."""
        return self.bn_2

    def build(self, input_shape):
        self._build_shortcut(input_shape)
        middle = [self.sk_conv] if self.sk_conv is not None else [self.conv_1, self.bn_1]
        _build_in_sequence(
            [self.conv_0, self.bn_0, *middle, self.conv_2, self.bn_2], input_shape
        )

    def call(self, inputs, training=None):
        shortcut = self._shortcut(inputs, training)
        x = ops.relu(self.bn_0(self.conv_0(inputs), training=training))
        if self.sk_conv is not None:
            x = self.sk_conv(x, training=training)
        else:
            x = ops.relu(self.bn_1(self.conv_1(x), training=training))
        x = self.bn_2(self.conv_2(x), training=training)
        return ops.relu(x + shortcut)


_BLOCK_CLASSES = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


@keras.saving.register_keras_serializable(package="simclr_tf")
class BlockGroup(_ConfigMixin, keras.layers.Layer):
    """A stage of residual blocks; the first one carries stride and projection.

    Args:
      filters: block width (output channels are ``filters`` for basic blocks and
        ``4 * filters`` for bottleneck blocks).
      num_blocks: number of blocks (>= 1).
      strides: stride of the first block.
      block_type: ``"basic"`` or ``"bottleneck"``.
      use_projection: whether the first block has a projection shortcut.
      sk_ratio, batch_norm_decay, global_bn: passed to the blocks.

    Attributes:
      blocks: the list of blocks.

    Example:
      >>> group = BlockGroup(64, 3, 1, "bottleneck", use_projection=True)
      >>> tuple(group(keras.ops.ones((1, 8, 8, 64))).shape)
      (1, 8, 8, 256)

    Reference: He et al. 2015 (arXiv:1512.03385); SimCLR (arXiv:2002.05709).
    """

    _config_keys = (
        "filters", "num_blocks", "strides", "block_type", "use_projection", "sk_ratio",
        "batch_norm_decay", "global_bn",
    )

    def __init__(
        self,
        filters,
        num_blocks,
        strides=1,
        block_type="bottleneck",
        use_projection=True,
        sk_ratio=0.0,
        batch_norm_decay=0.9,
        global_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if block_type not in _BLOCK_CLASSES:
            raise ValueError(
                f"block_type must be one of {sorted(_BLOCK_CLASSES)}, got {block_type!r}."
            )
        if int(num_blocks) < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks!r}.")
        self.filters = int(filters)
        self.num_blocks = int(num_blocks)
        self.strides = int(strides)
        self.block_type = block_type
        self.use_projection = bool(use_projection)
        self.sk_ratio = float(sk_ratio)
        self._set_bn_args(batch_norm_decay, global_bn)
        block_cls = _BLOCK_CLASSES[block_type]
        self.blocks = [
            block_cls(
                self.filters,
                strides=self.strides if i == 0 else 1,
                use_projection=self.use_projection if i == 0 else False,
                sk_ratio=self.sk_ratio,
                batch_norm_decay=self.batch_norm_decay,
                global_bn=self.global_bn,
                name=f"block_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(self.num_blocks)
        ]

    def build(self, input_shape):
        _build_in_sequence(self.blocks, input_shape)

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return _shape_through(self.blocks, input_shape)


@keras.saving.register_keras_serializable(package="simclr_tf")
class Stem(_ConfigMixin, keras.layers.Layer):
    """ResNet stem: convolution(s) + BN + ReLU (+ max-pool).

        ``cifar_stem``: one 3x3 stride-1 convolution, no pooling (SimCLR's CIFAR
        setting, appendix B.9). Otherwise a 7x7 stride-2 convolution and a 3x3
        stride-2 max-pool, or with ``deep`` three 3x3 convolutions before the pool
        (ResNet-C, arXiv:1812.01187; SimCLRv2's code uses it with selective
        kernels).

        Args:
          filters: output channels.
          cifar_stem: use the CIFAR stem.
          deep: use the 3-convolution stem (ignored with ``cifar_stem``).
          batch_norm_decay: BN momentum.
          global_bn: synchronise BN statistics across replicas.

        Example:
          >>> stem = Stem(64)
          >>> tuple(stem(keras.ops.ones((1, 224, 224, 3))).shape)
          (1, 56, 56, 64)
    """

    _config_keys = ("filters", "cifar_stem", "deep", "batch_norm_decay", "global_bn")

    def __init__(
        self,
        filters,
        cifar_stem=False,
        deep=False,
        batch_norm_decay=0.9,
        global_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_bn_args(batch_norm_decay, global_bn)
        self.filters = int(filters)
        self.cifar_stem = bool(cifar_stem)
        self.deep = bool(deep)
        dtype = self.dtype_policy
        if self.cifar_stem:
            specs = [(self.filters, 3, 1)]
        elif self.deep:
            half = max(1, self.filters // 2)
            specs = [(half, 3, 2), (half, 3, 1), (self.filters, 3, 1)]
        else:
            specs = [(self.filters, 7, 2)]
        self.convs = [
            FixedPaddingConv2D(f, k, s, name=f"conv2d_{i}", dtype=dtype)
            for i, (f, k, s) in enumerate(specs)
        ]
        self.bns = [
            _batch_norm(f"batch_normalization_{i}", batch_norm_decay, global_bn, dtype)
            for i in range(len(specs))
        ]
        self.max_pool = None
        if not self.cifar_stem:
            self.max_pool = keras.layers.MaxPooling2D(
                3, 2, padding="same", name="max_pooling2d", dtype=dtype
            )

    def _layer_sequence(self):
        layers = [layer for pair in zip(self.convs, self.bns) for layer in pair]
        return layers + ([self.max_pool] if self.max_pool is not None else [])

    def build(self, input_shape):
        _build_in_sequence(self._layer_sequence(), input_shape)

    def call(self, inputs, training=None):
        x = inputs
        for conv, bn in zip(self.convs, self.bns):
            x = ops.relu(bn(conv(x), training=training))
        if self.max_pool is not None:
            x = self.max_pool(x)
        return x

    def compute_output_shape(self, input_shape):
        return _shape_through(self._layer_sequence(), input_shape)


@keras.saving.register_keras_serializable(package="simclr_tf")
class ResNet(_ConfigMixin, keras.Model):
    """ResNet v1 encoder returning the pooled representation ``h`` (SimCLR v1/v2).

        The encoder of SimCLR (Chen et al. 2020, arXiv:2002.05709) and SimCLRv2
        (arXiv:2006.10029): a stem, four block groups and global average pooling,
        taking ``[B, H, W, 3]`` images in [0, 1] to ``h`` of ``feature_dim``
        channels. Widths are ``round(base * width_multiplier)``, so fractional
        widths give small CPU-sized models. The first block of every group has a
        projection shortcut, also where shapes match (group 1 of ResNet-18/34): the
        official layout, so released weights load (:mod:`simclr_tf.convert`).
        ``sk_ratio > 0`` gives SimCLRv2's selective kernels, ResNet-D shortcuts and
        deep stem (v2 uses 0.0625). :meth:`freeze` fixes a prefix for fine-tuning.

        Args:
          resnet_depth: one of 18, 34 (basic blocks), 50, 101, 152, 200
            (bottleneck blocks).
          width_multiplier: positive float channel multiplier (e.g. 0.25, 0.5, 1, 2, 4).
          cifar_stem: use the 3x3 stride-1 stem without max-pool (the config turns
            it on for ``image_size <= 32``).
          sk_ratio: selective-kernel squeeze ratio; 0 disables selective kernels.
          batch_norm_decay: BN momentum in [0, 1).
          global_bn: synchronise BN statistics across replicas (global BN).
          **kwargs: ``keras.Model`` arguments (``name`` defaults to ``"resnet"``,
            ``dtype`` for a mixed-precision policy).

        Attributes:
          stem: the :class:`Stem` layer.
          block_groups: list of the four :class:`BlockGroup` layers.
          feature_dim: int, the size of ``h``.

        Example:
          >>> encoder = ResNet(resnet_depth=18, width_multiplier=0.5, cifar_stem=True)
          >>> h = encoder(keras.ops.zeros((4, 32, 32, 3)), training=False)
          >>> tuple(h.shape), encoder.feature_dim
          ((4, 256), 256)
          >>> encoder.freeze(2)  # linear-eval style: only block groups 3 and 4 train
    """

    _config_keys = (
        "resnet_depth", "width_multiplier", "cifar_stem", "sk_ratio", "batch_norm_decay",
        "global_bn",
    )

    def __init__(
        self,
        resnet_depth=50,
        width_multiplier=1,
        cifar_stem=False,
        sk_ratio=0.0,
        batch_norm_decay=0.9,
        global_bn=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "resnet")
        super().__init__(**kwargs)
        try:
            depth = int(resnet_depth)
        except (TypeError, ValueError):
            depth = None
        if depth not in RESNET_DEPTHS or isinstance(resnet_depth, bool):
            raise ValueError(
                f"resnet_depth must be one of {list(RESNET_DEPTHS)}, got {resnet_depth!r}."
            )
        if not float(width_multiplier) > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}.")
        if float(sk_ratio) < 0:
            raise ValueError(f"sk_ratio must be >= 0, got {sk_ratio!r}.")
        self._set_bn_args(batch_norm_decay, global_bn)

        self.resnet_depth = depth
        self.width_multiplier = width_multiplier
        self.cifar_stem = bool(cifar_stem)
        self.sk_ratio = float(sk_ratio)
        self._fine_tune_after_block = -1

        block_type, blocks_per_group = BLOCK_CONFIGS[depth]
        expansion = _EXPANSION[block_type]
        width = float(width_multiplier)
        dtype = self.dtype_policy

        stem_filters = _scaled(64, width)
        self.stem = Stem(
            stem_filters,
            cifar_stem=self.cifar_stem,
            deep=self.sk_ratio > 0,
            batch_norm_decay=self.batch_norm_decay,
            global_bn=self.global_bn,
            name="stem",
            dtype=dtype,
        )
        channels = stem_filters
        self.block_groups = []
        for i, (base, num_blocks, strides) in enumerate(
            zip(_GROUP_BASE_FILTERS, blocks_per_group, _GROUP_STRIDES)
        ):
            filters = _scaled(base, width)
            out_channels = expansion * filters
            self.block_groups.append(
                BlockGroup(
                    filters,
                    num_blocks,
                    strides=strides,
                    block_type=block_type,
                    # As the official SimCLR ResNet: the first block of every
                    # group has a projection shortcut, also where the shapes
                    # already match (block group 1 of ResNet-18/34).
                    use_projection=True,
                    sk_ratio=self.sk_ratio,
                    batch_norm_decay=self.batch_norm_decay,
                    global_bn=self.global_bn,
                    name=f"block_group{i + 1}",
                    dtype=dtype,
                )
            )
            channels = out_channels
        self.feature_dim = int(channels)

    def build(self, input_shape):
        _build_in_sequence([self.stem, *self.block_groups], input_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = self.stem(inputs, training=training)
        for group in self.block_groups:
            x = group(x, training=training)
        return ops.mean(x, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.feature_dim)

    @property
    def fine_tune_after_block(self):
        """The argument of the last :meth:`freeze` call (-1: nothing frozen)."""
        return self._fine_tune_after_block

    def freeze(self, fine_tune_after_block):
        """Freezes the stem and the first block groups (for fine-tuning).

                Args:
                  fine_tune_after_block: -1 freezes nothing (and unfreezes everything),
                    0 freezes the stem, k in 1..4 freezes the stem and block groups 1..k
                    (4 freezes the whole encoder, i.e. linear evaluation).

                Frozen parts leave ``trainable_weights`` and their BN layers run in
                inference mode even under ``training=True`` (Keras 3), so frozen
                statistics do not move. Call it before ``compile``.
        """
        k = fine_tune_after_block
        if hasattr(k, "item") and getattr(k, "ndim", None) == 0:  # NumPy scalar
            k = k.item()
        if isinstance(k, bool) or not isinstance(k, int) or not -1 <= k <= 4:
            raise ValueError(
                "fine_tune_after_block must be an int in [-1, 4] (-1: nothing frozen, "
                f"0: stem, k: stem and block groups 1..k), got {fine_tune_after_block!r}."
            )
        self.stem.trainable = k < 0
        for i, group in enumerate(self.block_groups, start=1):
            group.trainable = k < i
        self._fine_tune_after_block = k

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            **self._config_values(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        dtype = config.get("dtype")
        if isinstance(dtype, dict):
            config["dtype"] = keras.dtype_policies.deserialize(dtype)
        return cls(**config)
