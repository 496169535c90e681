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
  ones; they are skipped with a warning and counted in ``info.skipped``.
  Before that, each file's dimensions are read from its header
  (:mod:`simclr_tf.data.image_header`, no decoding) and images above
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

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import tempfile
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf.data import image_header, offline

logger = logging.getLogger(__name__)

OFFLINE_NAME = offline.NAME  # "offline_shapes"
OFFLINE_ALIASES = (OFFLINE_NAME, "offline")
IMAGE_FOLDER_NAME = "image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # any case
CACHE_DIR_ENV = "SIMCLR_TF_CACHE_DIR"

_LAYOUT_HELP = (
    "Expected layout: ROOT/<split>/<class>/<image>, e.g. ROOT/train/cat/001.jpg "
    "and ROOT/test/dog/042.png (extensions: " + ", ".join(IMAGE_EXTENSIONS) + ")."
)


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
        skipped: files skipped as unreadable: corrupt, empty or permission
            denied (image folders only).
        class_names: class names in label order, when known.
        skipped_too_large: files skipped (undecoded) because their header
            gives more pixels than :func:`image_header.max_image_pixels`
            (image folders only).
    """

    name: str
    split: str
    num_examples: int
    num_classes: int
    image_shape: Optional[Tuple[int, int, int]]
    skipped: int = 0
    class_names: Optional[Tuple[str, ...]] = None
    skipped_too_large: int = 0


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
        return _offline_source(split, _permutation_fn(shuffle_files, seed))
    if key.lower() == IMAGE_FOLDER_NAME:
        return _image_folder_source(data_dir, split, _permutation_fn(shuffle_files, seed))
    return _tfds_source(key, split, data_dir, shuffle_files, seed)


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
    values leave the image as it is), as :func:`image_header.read_header`
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


def _resolve_split(split, sizes, what):
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


def _permutation_fn(shuffle, seed):
    """``n -> index order``: identity, or a permutation seeded by ``seed``."""
    if not shuffle:
        return np.arange
    return lambda n: np.random.default_rng(np.random.PCG64(seed)).permutation(n)


def _split_names(split):
    """Base split names referenced by a split string (``"a[:5]+b"`` -> a, b)."""
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


# ---------------------------------------------------------------------------
# offline_shapes
# ---------------------------------------------------------------------------


def _offline_source(split, order=np.arange):
    sizes = {s: n for s, (n, _) in offline.SPLITS.items()}
    pieces = _resolve_split(split, sizes, f"{OFFLINE_NAME!r}")
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
# image_folder
# ---------------------------------------------------------------------------


def manifest_cache_dir():
    """Directory for image-folder validation manifests.

    ``$SIMCLR_TF_CACHE_DIR`` when set, else ``~/.cache/simclr_tf``. A manifest
    records, per file, its size, modification time and whether it decoded
    (or was too large to try), so that a folder is fully decoded only once.
    """
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "simclr_tf")
    return os.path.join(root, "image_folder_manifests")


def _is_remote(path):
    return "://" in path


def _list_dirs(path):
    if _is_remote(path):
        entries = [e.rstrip("/") for e in tf.io.gfile.listdir(path)]
        return sorted(e for e in entries if not e.startswith(".")
                      and tf.io.gfile.isdir(os.path.join(path, e)))
    with os.scandir(path) as it:
        return sorted(e.name for e in it if not e.name.startswith(".")
                      and e.is_dir(follow_symlinks=True))


def _isdir(path):
    return tf.io.gfile.isdir(path) if _is_remote(path) else os.path.isdir(path)


def _is_image_name(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(class_dir, unreadable_dirs=None):
    """Image files below ``class_dir`` as sorted ``[(path, size, mtime_ns)]``.

    Hidden files and folders (``.name``) are ignored. Symbolic links to
    folders are followed, but each real folder is walked once, so a link loop
    (``a/b -> a``) ends. Folders that cannot be listed are appended to
    ``unreadable_dirs``.
    """
    found = []

    def onerror(err):
        if unreadable_dirs is not None:
            unreadable_dirs.append(getattr(err, "filename", None) or str(err))

    if _is_remote(class_dir):
        for dirpath, dirnames, filenames in tf.io.gfile.walk(class_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if _is_image_name(f):
                    p = os.path.join(dirpath, f)
                    st = tf.io.gfile.stat(p)
                    found.append((p, int(st.length), int(st.mtime_nsec)))
    else:
        visited = set()
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True,
                                                    onerror=onerror):
            real = os.path.realpath(dirpath)
            if real in visited:  # reached again through a link: walked already
                dirnames[:] = []
                continue
            visited.add(real)
            dirnames[:] = sorted(  # sorted: the same walk, so the same paths, each time
                d for d in dirnames if not d.startswith(".")
                and os.path.realpath(os.path.join(dirpath, d)) not in visited)
            for f in filenames:
                if _is_image_name(f):
                    p = os.path.join(dirpath, f)
                    try:
                        st = os.stat(p)
                    except OSError:  # dangling link, or vanished since listing
                        continue
                    found.append((p, int(st.st_size), int(st.st_mtime_ns)))
    found.sort()
    return found


def _decode_shapes(paths):
    """Decodes ``paths`` in parallel; returns ``{index: (h, w)}`` of the good ones."""
    if not paths:
        return {}
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(paths)))
    ds = ds.map(
        lambda i, p: (i, tf.shape(decode_image_bytes(tf.io.read_file(p)))[:2]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ds = ds.ignore_errors().batch(1024)
    good = {}
    for idx, hw in ds.as_numpy_iterator():
        for i, (h, w) in zip(idx.tolist(), hw.tolist()):
            good[i] = (h, w)
    return good


# Manifest entries: rel path -> [size, mtime_ns, status, [h, w] or None, orientation],
# status "ok" (decoded: its stored size), "bad" (corrupt or empty), "large" (header
# size, not decoded) or "denied" (permission denied: never trusted from the cache,
# since chmod changes neither size nor mtime); orientation is the EXIF tag (1-8).
_MANIFEST_VERSION = 3
_DENIED = object()


def _header(path):
    """``((h, w) or None, orientation)``, or ``_DENIED`` when it may not be read."""
    if not _is_remote(path) and not os.access(path, os.R_OK):
        return _DENIED
    try:
        return image_header.read_header(path)
    except PermissionError:
        return _DENIED


def _headers(paths):
    """:func:`_header` of each path (threads: I/O bound, also for gs://)."""
    if len(paths) < 64:
        return [_header(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(_header, paths, chunksize=64))


def _displayed(hw, orientation):
    """The displayed ``(h, w)`` of stored size ``hw``: 5-8 swap the sides."""
    return (hw[1], hw[0]) if orientation in (5, 6, 7, 8) else tuple(hw)


def _manifest_path(split_dir):
    digest = hashlib.sha1(os.path.abspath(split_dir).encode("utf-8")).hexdigest()[:20]
    return os.path.join(manifest_cache_dir(), f"{digest}.json")


def _read_manifest(path, split_dir):
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        if data.get("split_dir") != os.path.abspath(split_dir) or data.get("version") != _MANIFEST_VERSION:
            return {}
        return data.get("files", {})
    except (OSError, ValueError):
        return {}


def _write_manifest(path, split_dir, files):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": _MANIFEST_VERSION, "split_dir": os.path.abspath(split_dir), "files": files}, f)
        os.replace(tmp, path)
    except OSError as e:  # read-only home etc.: validation simply reruns next time
        logger.info("Could not write the image-folder manifest %s: %s", path, e)


def _scan_split(root, split_name, class_names):
    """Lists and validates one split folder.

    Returns ``(files, labels, shapes, bad, large, orientations, denied,
    denied_dirs)``:
    the good files in sorted (class, path) order, their labels, their
    displayed ``(h, w)``, the corrupt or empty paths, the paths of images above
    the pixel limit (never decoded), the good files' EXIF orientations, the
    files that may not be read and the folders that may not be listed.
    """
    limit = image_header.max_image_pixels()

    def too_large(hw):
        return limit > 0 and hw is not None and hw[0] * hw[1] > limit

    split_dir = os.path.join(root, split_name)
    candidates = []  # (path, size, mtime, label)
    denied_dirs = []
    for label, cls in enumerate(class_names):
        class_dir = os.path.join(split_dir, cls)
        if not _isdir(class_dir):
            continue
        candidates += [(p, s, m, label) for p, s, m in _list_images(class_dir, denied_dirs)]
    if not candidates and denied_dirs:
        raise ValueError(
            f"No images could be listed in {split_dir!r} for dataset 'image_folder': "
            f"permission denied for {denied_dirs[:5]}. Make the folders readable "
            "(chmod -R a+rX) or run as their owner.")
    if not candidates:
        raise ValueError(
            f"No images found in {split_dir!r} for dataset 'image_folder'. " + _LAYOUT_HELP)

    manifest_file = _manifest_path(split_dir)
    cached = _read_manifest(manifest_file, split_dir)
    entries = {}
    to_check = []
    for p, size, mtime, _ in candidates:
        rel = os.path.relpath(p, split_dir) if not _is_remote(p) else p
        hit = cached.get(rel)
        if size == 0:
            entries[rel] = [size, mtime, "bad", None, 1]
        elif (hit is not None and hit[:2] == [size, mtime] and hit[2] != "denied"
              and (_is_remote(p) or os.access(p, os.R_OK))  # chmod keeps size, mtime
              and not (hit[2] == "large" and not too_large(hit[3]))):  # limit raised
            entries[rel] = hit
        else:
            to_check.append((rel, p, size, mtime))
    if to_check:
        if len(to_check) > 1000:
            logger.info("image_folder: checking %d images in %s once (cached in %s).",
                        len(to_check), split_dir, manifest_file)
        headers = _headers([p for _, p, _, _ in to_check])
        decode = [i for i, h in enumerate(headers)
                  if h is not _DENIED and not too_large(h[0])]
        good = _decode_shapes([to_check[i][1] for i in decode])
        decoded = {i: good.get(k) for k, i in enumerate(decode)}
        for i, (rel, _, size, mtime) in enumerate(to_check):
            if headers[i] is _DENIED:
                entries[rel] = [size, mtime, "denied", None, 1]
            elif i not in decoded:
                entries[rel] = [size, mtime, "large", list(headers[i][0]), 1]
            elif decoded[i] is None:
                entries[rel] = [size, mtime, "bad", None, 1]
            else:
                entries[rel] = [size, mtime, "ok", list(decoded[i]), int(headers[i][1])]
        _write_manifest(manifest_file, split_dir, entries)

    files, labels, shapes, bad, large, orientations = [], [], [], [], [], []
    denied = []
    for p, _, _, label in candidates:
        rel = os.path.relpath(p, split_dir) if not _is_remote(p) else p
        _, _, status, hw, orientation = entries[rel]
        if status == "bad":
            bad.append(p)
        elif status == "denied":
            denied.append(p)
        elif status == "large" or too_large(hw):  # also when the limit was lowered
            large.append(p)
        else:
            files.append(p)
            labels.append(label)
            shapes.append(_displayed(hw, orientation))
            orientations.append(orientation)
    return files, labels, shapes, bad, large, orientations, denied, denied_dirs


def _image_folder_source(data_dir, split, order=np.arange):
    if not data_dir:
        raise ValueError(
            "Dataset 'image_folder' needs data_dir=ROOT (--data_dir=ROOT). " + _LAYOUT_HELP)
    root = str(data_dir)
    if not _isdir(root):
        raise ValueError(
            f"image_folder root {root!r} does not exist or is not a directory. " + _LAYOUT_HELP)
    split_dirs = _list_dirs(root)
    for name in _split_names(split):
        if name not in split_dirs:
            raise ValueError(
                f"Split folder {os.path.join(root, name)!r} not found for dataset "
                f"'image_folder' (split {split!r}); found split folders {split_dirs}. "
                + _LAYOUT_HELP)
    class_set = set()
    for s in split_dirs:
        class_set.update(_list_dirs(os.path.join(root, s)))
    class_names = tuple(sorted(class_set))
    if not class_names:
        raise ValueError(
            f"No class folders found under {root!r} for dataset 'image_folder'. " + _LAYOUT_HELP)

    scanned = {}
    for name in dict.fromkeys(_split_names(split)):
        scanned[name] = _scan_split(root, name, class_names)
    sizes = {name: len(v[0]) for name, v in scanned.items()}
    pieces = _resolve_split(split, sizes, f"image_folder at {root!r}")

    files, labels, shapes, orientations = [], [], [], []
    for name, start, stop in pieces:
        f, l, s, _, _, o, _, _ = scanned[name]
        files += f[start:stop]
        labels += l[start:stop]
        shapes += s[start:stop]
        orientations += o[start:stop]
    denied = [p for v in scanned.values() for p in v[6]]
    denied_dirs = [p for v in scanned.values() for p in v[7]]
    if denied or denied_dirs:
        examples = ", ".join(repr(p) for p in (denied_dirs + denied)[:5])
        logger.warning(
            "image_folder: skipped %d file(s) or folder(s) that may not be read "
            "(permission denied) under %r, e.g. %s%s; make them readable "
            "(chmod -R a+rX) and they are used on the next load.",
            len(denied) + len(denied_dirs), root, examples,
            " ..." if len(denied) + len(denied_dirs) > 5 else "")
    bad = [p for v in scanned.values() for p in v[3]]
    if bad:
        examples = ", ".join(repr(p) for p in bad[:5])
        logger.warning(
            "image_folder: skipped %d unreadable image file(s) (corrupt, empty, or a "
            "variant TensorFlow cannot decode such as animated WebP) under %r, "
            "e.g. %s%s", len(bad), root, examples, " ..." if len(bad) > 5 else "")
    large = [p for v in scanned.values() for p in v[4]]
    if large:
        examples = ", ".join(repr(p) for p in large[:5])
        logger.warning(
            "image_folder: skipped %d image file(s) above the limit of %d pixels "
            "(skipped_too_large; raise it with %s=PIXELS, 0 for none) under %r, e.g. %s%s",
            len(large), image_header.max_image_pixels(), image_header.MAX_PIXELS_ENV,
            root, examples, " ..." if len(large) > 5 else "")
    if not files:
        raise ValueError(
            f"Split {split!r} of image_folder {root!r} has no readable images "
            f"({len(bad)} corrupt or empty, {len(denied)} permission denied, "
            f"{len(large)} above the pixel limit). " + _LAYOUT_HELP)
    unique_shapes = set(shapes)
    image_shape = (*unique_shapes.pop(), 3) if len(unique_shapes) == 1 else None
    info = DatasetInfo(
        name=IMAGE_FOLDER_NAME,
        split=split,
        num_examples=len(files),
        num_classes=len(class_names),
        image_shape=image_shape,
        skipped=len(bad) + len(denied),
        class_names=class_names,
        skipped_too_large=len(large),
    )
    perm = order(len(files))
    columns = {
        "path": tf.constant([files[i] for i in perm], tf.string),
        "label": tf.constant([labels[i] for i in perm], tf.int64),
    }
    decode = _decode_file_record
    if any(o != 1 for o in orientations):  # else the decode stays as plain as before
        columns["orientation"] = tf.constant([orientations[i] for i in perm], tf.int32)
        decode = _decode_oriented_file_record
    records = tf.data.Dataset.from_tensor_slices(columns)
    return Source(records=records, decode=decode, info=info, cheap_records=True)


def _decode_file_record(record):
    return {"image": decode_image_bytes(tf.io.read_file(record["path"])),
            "label": record["label"]}


def _decode_oriented_file_record(record):
    image = decode_image_bytes(tf.io.read_file(record["path"]))
    return {"image": apply_orientation(image, record["orientation"]),
            "label": record["label"]}


# ---------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------


def _unknown_name_error(name, cause):
    import tensorflow_datasets as tfds

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
    import tensorflow_datasets as tfds

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
    import tensorflow_datasets as tfds

    items = dict(features.items())
    images = [k for k, f in items.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in items.items() if isinstance(f, tfds.features.ClassLabel)]
    image_key = "image" if "image" in images else (images[0] if images else None)
    label_key = "label" if "label" in labels else (labels[0] if labels else None)
    return image_key, label_key


def _tfds_source(name, split, data_dir, shuffle_files, seed):
    import tensorflow_datasets as tfds

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
    )
    return Source(records=records, decode=decode, info=info, cheap_records=False)
