"""SimCLR data augmentations as stateless, per-example TensorFlow ops.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (arXiv:2002.05709), appendix A. A training view is: random
resized crop (area in [0.08, 1], aspect ratio in [3/4, 4/3] times the image's
own, bicubic resize) -> horizontal flip (p=0.5) -> colour distortion of
strength s (jitter p=0.8 in random order, then grayscale p=0.2) -> Gaussian
blur (p=0.5, sigma in [0.1, 2], kernel about 10% of the side). CIFAR-sized
images use s=0.5 and no blur, larger ones s=1.0 with blur (:func:`preset`).
:func:`augment_view` builds a view from any ordered list of names
(:data:`AUGMENTATIONS`), the paper's study ops (cutout, Sobel, noise,
rotation) included; the default list is exactly :func:`preprocess_for_train`.

Where this differs from the official code, and why:

* Every random op takes a stateless seed (shape ``[2]``) and splits it, so an
  image and a seed give a bit-identical view, eagerly or in a parallel
  ``tf.data`` map, and a resumed run sees the same views.
* The blur draws one sigma per image (the official code shares one per batch)
  and pads with ``REFLECT``, which does not darken the borders as zero padding
  does.

Inputs are uint8 or float in [0, 1], of any size, with 3 channels; outputs are
float32 ``[image_size, image_size, 3]`` in [0, 1], without mean/std
normalisation.

Example:

>>> import tensorflow as tf
>>> from simclr_tf.data import augment
>>> ds = tf.data.Dataset.from_tensor_slices(tf.zeros([8, 40, 50, 3], tf.uint8))
>>> ds = ds.enumerate().map(
...     lambda i, x: augment.preprocess_for_train(
...         x, tf.stack([i, tf.constant(7, tf.int64)]), 32, **augment.preset(32)),
...     num_parallel_calls=tf.data.AUTOTUNE)
>>> next(iter(ds)).shape
TensorShape([32, 32, 3])
"""

import math
from typing import NamedTuple

import tensorflow as tf

from simclr_tf.config.choices import (  # noqa: F401  (the names the config owns)
    AUGMENTATIONS, COLOR_JITTER_IMPLS, NO_AUGMENTATION, check_choice,
    default_augmentations, is_small_image, parse_augmentations, preset)

__all__ = [
    "CROP_PROPORTION",
    "preset",
    "preprocess_for_train",
    "preprocess_for_eval",
    "sample_crop_box",
    "random_resized_crop",
    "center_crop_box",
    "center_crop",
    "random_flip",
    "color_jitter",
    "to_grayscale",
    "random_grayscale",
    "random_color_distortion",
    "blur_kernel_size",
    "gaussian_blur",
    "random_blur",
    "cutout",
    "sobel_filter",
    "gaussian_noise",
    "random_rotate90",
    "AUGMENTATIONS",
    "OPS",
    "is_small_image",
    "default_augmentations",
    "parse_augmentations",
    "augment_view",
    "apply_view",
]

#: Fraction of the shorter side kept by the evaluation centre crop.
CROP_PROPORTION = 0.875

# Every function here is plain TensorFlow: Python `if`s only test Python values
# (flags, dtypes, static shapes) and data-dependent choices use tf.cond /
# tf.switch_case explicitly. Exempting the functions from AutoGraph keeps
# tracing inside `tf.data.Dataset.map` fast (AutoGraph's source transformation
# otherwise costs seconds per traced pipeline).
_no_autograph = tf.autograph.experimental.do_not_convert


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


@_no_autograph
def _as_seed(seed):
    """Converts ``seed`` to an integer tensor of shape [2] (a stateless seed)."""
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    return tf.ensure_shape(seed, [2])


@_no_autograph
def _split(seed, num):
    """Derives ``num`` independent stateless seeds from ``seed`` (list of [2])."""
    seeds = tf.random.experimental.stateless_split(_as_seed(seed), num=num)
    return [seeds[i] for i in range(num)]


@_no_autograph
def _uniform(seed, minval, maxval, shape=()):
    """Float32 stateless uniform sample(s) in [minval, maxval)."""
    return tf.random.stateless_uniform(
        shape, seed=_as_seed(seed), minval=minval, maxval=maxval, dtype=tf.float32
    )


@_no_autograph
def _should_apply(p, seed):
    """Returns a scalar bool tensor that is True with probability ``p``."""
    return _uniform(seed, 0.0, 1.0) < p


@_no_autograph
def _to_float_image(image):
    """Converts a uint8/int or float [H, W, 3] image to float32.

    Integer images are scaled to [0, 1] by their dtype's maximum; float images
    are only cast (they are assumed to lie in [0, 1] already).
    """
    image = tf.convert_to_tensor(image)
    if image.dtype.is_integer:
        image = tf.image.convert_image_dtype(image, tf.float32)
    elif image.dtype != tf.float32:
        image = tf.cast(image, tf.float32)
    return tf.ensure_shape(image, [None, None, 3])


@_no_autograph
def _clip(image):
    return tf.clip_by_value(image, 0.0, 1.0)


@_no_autograph
def _resize(image, image_size):
    """Bicubic resize to [image_size, image_size] and clip to [0, 1]."""
    image = tf.image.resize(image, [image_size, image_size], method="bicubic")
    return tf.reshape(_clip(image), [image_size, image_size, 3])


# ---------------------------------------------------------------------------
# Cropping
# ---------------------------------------------------------------------------


@_no_autograph
def sample_crop_box(
    height,
    width,
    seed,
    area_range=(0.08, 1.0),
    aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
    max_attempts=10,
    relative_aspect=False,
):
    """Samples a random-resized-crop box (Inception / torchvision style).

        ``max_attempts`` candidates are drawn at once (no Python loop): area
        uniform in ``area_range``, aspect ratio log-uniform in
        ``aspect_ratio_range``. The first that fits is placed uniformly at random;
        if none fits, the largest centred box with the clamped aspect ratio is used.

        Args:
          height: scalar int (Python or tensor), image height.
          width: scalar int (Python or tensor), image width.
          seed: stateless seed, int tensor of shape [2].
          area_range: (min, max) fraction of the image area covered by the box.
          aspect_ratio_range: (min, max) of the box's width / height.
          max_attempts: Python int, number of candidate boxes.
          relative_aspect: scale ``aspect_ratio_range`` by the image's own
            ``width / height``, as the paper's appendix A and the official code do
            (no change for square images).

        Returns:
          Tuple of int32 scalars ``(offset_y, offset_x, crop_height, crop_width)``.
    """
    area_seed, ratio_seed, y_seed, x_seed = _split(seed, 4)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    r_min, r_max = float(aspect_ratio_range[0]), float(aspect_ratio_range[1])
    log_ratio = _uniform(ratio_seed, math.log(r_min), math.log(r_max), [max_attempts])
    if relative_aspect:
        log_ratio = log_ratio + tf.math.log(w / h)
        r_min, r_max = r_min * (w / h), r_max * (w / h)

    target_area = h * w * _uniform(area_seed, area_range[0], area_range[1], [max_attempts])
    ratio = tf.exp(log_ratio)
    cand_w = tf.round(tf.sqrt(target_area * ratio))
    cand_h = tf.round(tf.sqrt(target_area / ratio))
    valid = (cand_w >= 1.0) & (cand_h >= 1.0) & (cand_w <= w) & (cand_h <= h)

    first = tf.reduce_min(tf.where(valid, tf.range(max_attempts), max_attempts))
    found = first < max_attempts
    first = tf.minimum(first, max_attempts - 1)

    # Fallback: centred box with the image's aspect ratio clamped to the range.
    image_ratio = w / h
    fb_w = tf.where(image_ratio > r_max, tf.round(h * r_max), w)
    fb_h = tf.where(image_ratio < r_min, tf.round(w / r_min), h)
    fb_w = tf.clip_by_value(fb_w, 1.0, w)
    fb_h = tf.clip_by_value(fb_h, 1.0, h)

    crop_h = tf.cast(tf.where(found, cand_h[first], fb_h), tf.int32)
    crop_w = tf.cast(tf.where(found, cand_w[first], fb_w), tf.int32)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)

    slack_y = height - crop_h
    slack_x = width - crop_w
    rand_y = tf.cast(tf.floor(_uniform(y_seed, 0.0, 1.0) * tf.cast(slack_y + 1, tf.float32)), tf.int32)
    rand_x = tf.cast(tf.floor(_uniform(x_seed, 0.0, 1.0) * tf.cast(slack_x + 1, tf.float32)), tf.int32)
    offset_y = tf.where(found, tf.minimum(rand_y, slack_y), slack_y // 2)
    offset_x = tf.where(found, tf.minimum(rand_x, slack_x), slack_x // 2)
    return offset_y, offset_x, crop_h, crop_w


@_no_autograph
def random_resized_crop(
    image,
    seed,
    image_size,
    area_range=(0.08, 1.0),
    aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
    max_attempts=10,
    relative_aspect=True,
):
    """Random resized crop (SimCLR step 1): crop a random box, bicubic resize.

        Args:
          image: uint8 or float [H, W, 3] image (float in [0, 1]).
          seed: stateless seed, int tensor of shape [2].
          image_size: Python int, output side.
          area_range, aspect_ratio_range, max_attempts, relative_aspect: see
            :func:`sample_crop_box`.

        Returns:
          float32 tensor [image_size, image_size, 3] in [0, 1].
    """
    image = _to_float_image(image)
    shape = tf.shape(image)
    oy, ox, ch, cw = sample_crop_box(
        shape[0], shape[1], seed, area_range, aspect_ratio_range, max_attempts,
        relative_aspect)
    image = tf.slice(image, tf.stack([oy, ox, 0]), tf.stack([ch, cw, 3]))
    return _resize(image, image_size)


@_no_autograph
def center_crop_box(height, width, crop_proportion=CROP_PROPORTION):
    """Centred square box keeping ``crop_proportion`` of the shorter side.

        Rounded and offset as the official SimCLR evaluation crop.

        Returns:
          Tuple of int32 scalars ``(offset_y, offset_x, side, side)``.
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    short = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(tf.round(crop_proportion * short), tf.int32)
    side = tf.maximum(side, 1)
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


@_no_autograph
def center_crop(image, image_size, crop_proportion=CROP_PROPORTION):
    """Centre crop (see :func:`center_crop_box`) then bicubic resize and clip.

    Args:
      image: uint8 or float [H, W, 3] image (float in [0, 1]).
      image_size: Python int, output side.
      crop_proportion: fraction of the shorter side kept.

    Returns:
      float32 tensor [image_size, image_size, 3] in [0, 1].
    """
    image = _to_float_image(image)
    shape = tf.shape(image)
    oy, ox, ch, cw = center_crop_box(shape[0], shape[1], crop_proportion)
    image = tf.slice(image, tf.stack([oy, ox, 0]), tf.stack([ch, cw, 3]))
    return _resize(image, image_size)


# ---------------------------------------------------------------------------
# Flip
# ---------------------------------------------------------------------------


@_no_autograph
def random_flip(image, seed, p=0.5):
    """Mirrors the image left-right with probability ``p``.

    Args:
      image: [H, W, C] image tensor.
      seed: stateless seed, int tensor of shape [2].
      p: probability of flipping.

    Returns:
      The (possibly) flipped image, same dtype and shape.
    """
    image = tf.convert_to_tensor(image)
    return tf.cond(
        _should_apply(p, seed), lambda: tf.reverse(image, axis=[1]), lambda: image
    )


# ---------------------------------------------------------------------------
# Colour distortion
# ---------------------------------------------------------------------------


@_no_autograph
def _jitter_order(seed):
    """Uniformly random permutation of [0, 1, 2, 3] (brightness, contrast,
    saturation, hue) used by :func:`color_jitter` for ``seed``."""
    return tf.argsort(_uniform(seed, 0.0, 1.0, [4]))


@_no_autograph
def _jitter_seeds(seed):
    """Sub-seeds of :func:`color_jitter`: (order, brightness, contrast,
    saturation, hue)."""
    return _split(seed, 5)


@_no_autograph
def _brightness(image, seed, strength, impl):
    if impl == "v2":
        factor = _uniform(seed, max(0.0, 1.0 - strength), 1.0 + strength)
        return image * factor
    delta = _uniform(seed, -strength, strength)
    return image + delta


@_no_autograph
def _contrast(image, seed, strength):
    factor = _uniform(seed, max(0.0, 1.0 - strength), 1.0 + strength)
    return tf.image.adjust_contrast(image, factor)


@_no_autograph
def _saturation(image, seed, strength):
    factor = _uniform(seed, max(0.0, 1.0 - strength), 1.0 + strength)
    return tf.image.adjust_saturation(image, factor)


@_no_autograph
def _hue(image, seed, strength):
    strength = min(strength, 0.5)
    delta = _uniform(seed, -strength, strength)
    return tf.image.adjust_hue(image, delta)


@_no_autograph
def color_jitter(image, seed, strength=1.0, impl="v2", random_order=True):
    """Always-on colour jitter of SimCLR with strength ``s = strength``.

        Brightness, contrast and saturation of strength ``0.8 s``, hue ``0.2 s``
        (capped at 0.5, which already reaches every hue), in a random or the fixed
        order, clipped to [0, 1] after each op. Brightness ``"v2"`` multiplies by
        ``U[max(0, 1 - b), 1 + b]``; ``"v1"`` adds ``U[-b, b]``.

        Args:
          image: float32 [H, W, 3] image in [0, 1].
          seed: stateless seed, int tensor of shape [2].
          strength: colour distortion strength ``s``.
          impl: ``"v2"`` (multiplicative brightness) or ``"v1"`` (additive).
          random_order: whether to shuffle the order of the four ops.

        Returns:
          float32 [H, W, 3] image in [0, 1].
    """
    check_choice("color_jitter_impl", impl, COLOR_JITTER_IMPLS)
    image = _to_float_image(image)
    b = c = s = 0.8 * float(strength)
    h = 0.2 * float(strength)
    order_seed, b_seed, c_seed, s_seed, h_seed = _jitter_seeds(seed)
    ops = [
        lambda x: _brightness(x, b_seed, b, impl),
        lambda x: _contrast(x, c_seed, c),
        lambda x: _saturation(x, s_seed, s),
        lambda x: _hue(x, h_seed, h),
    ]
    if not random_order:
        for op in ops:
            image = _clip(op(image))
        return image

    order = _jitter_order(order_seed)

    # Position i applies op order[i]. Unrolled rather than a tf.while_loop:
    # tracing is slower (16 small branch functions) but each image runs faster.
    for i in range(4):
        current = image
        branches = [(lambda op=op, x=current: _clip(op(x))) for op in ops]
        image = tf.switch_case(order[i], branches)
    return image


@_no_autograph
def to_grayscale(image):
    """Converts an RGB image to grayscale, keeping 3 (equal) channels.

    Uses ``tf.image.rgb_to_grayscale`` (ITU-R 601 luma weights).
    """
    image = tf.convert_to_tensor(image)
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


@_no_autograph
def random_grayscale(image, seed, p=0.2):
    """Applies :func:`to_grayscale` with probability ``p``."""
    image = tf.convert_to_tensor(image)
    return tf.cond(_should_apply(p, seed), lambda: to_grayscale(image), lambda: image)


@_no_autograph
def random_color_distortion(
    image, seed, strength=1.0, impl="v2", jitter_prob=0.8, grayscale_prob=0.2
):
    """SimCLR colour distortion (step 3): random jitter, then random grayscale.

    With probability ``jitter_prob`` applies :func:`color_jitter` (random
    order); then, independently, with probability ``grayscale_prob`` converts
    the result to grayscale.

    Args:
      image: uint8 or float [H, W, 3] image (float in [0, 1]).
      seed: stateless seed, int tensor of shape [2].
      strength: colour distortion strength ``s``.
      impl: ``"v2"`` or ``"v1"`` brightness (see :func:`color_jitter`).
      jitter_prob: probability of applying the jitter.
      grayscale_prob: probability of converting to grayscale.

    Returns:
      float32 [H, W, 3] image in [0, 1].
    """
    check_choice("color_jitter_impl", impl, COLOR_JITTER_IMPLS)
    image = _to_float_image(image)
    jitter_apply_seed, gray_seed, jitter_seed = _split(seed, 3)
    image = tf.cond(
        _should_apply(jitter_prob, jitter_apply_seed),
        lambda: color_jitter(image, jitter_seed, strength, impl),
        lambda: image,
    )
    return random_grayscale(image, gray_seed, grayscale_prob)


# ---------------------------------------------------------------------------
# Gaussian blur
# ---------------------------------------------------------------------------


@_no_autograph
def blur_kernel_size(side):
    """Blur kernel size for an image side: ``2 * max(1, side // 20) + 1``.

    That is about 10% of ``side``, always odd and at least 3 (e.g. 32 -> 3,
    96 -> 9, 224 -> 23). Works on Python ints and on int tensors.
    """
    if isinstance(side, int):
        return 2 * max(1, side // 20) + 1
    return 2 * tf.maximum(1, side // 20) + 1


@_no_autograph
def _gaussian_kernel_1d(sigma, radius):
    """Normalised 1-D Gaussian taps ``exp(-x^2 / (2 sigma^2))``, x in [-r, r]."""
    sigma = tf.cast(sigma, tf.float32)
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
    return kernel / tf.reduce_sum(kernel)


@_no_autograph
def _padded_source_index(n, radius, padding):
    """Source index of each of the ``n + 2 r`` positions of a padded axis.

    ``REFLECT`` mirrors about the edge samples (``d c b | a b c d``),
    ``SYMMETRIC`` repeats them (``c b a | a b c d``). Any radius is valid.
    """
    i = tf.range(-radius, n + radius)
    if padding == "REFLECT":
        period = tf.maximum(2 * (n - 1), 1)
        m = tf.math.floormod(i, period)
        return tf.where(m < n, m, period - m)
    period = 2 * n
    m = tf.math.floormod(i, period)
    return tf.where(m < n, m, period - 1 - m)


@_no_autograph
def _blur_matrix(n, kernel, radius, padding):
    """[n, n] matrix ``M`` with ``(M @ x)[i] = sum_j kernel[j] x_pad[i + j]``.

    This is a 1-D convolution (correlation; the kernel is symmetric) of a
    length-``n`` signal padded by ``radius`` on both sides, folded into a
    banded matrix so that padding and convolution become one matmul.
    """
    source = _padded_source_index(n, radius, padding)
    taps = tf.range(n)[:, tf.newaxis] + tf.range(2 * radius + 1)[tf.newaxis, :]
    cols = tf.gather(source, taps)  # [n, k]
    rows = tf.broadcast_to(tf.range(n)[:, tf.newaxis], tf.shape(cols))
    indices = tf.stack([tf.reshape(rows, [-1]), tf.reshape(cols, [-1])], axis=1)
    updates = tf.reshape(tf.broadcast_to(kernel[tf.newaxis, :], tf.shape(cols)), [-1])
    return tf.scatter_nd(indices, updates, tf.stack([n, n]))  # duplicates add up


@_no_autograph
def gaussian_blur(image, sigma, kernel_size=None, padding="REFLECT"):
    """Separable Gaussian blur of an [H, W, C] image.

    The 1-D kernel is ``exp(-x^2 / (2 sigma^2))`` for integer
    ``x in [-r, r]``, normalised to sum 1. The image is padded by ``r`` on each
    side with ``padding`` (``"REFLECT"``: ``d c b | a b c d``, or
    ``"SYMMETRIC"``: ``c b a | a b c d``) and filtered along the height, then
    along the width, so the output has the input's shape. Each 1-D pass is a
    product with an ``[n, n]`` banded matrix that folds in the padding (any
    radius works, even one larger than the image).

    Args:
      image: float [H, W, C] image.
      sigma: positive scalar (float or tensor), the standard deviation.
      kernel_size: odd int (``r = kernel_size // 2``; an even size is rounded
        up to the next odd one); by default :func:`blur_kernel_size` of the
        shorter image side.
      padding: ``"REFLECT"`` (default) or ``"SYMMETRIC"``.

    Returns:
      float32 [H, W, C] blurred image.
    """
    if padding not in ("REFLECT", "SYMMETRIC"):
        raise ValueError(f"padding must be 'REFLECT' or 'SYMMETRIC', got {padding!r}")
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.float32:
        image = tf.cast(image, tf.float32)
    static_shape = image.shape
    shape = tf.shape(image)
    if kernel_size is None:
        if static_shape[0] is not None and static_shape[1] is not None:
            kernel_size = blur_kernel_size(int(min(static_shape[0], static_shape[1])))
        else:
            kernel_size = blur_kernel_size(tf.minimum(shape[0], shape[1]))
    radius = kernel_size // 2
    kernel = _gaussian_kernel_1d(sigma, radius)

    m_h = _blur_matrix(shape[0], kernel, radius, padding)
    m_w = _blur_matrix(shape[1], kernel, radius, padding)
    out = tf.einsum("ij,jwc->iwc", m_h, image)
    out = tf.einsum("vw,hwc->hvc", m_w, out)
    out.set_shape(static_shape)
    return out


@_no_autograph
def random_blur(image, seed, p=0.5, sigma_range=(0.1, 2.0), kernel_size=None):
    """SimCLR Gaussian blur (step 4) with a sigma drawn per image.

    With probability ``p`` blurs the image with :func:`gaussian_blur` and
    ``sigma ~ U[sigma_range]`` drawn from this image's own seed.

    Args:
      image: float [H, W, 3] image in [0, 1].
      seed: stateless seed, int tensor of shape [2].
      p: probability of blurring.
      sigma_range: (min, max) of the uniform sigma.
      kernel_size: see :func:`gaussian_blur`.

    Returns:
      float32 [H, W, 3] image in [0, 1].
    """
    image = _to_float_image(image)
    apply_seed, sigma_seed = _split(seed, 2)
    sigma = _uniform(sigma_seed, sigma_range[0], sigma_range[1])
    return tf.cond(
        _should_apply(p, apply_seed),
        lambda: _clip(gaussian_blur(image, sigma, kernel_size)),
        lambda: image,
    )


# ---------------------------------------------------------------------------
# Study augmentations (the paper's Figure 4: cutout, Sobel, noise, rotation)
# ---------------------------------------------------------------------------


@_no_autograph
def cutout(image, seed, size_fraction=0.5, fill="zero"):
    """Cutout: fills one random square patch that lies inside the image.

        Args:
          image: uint8 or float [H, W, 3] image (float in [0, 1]).
          seed: stateless seed, int tensor of shape [2].
          size_fraction: patch side as a fraction of the shorter image side, in
            ``(0, 1]``.
          fill: ``"zero"`` (black) or ``"mean"`` (the image's per-channel mean).

        Returns:
          float32 [H, W, 3] image in [0, 1].
    """
    if fill not in ("zero", "mean"):
        raise ValueError(f"cutout fill must be 'zero' or 'mean', got {fill!r}")
    if not 0.0 < float(size_fraction) <= 1.0:
        raise ValueError(f"cutout size_fraction must be in (0, 1], got {size_fraction!r}")
    image = _to_float_image(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.maximum(1, tf.cast(tf.round(float(size_fraction) * short), tf.int32))
    y_seed, x_seed = _split(seed, 2)

    def offset(s, n):
        slack = tf.cast(n - side + 1, tf.float32)
        return tf.minimum(tf.cast(tf.floor(_uniform(s, 0.0, 1.0) * slack), tf.int32), n - side)

    oy, ox = offset(y_seed, height), offset(x_seed, width)
    rows = tf.range(height)[:, tf.newaxis]
    cols = tf.range(width)[tf.newaxis, :]
    inside = (rows >= oy) & (rows < oy + side) & (cols >= ox) & (cols < ox + side)
    if fill == "zero":
        value = tf.zeros([3], tf.float32)
    else:
        value = tf.reduce_mean(image, axis=[0, 1])
    return tf.where(inside[:, :, tf.newaxis], value, image)


@_no_autograph
def sobel_filter(image):
    """Sobel filtering (the paper's Figure 4h): gradient magnitude, 3 channels.

        The grayscale image's Sobel magnitude, divided by its maximum over the
        image (floored at 1e-3, so a flat image stays ~0 instead of amplifying
        rounding noise), repeated on the three channels.

        Args:
          image: uint8 or float [H, W, 3] image (float in [0, 1]), H, W >= 2.

        Returns:
          float32 [H, W, 3] image in [0, 1].
    """
    image = _to_float_image(image)
    gray = tf.image.rgb_to_grayscale(image)[tf.newaxis]  # [1, H, W, 1]
    grads = tf.image.sobel_edges(gray)[0, :, :, 0, :]  # [H, W, 2]: (dy, dx)
    magnitude = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=-1, keepdims=True))
    magnitude = magnitude / tf.maximum(tf.reduce_max(magnitude), 1e-3)
    out = tf.tile(magnitude, [1, 1, 3])
    out.set_shape(image.shape)
    return out


@_no_autograph
def gaussian_noise(image, seed, std=0.1):
    """Adds i.i.d. Gaussian noise ``N(0, std^2)`` to every pixel and channel,
    then clips to [0, 1].

    Args:
      image: uint8 or float [H, W, 3] image (float in [0, 1]).
      seed: stateless seed, int tensor of shape [2].
      std: noise standard deviation (in units of the [0, 1] pixel range).

    Returns:
      float32 [H, W, 3] image in [0, 1].
    """
    image = _to_float_image(image)
    noise = tf.random.stateless_normal(tf.shape(image), seed=_as_seed(seed), stddev=std,
                                       dtype=tf.float32)
    return _clip(image + noise)


@_no_autograph
def random_rotate90(image, seed, include_identity=False):
    """Rotates the image counter-clockwise by ``k * 90`` degrees.

    ``k`` is drawn uniformly from ``{1, 2, 3}`` (the paper's Figure 4j,
    "Rotate {90, 180, 270}"), or from ``{0, 1, 2, 3}`` when
    ``include_identity``. Uses ``tf.image.rot90``; a non-square image swaps
    its height and width for odd ``k``.

    Args:
      image: [H, W, C] image tensor.
      seed: stateless seed, int tensor of shape [2].
      include_identity: whether ``k = 0`` (no rotation) can be drawn.

    Returns:
      The rotated image, same dtype.
    """
    image = tf.convert_to_tensor(image)
    low = 0 if include_identity else 1
    k = tf.random.stateless_uniform([], seed=_as_seed(seed), minval=low, maxval=4,
                                    dtype=tf.int32)
    out = tf.image.rot90(image, k)
    if image.shape[0] is not None and image.shape[0] == image.shape[1]:
        out.set_shape(image.shape)
    return out


# ---------------------------------------------------------------------------
# Composable view pipelines: the name -> op registry
# ---------------------------------------------------------------------------


class ViewParams(NamedTuple):
    """The settings an op of :data:`OPS` may read (see :func:`augment_view`)."""

    image_size: int
    color_jitter_strength: float = 1.0
    color_jitter_impl: str = "v2"
    cutout_fraction: float = 0.5
    cutout_fill: str = "zero"
    noise_std: float = 0.1


def _jitter_only(image, seed, p):
    apply_seed, jitter_seed = _split(seed, 2)
    return tf.cond(_should_apply(0.8, apply_seed),
                   lambda: color_jitter(image, jitter_seed, p.color_jitter_strength,
                                        p.color_jitter_impl),
                   lambda: image)


#: The op of every augmentation name: ``name -> op(image, seed, params)``. The
#: names and their order (the seed slots of :func:`augment_view`) are the
#: config's :data:`simclr_tf.config.choices.AUGMENTATIONS`; the keys here are
#: exactly those, in that order (tests/test_config.py).
OPS = {
    "crop": lambda x, s, p: random_resized_crop(x, s, p.image_size),
    "flip": lambda x, s, p: random_flip(x, s),
    "color": lambda x, s, p: random_color_distortion(x, s, p.color_jitter_strength,
                                                     p.color_jitter_impl),
    "blur": lambda x, s, p: random_blur(x, s, kernel_size=blur_kernel_size(p.image_size)),
    "jitter": _jitter_only,
    "gray": lambda x, s, p: random_grayscale(x, s),
    "cutout": lambda x, s, p: cutout(x, s, p.cutout_fraction, p.cutout_fill),
    "sobel": lambda x, s, p: sobel_filter(x),
    "noise": lambda x, s, p: gaussian_noise(x, s, p.noise_std),
    "rotate": lambda x, s, p: random_rotate90(x, s),
}


@_no_autograph
def augment_view(
    image,
    seed,
    image_size,
    augmentations,
    color_jitter_strength=1.0,
    color_jitter_impl="v2",
    cutout_fraction=0.5,
    cutout_fill="zero",
    noise_std=0.1,
):
    """One training view built from an ordered list of augmentation names.

        Ops run in list order. A leading ``"crop"`` reads the input image;
        otherwise the image is first resized to ``image_size``. ``color`` is
        jitter (p=0.8) then grayscale (p=0.2); ``jitter`` and ``gray`` are its two
        halves. The default list gets the four sub-seeds of
        :func:`preprocess_for_train`, so its views are bit-identical; other names
        fold their slot into the seed, and a repeated name gets a fresh seed.

        Args:
          image: uint8 or float [H, W, 3] image of any size (float in [0, 1]).
          seed: stateless seed, int tensor of shape [2].
          image_size: Python int, output side.
          augmentations: names (see :data:`AUGMENTATIONS`), a tuple/list or a
            comma-separated string; empty or ``"none"``: resize only.
          color_jitter_strength, color_jitter_impl: see :func:`color_jitter`.
          cutout_fraction, cutout_fill: see :func:`cutout`.
          noise_std: see :func:`gaussian_noise`.

        Returns:
          float32 tensor [image_size, image_size, 3] in [0, 1].
    """
    params = ViewParams(int(image_size), color_jitter_strength, color_jitter_impl,
                        cutout_fraction, cutout_fill, noise_std)
    return apply_view(image, seed, parse_augmentations(augmentations), params)


@_no_autograph
def apply_view(image, seed, names, params):
    """:func:`augment_view` of names already parsed (a tuple of :data:`OPS` keys,
    e.g. ``cfg.augment.view1``) with the settings ``params`` (a :class:`ViewParams`):
    the pipeline's path, which reads the config's parsed views as they are."""
    image_size = int(params.image_size)
    image = _to_float_image(image)
    seed = _as_seed(seed)
    base = dict(zip(("crop", "flip", "color", "blur"), _split(seed, 4)))
    if not names or names[0] != "crop":
        image = _resize(image, image_size)
    seen = {}
    for name in names:
        op_seed = base.get(name)
        if op_seed is None:
            op_seed = tf.random.experimental.stateless_fold_in(seed, AUGMENTATIONS.index(name))
        if seen.get(name):
            op_seed = tf.random.experimental.stateless_fold_in(op_seed, seen[name])
        seen[name] = seen.get(name, 0) + 1
        image = OPS[name](image, op_seed, params)
    return tf.reshape(_clip(image), [image_size, image_size, 3])


# ---------------------------------------------------------------------------
# Full pipelines
# ---------------------------------------------------------------------------


@_no_autograph
def preprocess_for_train(
    image,
    seed,
    image_size,
    color_jitter_strength=1.0,
    use_blur=True,
    color_jitter_impl="v2",
    crop=True,
    flip=True,
    color_distort=True,
    augmentations=None,
):
    """One SimCLR training view of an image (arXiv:2002.05709, appendix A).

    Random resized crop (or a plain bicubic resize when ``crop=False``) ->
    horizontal flip (p=0.5) -> colour distortion (jitter p=0.8, grayscale
    p=0.2) -> Gaussian blur (p=0.5, per-image sigma) -> clip to [0, 1]. Call it
    twice with different seeds for the two views.

    Args:
      image: uint8 or float [H, W, 3] image of any size (float in [0, 1]).
      seed: stateless seed, int32/int64 tensor of shape [2]. Split into four
        fixed sub-seeds (crop, flip, colour, blur).
      image_size: Python int, output side.
      color_jitter_strength: colour distortion strength ``s``.
      use_blur: whether to apply the random Gaussian blur.
      color_jitter_impl: ``"v2"`` (multiplicative brightness) or ``"v1"``.
      crop: whether to use the random resized crop.
      flip: whether to use the random horizontal flip.
      color_distort: whether to use the colour distortion.
      augmentations: optional ordered names for :func:`augment_view`; when
        given, ``crop``, ``flip``, ``color_distort`` and ``use_blur`` are
        ignored.

    Returns:
      float32 tensor [image_size, image_size, 3] in [0, 1].

    Example:

    >>> view = preprocess_for_train(tf.zeros([40, 50, 3], tf.uint8),
    ...                             tf.constant([1, 2]), 32, **preset(32))
    >>> view.shape
    TensorShape([32, 32, 3])
    """
    check_choice("color_jitter_impl", color_jitter_impl, COLOR_JITTER_IMPLS)
    if augmentations is None:
        augmentations = (("crop",) if crop else ()) + (("flip",) if flip else ()) + (
            ("color",) if color_distort else ()) + (("blur",) if use_blur else ())
    return augment_view(image, seed, image_size, augmentations,
                        color_jitter_strength=color_jitter_strength,
                        color_jitter_impl=color_jitter_impl)


@_no_autograph
def preprocess_for_eval(image, image_size, crop=True):
    """Deterministic evaluation preprocessing.

        Above 32 px (with ``crop``), a centre crop keeping ``CROP_PROPORTION`` of
        the shorter side; then a bicubic resize to ``image_size`` and a clip to
        [0, 1].

        Args:
          image: uint8 or float [H, W, 3] image of any size (float in [0, 1]).
          image_size: Python int, output side.
          crop: whether to centre-crop (only effective above 32 px).

        Returns:
          float32 tensor [image_size, image_size, 3] in [0, 1].
    """
    image_size = int(image_size)
    if crop and not is_small_image(image_size):
        return center_crop(image, image_size, CROP_PROPORTION)
    return _resize(_to_float_image(image), image_size)
