"""What every dataset source returns: a :class:`Source` of records, and shared decoding.

:mod:`simclr_tf.data.datasets` opens a source by name; the image-folder
source is :mod:`simclr_tf.data.image_folder`.
"""

import dataclasses
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the pipelines need to know about a loaded split.

    Attributes:
        name: canonical dataset name (``"offline_shapes"``, ``"image_folder"``
            or the TFDS name).
        split: the split string as requested (e.g. ``"train[:10%]"``).
        num_examples: number of (valid) examples in the split.
        num_classes: number of classes (0 when the dataset has no labels).
        image_shape: ``(H, W, 3)`` when all images share one size, else None.
        skipped: files skipped as unreadable: corrupt, empty, permission
            denied or named in bytes that are not UTF-8 (image folders only).
            Files that go bad after the scan are not in it: see
            :func:`image_folder.mid_run_skipped`.
        class_names: class names in label order, when known.
        skipped_too_large: files skipped (undecoded) because their header
            gives more pixels than :func:`image_folder.max_image_pixels`
            (image folders only).
        skipped_files: the paths of the files (and folders) skipped at the
            scan, of every kind above (image folders and image lists).
        version: the TFDS dataset's version (TFDS datasets only).
    """

    name: str
    split: str
    num_examples: int
    num_classes: int
    image_shape: Optional[Tuple[int, int, int]]
    skipped: int = 0
    class_names: Optional[Tuple[str, ...]] = None
    skipped_too_large: int = 0
    skipped_files: Tuple[str, ...] = ()
    version: Optional[str] = None


@dataclasses.dataclass
class Source:
    """A split as a stream of cheap records plus the function that decodes them.

    ``records`` is small per element (file paths, encoded bytes or small
    arrays), so it can be shuffled, sharded and enumerated before the costly
    decode. ``decode(record)`` returns ``dict(image=uint8 [H, W, 3],
    label=int64 [])`` and is safe inside ``Dataset.map``.

    Attributes:
        records: ``tf.data.Dataset`` of records, in a fixed order.
        decode: record -> example dict.
        info: the split's :class:`DatasetInfo`.
        cheap_records: True when records are file paths or in-memory arrays,
            so a shuffle buffer over the whole split is cheap; False when they
            hold image bytes (TFDS), whose size the pipeline estimates from
            ``info.image_shape``.
    """

    records: tf.data.Dataset
    decode: Callable
    info: DatasetInfo
    cheap_records: bool = True



# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def to_rgb_uint8(image):
    """Converts an image tensor [H, W, C] (C in 1, 3, 4) to RGB ``uint8``.

    Gray is replicated to three channels, alpha is dropped; ``uint16`` and
    other integer types are rescaled to ``uint8``; floats are taken to be in
    ``[0, 1]``.
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    channels = image.shape[-1]
    if channels == 3:
        pass
    elif channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels is not None and channels >= 3:
        image = image[..., :3]
    else:  # unknown channel count: decide at run time
        image = tf.cond(
            tf.shape(image)[-1] < 3,
            lambda: tf.tile(image[..., :1], [1, 1, 3]),
            lambda: image[..., :3],
        )
    return tf.ensure_shape(image, [None, None, 3])


def decode_image_bytes(contents):
    """Decodes encoded JPEG/PNG/BMP/GIF/WebP bytes to RGB ``uint8`` [H, W, 3].

    16-bit PNGs are scaled to 8 bit, gray and CMYK become RGB, alpha is
    dropped, animated GIFs give their first frame (animated WebP raises). The EXIF
    orientation is not applied here (see :func:`apply_orientation`). Raises
    ``tf.errors.InvalidArgumentError`` on corrupt data.
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def apply_orientation(image, orientation):
    """Turns decoded pixels [H, W, C] into the image as displayed.

    ``orientation`` is the EXIF orientation tag (int32 scalar, 1-8; other
    values leave the image as it is), as :func:`image_headers.read_header`
    returns it: 2 mirrors left-right, 3 rotates by 180 degrees, 4 mirrors
    top-bottom, 5 transposes, 6 rotates 90 degrees clockwise, 7 transverses
    and 8 rotates 90 degrees counter-clockwise. One branch runs per image.
    """
    branches = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, k=2),
        lambda: tf.image.flip_up_down(image),
        lambda: tf.image.transpose(image),
        lambda: tf.image.rot90(image, k=3),
        lambda: tf.image.rot90(tf.image.transpose(image), k=2),
        lambda: tf.image.rot90(image, k=1),
    ]
    orientation = tf.cast(orientation, tf.int32)
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
    out = tf.switch_case(index, branches)
    return tf.ensure_shape(out, [None, None, image.shape[-1]])


def resolve_split(split, sizes, what):
    """Turns a TFDS-style split string into ``[(split_name, start, stop)]``.

    Args:
        split: e.g. ``"train"``, ``"train[:10%]"``, ``"train[5:]+test"``.
        sizes: ``{split_name: num_examples}`` of the available splits.
        what: dataset description for error messages.
    """
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import

    try:
        instruction = tfds.core.ReadInstruction.from_spec(split)
        infos = {
            s: tfds.core.SplitInfo(name=s, shard_lengths=[int(n)], num_bytes=0)
            for s, n in sizes.items()
        }
        absolute = instruction.to_absolute(infos)
    except (ValueError, KeyError, AssertionError) as e:
        raise ValueError(
            f"Bad split {split!r} for {what}: {e}. Available splits: {sorted(sizes)}; "
            "slicing like 'train[:10%]' or 'train[:1000]' is supported."
        ) from e
    out = []
    for a in absolute:
        n = sizes[a.splitname]
        start, stop, _ = slice(a.from_, a.to).indices(n)
        out.append((a.splitname, start, max(start, stop)))
    return out


def permutation_fn(shuffle, seed):
    """``n -> index order``: identity, or a permutation seeded by ``seed``."""
    if not shuffle:
        return np.arange
    return lambda n: np.random.default_rng(np.random.PCG64(seed)).permutation(n)


def split_names(split):
    """Base split names referenced by a split string (``"a[:5]+b"`` -> a, b)."""
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


