"""The ``image_folder`` source: ``ROOT/<split>/<class>/<image>`` files (see simclr_tf.data.datasets)."""

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from simclr_tf.data import image_header
from simclr_tf.data.source import (DatasetInfo, Source, apply_orientation,
                                   decode_image_bytes, resolve_split, split_names)
from simclr_tf.files import atomic_write, is_remote
from simclr_tf.progress import Progress

logger = logging.getLogger(__name__)

IMAGE_FOLDER_NAME = "image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # any case
CACHE_DIR_ENV = "SIMCLR_TF_CACHE_DIR"

_LAYOUT_HELP = (
    "Expected layout: ROOT/<split>/<class>/<image>, e.g. ROOT/train/cat/001.jpg "
    "and ROOT/test/dog/042.png (extensions: " + ", ".join(IMAGE_EXTENSIONS) + ")."
)



def manifest_cache_dir():
    """Directory for image-folder validation manifests.

    ``$SIMCLR_TF_CACHE_DIR`` when set, else ``~/.cache/simclr_tf``. A manifest
    records, per file, its size, modification time and whether it decoded
    (or was too large to try), so that a folder is fully decoded only once.
    """
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "simclr_tf")
    return os.path.join(root, "image_folder_manifests")


def _list_dirs(path):
    if is_remote(path):
        entries = [e.rstrip("/") for e in tf.io.gfile.listdir(path)]
        return sorted(e for e in entries if not e.startswith(".")
                      and tf.io.gfile.isdir(os.path.join(path, e)))
    with os.scandir(path) as it:
        return sorted(e.name for e in it if not e.name.startswith(".")
                      and e.is_dir(follow_symlinks=True))


def _isdir(path):
    return tf.io.gfile.isdir(path) if is_remote(path) else os.path.isdir(path)


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

    if is_remote(class_dir):
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
    progress = Progress("checking image files (once per folder; cached)", len(paths),
                        unit="files")
    for idx, hw in ds.as_numpy_iterator():
        for i, (h, w) in zip(idx.tolist(), hw.tolist()):
            good[i] = (h, w)
        progress.update(len(idx))
    progress.done()
    return good


# Manifest entries: rel path -> [size, mtime_ns, status, [h, w] or None, orientation],
# status "ok" (decoded: its stored size), "bad" (corrupt or empty), "large" (header
# size, not decoded) or "denied" (permission denied: never trusted from the cache,
# since chmod changes neither size nor mtime); orientation is the EXIF tag (1-8).
_MANIFEST_VERSION = 3
_DENIED = object()


def _header(path):
    """``((h, w) or None, orientation)``, or ``_DENIED`` when it may not be read."""
    if not is_remote(path) and not os.access(path, os.R_OK):
        return _DENIED
    try:
        return image_header.read_header(path)
    except PermissionError:
        return _DENIED


def _headers(paths):
    """:func:`_header` of each path (threads: I/O bound, also for gs://)."""
    if len(paths) < 64:
        return [_header(p) for p in paths]
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
        atomic_write(path, json.dumps({"version": _MANIFEST_VERSION,
                                       "split_dir": os.path.abspath(split_dir),
                                       "files": files}))
    except (OSError, tf.errors.OpError) as e:  # read-only home etc.: validation simply reruns next time
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
        rel = os.path.relpath(p, split_dir) if not is_remote(p) else p
        hit = cached.get(rel)
        if size == 0:
            entries[rel] = [size, mtime, "bad", None, 1]
        elif (hit is not None and hit[:2] == [size, mtime] and hit[2] != "denied"
              and (is_remote(p) or os.access(p, os.R_OK))  # chmod keeps size, mtime
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
        rel = os.path.relpath(p, split_dir) if not is_remote(p) else p
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


def image_folder_source(data_dir, split, order=np.arange):
    if not data_dir:
        raise ValueError(
            "Dataset 'image_folder' needs data_dir=ROOT (--data_dir=ROOT). " + _LAYOUT_HELP)
    root = str(data_dir)
    if not _isdir(root):
        raise ValueError(
            f"image_folder root {root!r} does not exist or is not a directory. " + _LAYOUT_HELP)
    split_dirs = _list_dirs(root)
    for name in split_names(split):
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
    for name in dict.fromkeys(split_names(split)):
        scanned[name] = _scan_split(root, name, class_names)
    sizes = {name: len(v[0]) for name, v in scanned.items()}
    pieces = resolve_split(split, sizes, f"image_folder at {root!r}")

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


