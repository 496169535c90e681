"""The names, choices and rules the config owns, in plain Python (no TensorFlow).

Everything a setting may be is decided here: the allowed values of the
choice flags, the augmentation names a view pipeline may list, the CIFAR
image-size rule and its augmentation preset, and the checks of values that
the public layers and ops also take from users directly (one check each,
raising :class:`~simclr_tf.errors.ConfigError`, a ``ValueError``).

The TensorFlow modules import these names from here: the augmentation
registry :data:`simclr_tf.data.augment.OPS` has exactly the keys of
:data:`AUGMENTATIONS` (in that order), :data:`simclr_tf.models.resnet.BLOCK_CONFIGS`
exactly the depths of :data:`RESNET_DEPTHS`.
"""

import math

from simclr_tf.errors import ConfigError

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
PROJ_HEAD_MODES = ("nonlinear", "linear", "none")
OPTIMIZERS = ("lars", "momentum", "adam")
LR_SCALINGS = ("linear", "sqrt")
COLOR_JITTER_IMPLS = ("v1", "v2")
NONFINITE_POLICIES = ("stop", "skip")

#: The augmentation names of a view pipeline. A name's position is its seed
#: slot in :func:`simclr_tf.data.augment.augment_view`: append new names,
#: never reorder (that would change the views of existing seeds).
AUGMENTATIONS = ("crop", "flip", "color", "blur", "jitter", "gray", "cutout", "sobel",
                 "noise", "rotate")
#: The pipeline value meaning "no op" (resize only).
NO_AUGMENTATION = "none"

#: Largest side of the CIFAR setting (see :func:`is_small_image`).
SMALL_IMAGE_MAX = 32

#: The allowed range of ``batch_norm_decay`` (the moving-average momentum).
BATCH_NORM_DECAY_RANGE = {"minimum": 0.0, "maximum": 1.0, "exclusive_max": True}


def check_choice(key, value, allowed):
    """``value`` if it is one of ``allowed``, else ConfigError naming ``key``."""
    if value not in allowed:
        raise ConfigError(f"Invalid value {value!r} for '{key}': allowed values are "
                          f"{', '.join(map(str, allowed))}.")
    return value


def describe_range(minimum=None, maximum=None, exclusive_min=False, exclusive_max=False):
    """The range as words, e.g. ``">= 0.0 and < 1.0"`` (the flag table shows it too)."""
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_min else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if exclusive_max else '<='} {maximum}")
    return " and ".join(parts)


def check_range(key, value, minimum=None, maximum=None, exclusive_min=False,
                exclusive_max=False):
    """``value`` if it is finite and inside the range, else ConfigError naming ``key``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"'{key}' must be finite, got {value!r}.")
    below = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
    above = maximum is not None and (value >= maximum if exclusive_max else value > maximum)
    if below or above:
        bounds = describe_range(minimum, maximum, exclusive_min, exclusive_max)
        raise ConfigError(f"Invalid value {value!r} for '{key}': it must be {bounds}.")
    return value


def check_batch_norm_decay(value):
    """``float(value)`` if it is a valid BatchNorm decay (in [0, 1)), else ConfigError."""
    try:
        decay = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"Invalid value {value!r} for 'batch_norm_decay': expected "
                          "a float.") from None
    return check_range("batch_norm_decay", decay, **BATCH_NORM_DECAY_RANGE)


def is_small_image(image_size):
    """The CIFAR setting: images of at most 32 px.

    The one place that decides it: such runs use the CIFAR stem (3x3 conv,
    no max-pool; :mod:`simclr_tf.models.resnet`), the CIFAR augmentation
    preset (:func:`preset`) and no evaluation centre crop
    (:func:`simclr_tf.data.augment.preprocess_for_eval`).
    """
    return int(image_size) <= SMALL_IMAGE_MAX


def preset(image_size):
    """Default colour-jitter strength and blur switch for an image size.

    Following SimCLR (arXiv:2002.05709, appendix A and B.9), small images
    (``image_size <= 32``, the CIFAR setting) use colour strength 0.5 and no
    blur; larger images (the ImageNet setting) use strength 1.0 and blur.

    Returns:
      dict with keys ``color_jitter_strength`` (float) and ``use_blur`` (bool),
      suitable as keyword arguments of
      :func:`simclr_tf.data.augment.preprocess_for_train`.

    Example:

    >>> preset(32)
    {'color_jitter_strength': 0.5, 'use_blur': False}
    """
    if is_small_image(image_size):
        return {"color_jitter_strength": 0.5, "use_blur": False}
    return {"color_jitter_strength": 1.0, "use_blur": True}


def default_augmentations(use_blur):
    """The SimCLR view pipeline as names: crop, flip, color (+ blur)."""
    return ("crop", "flip", "color") + (("blur",) if use_blur else ())


def parse_augmentations(value, key="augmentations"):
    """A comma-separated string (or list) of augmentation names -> tuple.

    ``"none"`` and ``""`` give ``()``. Raises ConfigError naming ``key`` and
    the allowed names for an unknown name.
    """
    if isinstance(value, str):
        value = value.split(",")
    names = tuple(str(n).strip() for n in value)
    names = tuple(n for n in names if n and n != NO_AUGMENTATION)
    for name in names:
        if name not in AUGMENTATIONS:
            raise ConfigError(
                f"Invalid augmentation {name!r} in '{key}': allowed names are "
                f"{', '.join(AUGMENTATIONS)} (or '{NO_AUGMENTATION}' for none), "
                "comma-separated.")
    return names
