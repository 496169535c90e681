"""Image datasets for SimCLR: TFDS, an image folder, or the built-in offline set.

:func:`load` returns a ``tf.data.Dataset`` of ``dict(image=uint8 [H, W, 3],
label=int64 [])`` plus a :class:`DatasetInfo`, whatever the source:

* ``"offline_shapes"`` (alias ``"offline"``, the default of the package):
  generated in memory by :mod:`simclr_tf.data.offline`; no files, no network.
* ``"image_folder"``: ``data_dir=ROOT`` holding ``ROOT/<split>/<class>/<image>``
  (the ``tfds.folder_dataset.ImageFolder`` layout). JPEG, PNG (8 or 16 bit,
  gray, RGB, RGBA), BMP, GIF and WebP files of any size are decoded to RGB
  ``uint8`` (alpha is dropped, 16-bit is scaled down, CMYK JPEG is converted,
  animated GIF gives its first frame, a JPEG's EXIF orientation is
  applied so the image appears as the camera meant). Extensions match in any
  case (``.JPG``); files and folders whose names start with ``.`` are
  ignored; symbolic links are followed, each real folder once (a link loop
  ends). Files that may not be read (permission denied) are skipped with a
  warning and counted in ``info.skipped``, and checked again on the next
  load. Animated WebP files are skipped as unreadable: TensorFlow 2.21
  decodes them only as 4-channel frame stacks (``decode_image(channels=3)``
  refuses them, and ``decode_webp(channels=0)`` corrupts memory on them), so
  convert them to a still format first. The class
  index is the position of the class-folder name in the sorted union of the
  class folders of all splits under ``ROOT`` (so train and test agree even when
  one lacks a class). Every file is decoded once to find corrupt or empty
  ones; they are skipped with a warning and counted in ``info.skipped``, as
  are files whose path is not valid UTF-8 (TensorFlow cannot open them). A
  file that goes bad after the scan (deleted, truncated, overwritten) does not
  stop a run: a blank image labelled -1 stands in for it, with a warning,
  and :func:`simclr_tf.data.image_folder.mid_run_skipped` counts it.
  Before that, each file's dimensions are read from its header
  (by Pillow, no decoding; :mod:`simclr_tf.data.image_folder`) and images above
  ``$SIMCLR_TF_MAX_IMAGE_PIXELS`` (default 50 megapixels; 0: no limit) are
  skipped undecoded, with a warning, and counted in
  ``info.skipped_too_large``: a decompression bomb never reaches a decoder.
  The result is cached (see :func:`manifest_cache_dir`) and re-checked only
  for files whose size or modification time changed.
* any other name is a TFDS image dataset (``cifar10``, ``cifar100``,
  ``stl10`` incl. its ``unlabelled`` split, ``imagenet2012``, ``imagenette``,
  ``mnist`` ...), loaded with ``tfds.builder(name, data_dir=...)``,
  ``download_and_prepare()`` and ``as_dataset()``. Gray images become RGB.
  Splits without labels (e.g. ``stl10``'s ``unlabelled``) yield ``label=-1``.

``split`` accepts the TFDS split syntax for every source, e.g. ``"train[:10%]"``
or ``"train[:1000]+test"``.

Example:
    >>> from simclr_tf.data import datasets
    >>> ds, info = datasets.load("offline_shapes", "test")
    >>> info.num_examples, info.num_classes, info.image_shape
    (2000, 10, (32, 32, 3))
    >>> ex = next(iter(ds))
    >>> ex["image"].dtype, ex["label"].dtype
    (tf.uint8, tf.int64)

The input pipelines in :mod:`simclr_tf.data.pipeline` build on
:func:`open_source`, which returns the same data as a cheap-to-shuffle record
stream plus a decode function, so that shuffling happens before decoding.
"""


import difflib
import os
import logging

import numpy as np
import tensorflow as tf

from simclr_tf.data import offline
# The image-folder names and the shared types, importable from here as before.
from simclr_tf.data.image_folder import (  # noqa: F401
    CACHE_DIR_ENV, IMAGE_EXTENSIONS, IMAGE_FOLDER_NAME, image_folder_source, manifest_cache_dir)
from simclr_tf.data.source import (  # noqa: F401
    DatasetInfo, Source, decode_image_bytes, permutation_fn, resolve_split, split_names,
    to_rgb_uint8)

logger = logging.getLogger(__name__)

OFFLINE_NAME = offline.NAME  # "offline_shapes"
OFFLINE_ALIASES = (OFFLINE_NAME, "offline")


def load(name, split, data_dir=None, shuffle_files=False, seed=0):
    """Loads one split of a dataset as decoded RGB ``uint8`` images.

    Args:
        name: ``"offline_shapes"`` (or ``"offline"``), ``"image_folder"`` or a
            TFDS dataset name (optionally with config/version,
            ``"imagenet2012_subset/10pct"``).
        split: split string; TFDS slicing syntax works for every source
            (``"train[:10%]"``, ``"train[:500]+test"``).
        data_dir: TFDS data directory, or ``ROOT`` for ``"image_folder"``
            (required there). Ignored by ``offline_shapes``.
        shuffle_files: shuffle the input order deterministically from ``seed``
            (TFDS: file order; other sources: example order). The training
            pipeline shuffles by itself and leaves this off.
        seed: seed for ``shuffle_files``.

    Returns:
        ``(ds, info)``: a ``tf.data.Dataset`` yielding ``dict(image=uint8
        [H, W, 3], label=int64 [])`` (``label=-1`` when the split has no
        labels) and a :class:`DatasetInfo`.

    Raises:
        ValueError: unknown dataset name, missing/empty image folder, unknown
            split, or a bad split string.
    """
    source = open_source(name, split, data_dir=data_dir, shuffle_files=shuffle_files, seed=seed)
    ds = source.records.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds, source.info


def open_source(name, split, data_dir=None, shuffle_files=False, seed=0):
    """Opens a split as a :class:`Source` (records + decode function + info).

    Same arguments as :func:`load`. Used by :mod:`simclr_tf.data.pipeline`.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Dataset name must be a non-empty string, got {name!r}.")
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"Split must be a non-empty string such as 'train', got {split!r}.")
    key = name.strip()
    if key.lower() in OFFLINE_ALIASES:
        return _offline_source(split, permutation_fn(shuffle_files, seed))
    if key.lower() == IMAGE_FOLDER_NAME:
        return image_folder_source(data_dir, split, permutation_fn(shuffle_files, seed))
    return _tfds_source(key, split, data_dir, shuffle_files, seed)


# ---------------------------------------------------------------------------
# offline_shapes
# ---------------------------------------------------------------------------


def _offline_source(split, order=np.arange):
    sizes = {s: n for s, (n, _) in offline.SPLITS.items()}
    pieces = resolve_split(split, sizes, f"{OFFLINE_NAME!r}")
    images, labels = [], []
    for name, start, stop in pieces:
        x, y = offline.generate(name)
        images.append(x[start:stop])
        labels.append(y[start:stop])
    images = np.concatenate(images, axis=0)
    labels = np.concatenate(labels, axis=0).astype(np.int64)
    perm = order(len(labels))
    images, labels = images[perm], labels[perm]
    info = DatasetInfo(
        name=OFFLINE_NAME,
        split=split,
        num_examples=int(images.shape[0]),
        num_classes=offline.NUM_CLASSES,
        image_shape=(offline.IMAGE_SIZE, offline.IMAGE_SIZE, 3),
        skipped=0,
        class_names=tuple(offline.CLASS_NAMES),
    )
    records = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    return Source(records=records, decode=_identity_decode, info=info, cheap_records=True)


def _identity_decode(record):
    return {"image": record["image"], "label": record["label"]}


# ---------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------


def _unknown_name_error(name, cause):
    import tensorflow_datasets as tfds  # slow to import: only for TFDS datasets

    try:
        known = list(tfds.list_builders(with_community_datasets=False))
    except Exception:  # pragma: no cover - listing is best effort
        known = []
    close = difflib.get_close_matches(
        name.lower(), [OFFLINE_NAME, IMAGE_FOLDER_NAME] + known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"Unknown dataset {name!r}: it is neither a built-in dataset nor a TFDS dataset.{hint} "
        f"Use {OFFLINE_NAME!r} (built-in, no download), {IMAGE_FOLDER_NAME!r} with "
        "data_dir=ROOT holding ROOT/<split>/<class>/<image>, or a TFDS image dataset name "
        "such as 'cifar10', 'cifar100', 'stl10' or 'imagenet2012' "
        "(catalog: https://www.tensorflow.org/datasets/catalog/overview). "
        f"(TFDS said: {str(cause).splitlines()[0]})"
    )


def _check_tfds_name(name, data_dir):
    """Rejects unknown TFDS names offline (``tfds.builder`` may query GCS first).

    A name passes when it is registered in the installed TFDS, is already
    prepared under ``data_dir`` (or ``$TFDS_DATA_DIR``, default
    ``~/tensorflow_datasets``), or has a community namespace (``ns:name``),
    which only TFDS itself can resolve.
    """
    import tensorflow_datasets as tfds  # slow to import: only for TFDS datasets

    try:
        ds_name, _ = tfds.core.naming.parse_builder_name_kwargs(name)
    except (ValueError, TypeError) as e:
        raise _unknown_name_error(name, e) from None
    if ds_name.namespace:
        return
    if ds_name.name in tfds.list_builders(with_community_datasets=False):
        return
    roots = [data_dir] if data_dir else []
    roots.append(os.environ.get("TFDS_DATA_DIR")
                 or os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))
    for root in roots:
        if tf.io.gfile.isdir(os.path.join(str(root), ds_name.name)):
            return
    raise _unknown_name_error(name, f"Dataset {ds_name.name} not found.")


def _find_features(features):
    """Returns ``(image_key, label_key or None)`` of a TFDS FeaturesDict."""
    import tensorflow_datasets as tfds  # slow to import: only for TFDS datasets

    items = dict(features.items())
    images = [k for k, f in items.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in items.items() if isinstance(f, tfds.features.ClassLabel)]
    image_key = "image" if "image" in images else (images[0] if images else None)
    label_key = "label" if "label" in labels else (labels[0] if labels else None)
    return image_key, label_key


def _tfds_source(name, split, data_dir, shuffle_files, seed):
    import tensorflow_datasets as tfds  # slow to import: only for TFDS datasets

    _check_tfds_name(name, data_dir)
    not_found = tfds.core.registered.DatasetNotFoundError
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except not_found as e:
        raise _unknown_name_error(name, e) from None
    features = builder.info.features
    image_key, label_key = _find_features(features)
    if image_key is None:
        raise ValueError(
            f"TFDS dataset {name!r} has no top-level image feature (features: "
            f"{list(features.keys())}); simclr_tf needs an image dataset.")
    builder.download_and_prepare()

    # Read only the image (still encoded: cheap to shuffle) and the label.
    wanted = {image_key: True}
    if label_key is not None:
        wanted[label_key] = True
    decoders = tfds.decode.PartialDecoding(
        wanted, decoders={image_key: tfds.decode.SkipDecoding()})
    read_config = tfds.ReadConfig(shuffle_seed=seed) if shuffle_files else None
    try:
        ds = builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            decoders=decoders,
            read_config=read_config,
        )
    except (ValueError, KeyError) as e:
        available = sorted(builder.info.splits.keys()) if builder.info.splits else "unknown"
        raise ValueError(
            f"Cannot read split {split!r} of TFDS dataset {name!r}: {e}. "
            f"Available splits: {available}.") from e

    try:
        num_examples = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):
        # Split info not recorded (e.g. under tfds.testing.mock_data): ask tf.data.
        num_examples = int(ds.cardinality())
        if num_examples < 0:
            num_examples = int(ds.reduce(np.int64(0), lambda c, _: c + 1))

    image_feature = features[image_key]
    shape = tuple(image_feature.shape)
    image_shape = (int(shape[0]), int(shape[1]), 3) if None not in shape[:2] else None
    if label_key is not None:
        num_classes = int(features[label_key].num_classes)
        class_names = tuple(features[label_key].names)
    else:
        num_classes, class_names = 0, None

    def to_record(ex):
        label = (tf.cast(ex[label_key], tf.int64) if label_key is not None
                 else tf.constant(-1, tf.int64))
        return {"image": ex[image_key], "label": label}

    def decode(record):
        image = image_feature.decode_example(record["image"])
        return {"image": to_rgb_uint8(image), "label": record["label"]}

    records = ds.map(to_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    info = DatasetInfo(
        name=name,
        split=split,
        num_examples=num_examples,
        num_classes=num_classes,
        image_shape=image_shape,
        skipped=0,
        class_names=class_names,
        version=str(builder.info.version),
    )
    return Source(records=records, decode=decode, info=info, cheap_records=False)
