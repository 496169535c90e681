"""Tests for simclr_tf.models.resnet.

Expected parameter counts come from an independent closed-form formula written
here from the architecture description (He et al. 2015; SimCLR; SimCLRv2), not
from the model's own layers. Big models are only built, never run.
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from simclr_tf.models import resnet as resnet_lib
from simclr_tf.models.resnet import ResNet

BLOCKS = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
    200: [3, 24, 36, 3],
}


def _conv(k, cin, cout):
    return k * k * cin * cout


def _bn(c):  # trainable: gamma + beta
    return 2 * c


def expected_parts(depth, width=1, cifar_stem=False, sk_ratio=0.0):
    """Closed-form trainable counts [stem, group1, ..., group4] and feature dim."""
    bottleneck = depth >= 50
    sk = sk_ratio > 0

    def r(base):
        return int(round(base * width))

    c0 = r(64)
    if cifar_stem:
        stem = _conv(3, 3, c0) + _bn(c0)
    elif sk:
        half = c0 // 2
        stem = (_conv(3, 3, half) + _bn(half) + _conv(3, half, half) + _bn(half)
                + _conv(3, half, c0) + _bn(c0))
    else:
        stem = _conv(7, 3, c0) + _bn(c0)
    parts = [stem]
    cin = c0
    for g, nblocks in enumerate(BLOCKS[depth]):
        f = r(64 * 2 ** g)
        cout = 4 * f if bottleneck else f
        n = 0
        for j in range(nblocks):
            if bottleneck:
                n += _conv(1, cin, f) + _bn(f)
                if sk:
                    mid = max(int(f * sk_ratio), 32)
                    n += _conv(3, f, 2 * f) + _bn(2 * f) + _conv(1, f, mid) + _bn(mid)
                    n += _conv(1, mid, 2 * f)
                else:
                    n += _conv(3, f, f) + _bn(f)
                n += _conv(1, f, cout) + _bn(cout)
            else:
                n += _conv(3, cin, f) + _bn(f) + _conv(3, f, f) + _bn(f)
            if j == 0:  # official layout: every group's first block projects
                n += _conv(1, cin, cout) + _bn(cout)
            cin = cout
        parts.append(n)
    return parts, cin


def count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def built(depth, width=1, cifar_stem=False, sk_ratio=0.0, size=224, **kw):
    model = ResNet(depth, width, cifar_stem=cifar_stem, sk_ratio=sk_ratio, **kw)
    model.build((None, size, size, 3))
    return model


@pytest.fixture(scope="module")
def resnet50():
    return built(50)


def test_resnet50_width1_exact_count(resnet50):
    model = resnet50
    assert count(model.trainable_weights) == 23_508_032
    assert sum(expected_parts(50)[0]) == 23_508_032
    assert model.feature_dim == 2048


def test_resnet18_width1_imagenet_exact_count():
    model = built(18)
    # 11,176,512 plus the official group-1 projection shortcut (64*64 + 2*64)
    assert count(model.trainable_weights) == 11_180_736
    assert sum(expected_parts(18)[0]) == 11_180_736
    assert model.feature_dim == 512


@pytest.mark.parametrize(
    "depth,width,cifar_stem",
    [(18, 0.5, True), (18, 0.25, False), (34, 1, True), (50, 2, False), (101, 0.25, True)],
)
def test_param_count_matches_closed_form(depth, width, cifar_stem):
    model = built(depth, width, cifar_stem=cifar_stem, size=32 if cifar_stem else 224)
    parts, dim = expected_parts(depth, width, cifar_stem)
    assert count(model.trainable_weights) == sum(parts)
    assert model.feature_dim == dim
    # moving mean + variance: one pair per BN channel = number of BN gammas
    n_bn = sum(int(np.prod(v.shape)) for v in model.weights if v.path.endswith("/gamma"))
    assert count(model.non_trainable_weights) == 2 * n_bn


def test_resnet200_builds():
    # width 0.25 keeps the build cheap; the block structure is the same as at width 1
    model = built(200, 0.25)
    parts, dim = expected_parts(200, 0.25)
    assert count(model.trainable_weights) == sum(parts)
    assert model.feature_dim == dim == 512
    assert [len(g.blocks) for g in model.block_groups] == BLOCKS[200]


def test_selective_kernel_resnet50_count():
    sk = built(50, sk_ratio=0.0625)
    parts, _ = expected_parts(50, sk_ratio=0.0625)
    n_sk = count(sk.trainable_weights)
    assert n_sk == sum(parts)
    assert n_sk > 23_508_032
    # SimCLRv2 (arXiv:2006.10029, Table 1) reports ~35M parameters for R50 with SK
    assert 34.5e6 < n_sk < 35.5e6
    assert len(sk.stem.convs) == 3


def _np_conv_same(x, kernel):
    """Stride-1 'same' convolution in NumPy (odd square kernel), NHWC / HWIO."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + h, j:j + w, :] @ kernel[i, j]
    return out


def _np_bn(x, bn):
    g = bn.gamma.numpy() if bn.scale else 1.0
    b = bn.beta.numpy() if bn.center else 0.0
    return (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-5) * g + b


def test_selective_kernel_matches_numpy_reference():
    rng = np.random.default_rng(0)
    layer = resnet_lib.SelectiveKernelConv2D(6, strides=1, sk_ratio=0.5, min_dim=4)
    x = rng.normal(size=(3, 5, 5, 4)).astype("float32")
    layer.build(x.shape)
    assert layer.mid_dim == 4  # max(int(6 * 0.5), 4)
    for v in layer.weights:  # randomise everything, including BN statistics
        vals = rng.normal(size=v.shape)
        if "variance" in v.path:
            vals = np.abs(vals) + 0.5
        v.assign(vals.astype("float32"))
    convs = {c.name: c for c in (layer.conv, layer.squeeze_conv, layer.attention_conv)}
    y = _np_conv_same(x, convs["conv2d"].kernel.numpy())
    y = np.maximum(_np_bn(y, layer.bn), 0)
    a, b = y[..., :6], y[..., 6:]
    s = (a + b).mean(axis=(1, 2), keepdims=True)
    s = np.maximum(_np_bn(s @ convs["squeeze_conv2d"].kernel.numpy()[0, 0], layer.squeeze_bn), 0)
    logits = s @ convs["attention_conv2d"].kernel.numpy()[0, 0]
    la, lb = logits[..., :6], logits[..., 6:]
    wa = np.exp(la) / (np.exp(la) + np.exp(lb))
    expected = wa * a + (1 - wa) * b
    got = layer(x, training=False).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _np_conv(x, kernel, stride=1):
    """Bias-free convolution with the official SimCLR padding, by explicit loops
    over the kernel taps (NHWC / HWIO): stride 1 pads k // 2 on each side
    ("same"); a stride s > 1 pads (k - 1) // 2 before and the rest after, then
    takes every s-th position ("valid")."""
    k = kernel.shape[0]
    total = k - 1
    before = total // 2 if stride > 1 else k // 2
    after = total - before if stride > 1 else k // 2
    xp = np.pad(x.astype(np.float64), [(0, 0), (before, after), (before, after), (0, 0)])
    h = (xp.shape[1] - k) // stride + 1
    w = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride]
            out += patch @ kernel[i, j].astype(np.float64)
    return out


def _np_max_pool_same(x, k=3, stride=2):
    """k x k max pool, stride s, TensorFlow "same" padding (-inf, the extra one after)."""
    n_h, n_w = x.shape[1:3]
    out_h, out_w = -(-n_h // stride), -(-n_w // stride)
    pad_h = max((out_h - 1) * stride + k - n_h, 0)
    pad_w = max((out_w - 1) * stride + k - n_w, 0)
    xp = np.pad(x, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0)], constant_values=-np.inf)
    out = np.full((x.shape[0], out_h, out_w, x.shape[3]), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, xp[:, i:i + stride * (out_h - 1) + 1:stride,
                                     j:j + stride * (out_w - 1) + 1:stride])
    return out


def _randomise(layer, seed):
    """Every weight random, BN variances positive, so no weight is a no-op (the
    zero-initialised last gamma included)."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        vals = rng.normal(scale=0.5, size=v.shape)
        if "variance" in v.path:
            vals = np.abs(vals) + 0.5
        v.assign(vals.astype("float32"))


def _np_relu(x):
    return np.maximum(x, 0.0)


def _np_sk(x, layer):
    """Selective-kernel convolution in NumPy (see test_selective_kernel_matches_numpy_reference)."""
    y = _np_relu(_np_bn(_np_conv(x, layer.conv.kernel.numpy(), layer.strides), layer.bn))
    a, b = y[..., :layer.filters], y[..., layer.filters:]
    pooled = (a + b).mean(axis=(1, 2), keepdims=True)
    squeezed = _np_relu(_np_bn(pooled @ layer.squeeze_conv.kernel.numpy()[0, 0],
                               layer.squeeze_bn))
    logits = squeezed @ layer.attention_conv.kernel.numpy()[0, 0]
    la, lb = logits[..., :layer.filters], logits[..., layer.filters:]
    wa = np.exp(la) / (np.exp(la) + np.exp(lb))
    return wa * a + (1 - wa) * b


def _np_shortcut(x, block):
    """Identity, or 1x1 conv (stride s) + BN, or with selective kernels ResNet-D:
    a 2x2 average pool (stride s: zero-pad one row and column after, "valid")
    then a stride-1 1x1 conv + BN."""
    if not block.use_projection:
        return x
    kernel = block.shortcut_conv.kernel.numpy()
    if block.sk_ratio > 0:
        assert block.strides == 2
        xp = np.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        h, w = (xp.shape[1] - 2) // 2 + 1, (xp.shape[2] - 2) // 2 + 1
        x = sum(xp[:, i:i + 2 * (h - 1) + 1:2, j:j + 2 * (w - 1) + 1:2]
                for i in range(2) for j in range(2)) / 4.0
        return _np_bn(_np_conv(x, kernel, 1), block.shortcut_bn)
    return _np_bn(_np_conv(x, kernel, block.strides), block.shortcut_bn)


def _np_block(x, block):
    """relu(branch(x) + shortcut(x)), BN in inference mode from its moving statistics."""
    if isinstance(block, resnet_lib.BasicBlock):
        y = _np_relu(_np_bn(_np_conv(x, block.conv_0.kernel.numpy(), block.strides), block.bn_0))
        y = _np_bn(_np_conv(y, block.conv_1.kernel.numpy()), block.bn_1)
    else:
        y = _np_relu(_np_bn(_np_conv(x, block.conv_0.kernel.numpy()), block.bn_0))
        if block.sk_conv is not None:
            y = _np_sk(y, block.sk_conv)
        else:
            y = _np_relu(_np_bn(_np_conv(y, block.conv_1.kernel.numpy(), block.strides),
                                block.bn_1))
        y = _np_bn(_np_conv(y, block.conv_2.kernel.numpy()), block.bn_2)
    return _np_relu(y + _np_shortcut(x, block))


@pytest.mark.parametrize(
    "cls,filters,strides,projection,sk_ratio,size",
    [
        ("basic", 6, 2, True, 0.0, 7),       # strided projection, odd input
        ("basic", 5, 1, False, 0.0, 6),      # identity shortcut
        ("bottleneck", 3, 2, True, 0.0, 8),  # stride on the 3x3
        ("bottleneck", 3, 1, False, 0.0, 5),
        ("bottleneck", 4, 2, True, 0.5, 7),  # SK block, ResNet-D shortcut, odd input
        ("bottleneck", 4, 2, True, 0.5, 6),
    ],
)
def test_block_matches_numpy_forward_pass(cls, filters, strides, projection, sk_ratio, size):
    block_cls = {"basic": resnet_lib.BasicBlock, "bottleneck": resnet_lib.BottleneckBlock}[cls]
    in_channels = 3 if projection else block_cls.expansion * filters
    block = block_cls(filters, strides=strides, use_projection=projection, sk_ratio=sk_ratio)
    x = np.random.default_rng(size).normal(size=(2, size, size, in_channels)).astype("float32")
    block.build(x.shape)
    if sk_ratio > 0:
        assert block.sk_conv is not None and block.shortcut_pool is not None
    _randomise(block, seed=filters * 10 + size)
    expected = _np_block(x.astype(np.float64), block)
    got = block(x, training=False).numpy()
    assert got.shape == expected.shape == (2, -(-size // strides), -(-size // strides),
                                          block.out_channels)
    assert np.mean(expected > 0) > 0.2  # the final ReLU does not zero everything
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cifar_stem,deep,size", [(True, False, 8), (False, False, 16),
                                                  (False, False, 15), (False, True, 16)])
def test_stem_matches_numpy(cifar_stem, deep, size):
    """CIFAR: 3x3 stride-1 conv + BN + ReLU, no pool (no downsampling). ImageNet:
    7x7 stride-2 conv + BN + ReLU + 3x3 stride-2 max pool (down by 4); deep
    (with selective kernels): three 3x3 convs, the first strided."""
    stem = resnet_lib.Stem(8, cifar_stem=cifar_stem, deep=deep)
    x = np.random.default_rng(size).uniform(size=(2, size, size, 3)).astype("float32")
    stem.build(x.shape)
    _randomise(stem, seed=size)
    y = x.astype(np.float64)
    for conv, bn in zip(stem.convs, stem.bns):
        y = _np_relu(_np_bn(_np_conv(y, conv.kernel.numpy(), conv.strides[0]), bn))
    if not cifar_stem:
        y = _np_max_pool_same(y)
    got = stem(x, training=False).numpy()
    side = size if cifar_stem else -(-size // 4)
    assert got.shape == y.shape == (2, side, side, 8)
    assert [c.kernel.shape[0] for c in stem.convs] == (
        [3] if cifar_stem else [3, 3, 3] if deep else [7])
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)


def test_resnet_is_the_stem_then_the_groups_then_the_mean():
    """The whole encoder composes its checked parts: stem, the blocks of the four
    groups in order, and the spatial mean."""
    model = ResNet(18, 0.25, cifar_stem=True)
    # 16 px: the last group still has 2 x 2 positions to average.
    x = np.random.default_rng(3).uniform(size=(2, 16, 16, 3)).astype("float32")
    model.build(x.shape)
    _randomise(model, seed=4)
    y = x.astype(np.float64)
    for conv, bn in zip(model.stem.convs, model.stem.bns):
        y = _np_relu(_np_bn(_np_conv(y, conv.kernel.numpy(), conv.strides[0]), bn))
    for group in model.block_groups:
        for block in group.blocks:
            y = _np_block(y, block)
    expected = y.mean(axis=(1, 2))
    assert expected.shape == (2, model.feature_dim) == (2, 128)
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, rtol=1e-3,
                               atol=1e-3 * np.abs(expected).max())


def test_fixed_padding_strided_conv_matches_explicit_padding():
    conv = resnet_lib.FixedPaddingConv2D(5, 3, strides=2)
    x = tf.random.normal((2, 8, 8, 4), seed=4)
    y = conv(x)
    ref = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), conv.kernel, 2, "VALID")
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert tuple(y.shape) == (2, 4, 4, 5)


def test_last_bn_of_each_block_is_zero_initialised():
    model = built(50, 0.25, size=32, cifar_stem=True)
    blocks = [b for g in model.block_groups for b in g.blocks]
    assert len(blocks) == 16
    for block in blocks:
        assert np.all(block.last_batch_norm.gamma.numpy() == 0.0)
    # and only those: every other BN starts with gamma = 1
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    zero = [bn for bn in bns if np.all(bn.gamma.numpy() == 0.0)]
    assert len(zero) == len(blocks)
    for bn in bns:
        if not any(bn is z for z in zero):
            assert np.all(bn.gamma.numpy() == 1.0)


@pytest.mark.parametrize("depth,sk_ratio", [(18, 0.0), (34, 0.0625), (50, 0.0), (50, 0.0625)])
def test_first_block_of_every_group_projects(depth, sk_ratio):
    # The official SimCLR ResNet (tf2/resnet.py BlockGroup) passes
    # use_projection=True to the first block of each group, even where the
    # shapes match (group 1 of ResNet-18/34); the other blocks never project.
    model = ResNet(depth, 0.25, cifar_stem=True, sk_ratio=sk_ratio)
    for group in model.block_groups:
        assert [b.use_projection for b in group.blocks] == [True] + [False] * (
            len(group.blocks) - 1)
        assert group.blocks[0].shortcut_conv is not None
    first = model.block_groups[0].blocks[0]
    assert (first.shortcut_pool is not None) == (sk_ratio > 0)


@pytest.mark.parametrize("depth", [18, 50])
def test_identity_shortcut_block_is_identity_at_init(depth):
    model = ResNet(depth, 0.25, cifar_stem=True)
    model.build((None, 8, 8, 3))
    block = model.block_groups[1].blocks[1]
    assert not block.use_projection
    c = model.block_groups[1].blocks[0].out_channels
    x = tf.random.uniform((3, 4, 4, c), seed=5)  # non-negative, like a ReLU output
    for training in (False, True):
        np.testing.assert_allclose(block(x, training=training).numpy(), x.numpy(), atol=1e-6)
    # a non-zero gamma breaks the identity (the check above can fail)
    block.last_batch_norm.gamma.assign(tf.ones_like(block.last_batch_norm.gamma))
    assert np.max(np.abs(block(x, training=False).numpy() - x.numpy())) > 1e-3


def test_freeze_trainable_counts():
    model = built(18, 0.5, cifar_stem=True, size=32)
    parts, _ = expected_parts(18, 0.5, cifar_stem=True)
    total = sum(parts)
    n_all = count(model.weights)
    for k in (-1, 0, 1, 2, 3, 4, 2, -1):
        model.freeze(k)
        assert model.fine_tune_after_block == k
        frozen = sum(parts[: k + 1])
        assert count(model.trainable_weights) == total - frozen
        assert count(model.non_trainable_weights) == n_all - (total - frozen)
    model.freeze(3)
    assert not model.stem.trainable
    assert [g.trainable for g in model.block_groups] == [False, False, False, True]


@pytest.mark.parametrize("bad", [-2, 5, 1.5, "2", None, True])
def test_freeze_rejects_bad_values(bad):
    model = ResNet(18, 0.25, cifar_stem=True)
    with pytest.raises(ValueError):
        model.freeze(bad)


def test_frozen_bn_statistics_do_not_move():
    model = ResNet(18, 0.25, cifar_stem=True, batch_norm_decay=0.5)
    x = tf.random.uniform((4, 16, 16, 3), seed=6) * 2.0 + 0.5
    model(x, training=False)  # build
    model.freeze(2)

    def bn_stats(layers):
        out = []
        for layer in layers:
            for sub in layer._flatten_layers():
                if isinstance(sub, keras.layers.BatchNormalization):
                    out.append((sub.moving_mean.numpy().copy(), sub.moving_variance.numpy().copy()))
        return out

    frozen_parts = [model.stem] + list(model.block_groups[:2])
    live_parts = list(model.block_groups[2:])
    frozen_before, live_before = bn_stats(frozen_parts), bn_stats(live_parts)
    # stem 1 BN; each group 2 blocks x 2 BNs + 1 projection-shortcut BN
    assert len(frozen_before) == 1 + 5 + 5 and len(live_before) == 5 + 5
    model(x, training=True)
    for (m0, v0), (m1, v1) in zip(frozen_before, bn_stats(frozen_parts)):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(v0, v1)
    for (m0, v0), (m1, v1) in zip(live_before, bn_stats(live_parts)):
        assert np.max(np.abs(m1 - m0)) > 0 and np.max(np.abs(v1 - v0)) > 0
    # unfreezing makes the same BN layers move again
    model.freeze(-1)
    model(x, training=True)
    for (m0, _), (m1, _) in zip(frozen_before, bn_stats(frozen_parts)):
        assert np.max(np.abs(m1 - m0)) > 0


def test_frozen_layers_get_no_gradient():
    model = ResNet(18, 0.25, cifar_stem=True)
    x = tf.random.uniform((2, 8, 8, 3), seed=7)
    model(x)
    model.freeze(4)
    assert model.trainable_weights == []
    model.freeze(1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    trainable_ids = {id(v) for v in model.trainable_weights}
    for v in model.stem.weights + model.block_groups[0].weights:
        assert id(v) not in trainable_ids


@pytest.mark.parametrize("depth", [0, 10, 51, "resnet50", None])
def test_unknown_depth_raises(depth):
    with pytest.raises(ValueError, match=r"18, 34, 50, 101, 152, 200"):
        ResNet(depth)


@pytest.mark.parametrize(
    "kwargs", [dict(width_multiplier=0), dict(width_multiplier=-1), dict(sk_ratio=-0.1),
               dict(batch_norm_decay=1.0)]
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ResNet(18, **kwargs)


def test_batch_norm_settings_and_names():
    model = built(50, 0.25, sk_ratio=0.0625, size=64, batch_norm_decay=0.97, global_bn=True)
    bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) > 50
    for bn in bns:
        assert bn.momentum == 0.97 and bn.epsilon == 1e-5 and bn.synchronized
        assert "batch_normalization" in bn.name


@pytest.mark.parametrize("sk_ratio,cifar_stem", [(0.0, False), (0.0625, False), (0.0625, True)])
def test_variable_paths_bn_and_no_conv_bias(sk_ratio, cifar_stem):
    for depth in (18, 50):
        model = built(depth, 0.25, cifar_stem=cifar_stem, sk_ratio=sk_ratio, size=32)
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                assert layer.weights
                for v in layer.weights:
                    assert "batch_normalization" in v.path, v.path
            if isinstance(layer, keras.layers.Conv2D):
                assert not layer.use_bias and layer.bias is None
                assert [v.name for v in layer.weights] == ["kernel"]
        for v in model.weights:
            assert "bias" not in v.path
            if "batch_normalization" not in v.path:  # only conv kernels are left
                assert v.path.endswith("/kernel") and len(v.shape) == 4, v.path
        paths = [v.path for v in model.weights]
        assert len(set(paths)) == len(paths)


def test_conv_he_initialisation(resnet50):
    kernel = resnet50.block_groups[3].blocks[1].conv_1.kernel.numpy()  # 3x3x512x512
    fan_in = 3 * 3 * 512
    assert abs(kernel.std() / np.sqrt(2.0 / fan_in) - 1.0) < 0.05
    assert abs(kernel.mean()) < 1e-3


@pytest.mark.parametrize(
    "kwargs",
    [dict(resnet_depth=18, width_multiplier=0.25, cifar_stem=True),
     dict(resnet_depth=50, width_multiplier=0.25, sk_ratio=0.0625, batch_norm_decay=0.95)],
)
def test_get_config_round_trip(kwargs):
    model = ResNet(**kwargs)
    x = tf.random.uniform((2, 32, 32, 3), seed=8)
    y = model(x, training=False)
    config = model.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    clone = ResNet.from_config(config)
    clone.build((None, 32, 32, 3))
    assert count(clone.trainable_weights) == count(model.trainable_weights)
    assert [v.path for v in clone.weights] == [v.path for v in model.weights]
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x, training=False).numpy(), y.numpy(), rtol=1e-5, atol=1e-5)


def test_keras_file_round_trip(tmp_path):
    model = ResNet(18, 0.25, cifar_stem=True)
    x = tf.random.uniform((2, 16, 16, 3), seed=9)
    model(x, training=True)  # move BN statistics away from their init
    y = model(x, training=False)
    path = str(tmp_path / "encoder.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # finds the registered class by name
    assert isinstance(loaded, ResNet)
    assert loaded.get_config() == model.get_config()
    assert keras.saving.get_registered_name(ResNet) == "simclr_tf>ResNet"
    np.testing.assert_allclose(loaded(x, training=False).numpy(), y.numpy(), rtol=1e-5, atol=1e-5)


def test_mixed_precision_policy_propagates():
    """Every layer computes in bfloat16 with float32 weights, and the bf16 encoder
    computes the float32 one's function within bfloat16 rounding."""
    x = tf.random.uniform((2, 8, 8, 3), seed=10)
    model = ResNet(50, 0.25, cifar_stem=True, sk_ratio=0.0625, dtype="mixed_bfloat16")
    reference = ResNet(50, 0.25, cifar_stem=True, sk_ratio=0.0625)
    model.build(x.shape)
    reference.build(x.shape)
    for group in reference.block_groups:  # let every residual branch contribute
        for block in group.blocks:
            gamma = block.last_batch_norm.gamma
            gamma.assign(tf.fill(gamma.shape, 0.3))
    model.set_weights(reference.get_weights())
    h = model(x, training=False)
    assert h.dtype == tf.bfloat16
    assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {"mixed_bfloat16"}
    assert {v.dtype for v in model.weights} == {"float32"}  # incl. BN statistics
    h32 = reference(x, training=False).numpy()
    h16 = tf.cast(h, tf.float32).numpy()
    err = np.linalg.norm(h16 - h32) / np.linalg.norm(h32)
    # bfloat16 keeps 8 significant bits (0.4%); measured 0.5% here.
    assert err < 0.03, err
    assert np.linalg.norm(h32) > 1.0
    assert model(x, training=True).dtype == tf.bfloat16
    clone = ResNet.from_config(model.get_config())
    assert clone.stem.convs[0].dtype_policy.name == "mixed_bfloat16"
