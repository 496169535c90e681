"""The ``image_folder`` source: ``ROOT/<split>/<class>/<image>`` files (see simclr_tf.data.datasets).

A split is scanned once and the result cached in a manifest: each file's
header is read (size, EXIF orientation; no pixels), files above
:func:`max_image_pixels` are skipped undecoded, and TensorFlow decodes the
others once to find the corrupt ones and the variants it cannot decode.

Headers are read by :mod:`simclr_tf.data.image_headers`.
"""

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

from simclr_tf.data.image_headers import _open, read_header
from simclr_tf.data.source import (DatasetInfo, Source, apply_orientation,
                                   decode_image_bytes, resolve_split, split_names)
from simclr_tf.errors import ConfigError
from simclr_tf.files import atomic_write, is_remote
from simclr_tf.progress import Progress

logger = logging.getLogger(__name__)

IMAGE_FOLDER_NAME = "image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # any case
CACHE_DIR_ENV = "SIMCLR_TF_CACHE_DIR"
MAX_PIXELS_ENV = "SIMCLR_TF_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000
# Pillow's names for the formats of IMAGE_EXTENSIONS (MPO, the multi-picture
# JPEG of some cameras, is opened by the JPEG plugin).

_LAYOUT_HELP = (
    "Expected layout: ROOT/<split>/<class>/<image>, e.g. ROOT/train/cat/001.jpg "
    "and ROOT/test/dog/042.png (extensions: " + ", ".join(IMAGE_EXTENSIONS) + ")."
)


def max_image_pixels():
    """The pixel limit (height x width) for image-folder images; 0 means none.

    ``$SIMCLR_TF_MAX_IMAGE_PIXELS`` when set, else 50 million. Pillow, which
    reads the headers, refuses to describe images above its own guard
    (``2 * PIL.Image.MAX_IMAGE_PIXELS``, 179 million pixels by default): such
    files count as above any limit but 0 (raise ``PIL.Image.MAX_IMAGE_PIXELS``
    as well to admit them under a higher limit).
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        number = float(raw)  # also "5e7"; "inf" and "nan" are refused below
    except ValueError:
        number = -1.0
    if not (number >= 0 and number.is_integer()):  # negative, fractional, inf, nan
        raise ConfigError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count: set it to a whole number "
            f"such as {DEFAULT_MAX_PIXELS} (height x width), or 0 for no limit.")
    return int(number)


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


def _is_utf8(path):
    """Whether ``path`` is valid UTF-8 (os.walk gives other bytes as lone surrogates)."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _shown(path):
    """``path`` for a message: as bytes when it is not valid UTF-8."""
    return repr(path) if _is_utf8(path) else repr(os.fsencode(path))


def _printable(path):
    """``path`` as text that JSON and CSV can hold (bytes that are not UTF-8 escaped)."""
    return path if _is_utf8(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


_warned = set()  # the skip warnings given in this process: a run reads a folder several times


def _warn_skipped(paths, what, root, fix=None, show=repr):
    """One warning for the files of a kind the scan skipped: how many, a few of them, the fix.

    Given once per process for the same files: the training stream, the
    evaluation and the views grid each read the folder, and one warning says it.
    """
    if not paths:
        return
    key = (root, what, tuple(paths))
    if key in _warned:
        return
    _warned.add(key)
    examples = ", ".join(show(p) for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
    logger.warning("image_folder: skipped %d %s under %r, e.g. %s%s", len(paths), what, root,
                   examples, f"; {fix}." if fix else "")


_DECODE_GROUP = 32  # files decoded one after the other by one tf.data element


def _decode_shapes(paths):
    """Decodes ``paths`` in parallel; returns ``{index: (h, w)}`` of the good ones.

    Files go in groups of :data:`_DECODE_GROUP` through one ``tf.data`` map
    call each (a ``tf.map_fn`` over the group): tf.data's cost per element was
    as large as the decode of a small JPEG, and groups share it. A group
    holding a file that fails is dropped whole by ``ignore_errors``; its files
    are then decoded one per element, as before groups, so each file gets its
    own verdict. Both passes run the same decode as training does.
    """
    if not paths:
        return {}
    progress = Progress("checking image files (once per folder; cached)", len(paths),
                        unit="files")
    good = {}

    def shape_of(path):
        return tf.shape(decode_image_bytes(tf.io.read_file(path)))[:2]

    group = _DECODE_GROUP
    groups = tf.data.Dataset.from_tensor_slices(tf.constant(paths)).batch(group).enumerate()
    groups = groups.map(
        lambda g, ps: (g, tf.map_fn(shape_of, ps, fn_output_signature=tf.int32,
                                    parallel_iterations=1)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    for g, hw in groups.as_numpy_iterator():
        first = int(g) * group
        good.update(zip(range(first, first + len(hw)), map(tuple, hw.tolist())))
        progress.update(len(hw))
    failed = [i for i in range(len(paths)) if i not in good]  # files of the dropped groups
    if failed:
        singles = tf.data.Dataset.from_tensor_slices(
            (tf.constant(failed, tf.int64), tf.constant([paths[i] for i in failed])))
        singles = singles.map(lambda i, p: (i, shape_of(p)),
                              num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=False).ignore_errors().batch(1024)
        for idx, hw in singles.as_numpy_iterator():
            good.update(zip(idx.tolist(), map(tuple, hw.tolist())))
        progress.update(len(failed))
    progress.done()
    return good


class ManifestRow(NamedTuple):
    """One file's line in a split's manifest (a JSON array on disk).

    ``status`` is "ok" (decoded: ``hw`` is its stored size), "bad" (corrupt,
    empty or not decodable by TensorFlow), "large" (above the pixel limit, not
    decoded: ``hw`` from the header, None when Pillow refused it as a bomb) or
    "denied" (permission denied: never trusted from the cache, since chmod
    changes neither size nor mtime); ``orientation`` is the EXIF tag (1-8).
    """

    size: int
    mtime_ns: int
    status: str
    hw: Optional[Tuple[int, int]]
    orientation: int


# Version 3 is also what the hand-written header parser wrote before Pillow
# read the headers: the same rows, so those manifests are reused as they are.
_MANIFEST_VERSION = 3
_DENIED = object()
_STATUSES = ("ok", "bad", "large", "denied")


def _header(path):
    """:func:`read_header`, or ``_DENIED`` when the file may not be read."""
    if not is_remote(path) and not os.access(path, os.R_OK):
        return _DENIED
    try:
        return read_header(path)
    except PermissionError:
        return _DENIED


_PROBE_FILES = 256  # headers read in this thread first, to see whether they wait for I/O


def _headers(paths):
    """:func:`_header` of each path: in this thread while reads are quick, else in 16 threads.

    A header read from a local disk or the page cache is ~20 us of Python:
    threads would only contend for the GIL (2-5x the CPU, measured on 2
    cores). A read from gs:// or a slow mount (a network file system, Google
    Drive on Colab) waits milliseconds for I/O, which threads overlap. So the
    first :data:`_PROBE_FILES` local headers are read here and timed; the rest
    go to threads when those mostly waited. The result is the same either way.
    """
    if len(paths) < 64:
        return [_header(p) for p in paths]
    done = []
    if not any(is_remote(p) for p in paths):
        wall, cpu = time.perf_counter(), time.thread_time()
        done = [_header(p) for p in paths[:_PROBE_FILES]]
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        if wall < max(3 * cpu, 100e-6 * len(done)):  # not waiting for the disk
            return done + [_header(p) for p in paths[len(done):]]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return done + list(pool.map(_header, paths[len(done):], chunksize=64))


def _displayed(hw, orientation):
    """The displayed ``(h, w)`` of stored size ``hw``: 5-8 swap the sides."""
    return (hw[1], hw[0]) if orientation in (5, 6, 7, 8) else tuple(hw)


def _manifest_path(split_dir):
    digest = hashlib.sha1(os.path.abspath(split_dir).encode("utf-8")).hexdigest()[:20]
    return os.path.join(manifest_cache_dir(), f"{digest}.json")


def _manifest_row(raw):
    """A :class:`ManifestRow` from its JSON array; ValueError when malformed."""
    if not isinstance(raw, list) or len(raw) != len(ManifestRow._fields):
        raise ValueError(f"not a manifest row: {raw!r}")
    size, mtime_ns, status, hw, orientation = raw
    if status not in _STATUSES or not (hw is None or len(hw) == 2):
        raise ValueError(f"not a manifest row: {raw!r}")
    return ManifestRow(int(size), int(mtime_ns), status,
                       None if hw is None else (int(hw[0]), int(hw[1])), int(orientation))


def _read_manifest(path, split_dir):
    """``{rel path: ManifestRow}`` cached for ``split_dir``; {} when none or unusable."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        if data.get("split_dir") != os.path.abspath(split_dir) or data.get("version") != _MANIFEST_VERSION:
            return {}
        return {rel: _manifest_row(raw) for rel, raw in data.get("files", {}).items()}
    except (OSError, ValueError, TypeError, AttributeError):  # damaged: scanned again
        return {}


def _write_manifest(path, split_dir, files):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, json.dumps({"version": _MANIFEST_VERSION,
                                       "split_dir": os.path.abspath(split_dir),
                                       "files": files}))
    except (OSError, tf.errors.OpError) as e:  # read-only home etc.: validation simply reruns next time
        logger.info("Could not write the image-folder manifest %s: %s", path, e)


@dataclasses.dataclass
class SplitScan:
    """One split folder, listed and validated by :func:`_scan_split`.

    ``files`` are the good images in sorted (class, path) order, with their
    ``labels``, displayed ``(h, w)`` ``shapes`` and EXIF ``orientations``;
    ``bad`` are corrupt, empty or undecodable files, ``large`` the images above
    the pixel limit (never decoded), ``denied`` the files and ``denied_dirs``
    the folders that may not be read, ``bad_names`` the image files whose
    path is not valid UTF-8 (TensorFlow cannot open them), ``missing`` the
    files an image list names that do not exist.
    """

    files: list
    labels: list
    shapes: list
    orientations: list
    bad: list
    large: list
    denied: list
    denied_dirs: list
    bad_names: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)  # listed, but not there


def _scan_split(root, split_name, class_names):
    """Lists and validates one split folder; returns a :class:`SplitScan`."""
    split_dir = os.path.join(root, split_name)
    candidates = []  # (path, size, mtime, label)
    denied_dirs = []
    for label, cls in enumerate(class_names):
        class_dir = os.path.join(split_dir, cls)
        if not _isdir(class_dir):
            continue
        candidates += [(p, s, m, label) for p, s, m in _list_images(class_dir, denied_dirs)]
    return _check_files(candidates, split_dir, denied_dirs, "for dataset 'image_folder'",
                        _LAYOUT_HELP)


def _relative_paths(paths, split_dir):
    """The manifest keys of ``paths``: ``os.path.relpath(p, split_dir)``, remote paths as they are.

    A listed file's path is ``split_dir/<rest>`` as written, so its key is
    ``rest`` when that is already normal; ``relpath`` (16 us a call, a
    tenth of the scan of small files) is called only for the others.
    """
    prefix = os.path.join(split_dir, "")
    keys = []
    for p in paths:
        if is_remote(p):
            keys.append(p)
            continue
        rest = p[len(prefix):] if p.startswith(prefix) else ""
        keys.append(rest if rest and os.path.normpath(rest) == rest
                    else os.path.relpath(p, split_dir))
    return keys


def _check_files(candidates, split_dir, denied_dirs, what, empty_help):
    """Validates listed ``(path, size, mtime, label)`` files; returns a :class:`SplitScan`.

    ``split_dir`` names the manifest and the messages (manifest rows are
    paths relative to it); ``what`` and ``empty_help`` complete the errors
    when nothing could be listed.
    """
    limit = max_image_pixels()

    def too_large(hw):
        """Whether a stored size is above the limit; None: refused by Pillow as a bomb."""
        if limit <= 0:
            return False
        return hw is None or hw[0] * hw[1] > limit

    bad_names = [c[0] for c in candidates if not _is_utf8(c[0])]
    if bad_names:  # a str tensor of such a path fails, for the whole folder
        candidates = [c for c in candidates if _is_utf8(c[0])]
    if not candidates and denied_dirs:
        raise ValueError(
            f"No images could be listed in {split_dir!r} {what}: permission denied for "
            f"{denied_dirs[:5]}. Make the folders readable (chmod -R a+rX) or run as "
            "their owner.")
    if not candidates and not bad_names:
        raise ValueError(f"No images found in {split_dir!r} {what}. {empty_help}")

    manifest_file = _manifest_path(split_dir)
    cached = _read_manifest(manifest_file, split_dir)
    entries = {}
    to_check = []
    rels = _relative_paths([c[0] for c in candidates], split_dir)
    for (p, size, mtime, _), rel in zip(candidates, rels):
        hit = cached.get(rel)
        if size == 0:
            entries[rel] = ManifestRow(size, mtime, "bad", None, 1)
        elif (hit is not None and (hit.size, hit.mtime_ns) == (size, mtime)
              and hit.status != "denied"
              and (is_remote(p) or os.access(p, os.R_OK))  # chmod keeps size, mtime
              and not (hit.status == "large" and not too_large(hit.hw))):  # limit raised
            entries[rel] = hit
        else:
            to_check.append((rel, p, size, mtime))
    if to_check:
        if len(to_check) > 1000:
            logger.info("image_folder: checking %d images in %s once (cached in %s).",
                        len(to_check), split_dir, manifest_file)
        headers = _headers([p for _, p, _, _ in to_check])

        def header_too_large(h):  # a size not read (hw None) is left to the decoder
            return (h.hw is not None or h.over_pillow_limit) and too_large(h.hw)

        decode = [i for i, h in enumerate(headers)
                  if h is not _DENIED and not header_too_large(h)]
        good = _decode_shapes([to_check[i][1] for i in decode])
        decoded = {i: good.get(k) for k, i in enumerate(decode)}
        for i, (rel, _, size, mtime) in enumerate(to_check):
            h = headers[i]
            if h is _DENIED:
                entries[rel] = ManifestRow(size, mtime, "denied", None, 1)
            elif i not in decoded:
                entries[rel] = ManifestRow(size, mtime, "large", h.hw, 1)
            elif decoded[i] is None:
                entries[rel] = ManifestRow(size, mtime, "bad", None, 1)
            else:
                entries[rel] = ManifestRow(size, mtime, "ok", tuple(decoded[i]),
                                           int(h.orientation))
        _write_manifest(manifest_file, split_dir, entries)

    scan = SplitScan([], [], [], [], [], [], [], denied_dirs, bad_names)
    for (p, _, _, label), rel in zip(candidates, rels):
        row = entries[rel]
        if row.status == "bad":
            scan.bad.append(p)
        elif row.status == "denied":
            scan.denied.append(p)
        elif row.status == "large" or too_large(row.hw):  # also when the limit was lowered
            scan.large.append(p)
        else:
            scan.files.append(p)
            scan.labels.append(label)
            scan.shapes.append(_displayed(row.hw, row.orientation))
            scan.orientations.append(row.orientation)
    return scan


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
    sizes = {name: len(v.files) for name, v in scanned.items()}
    pieces = resolve_split(split, sizes, f"image_folder at {root!r}")

    files, labels, shapes, orientations = [], [], [], []
    for name, start, stop in pieces:
        scan = scanned[name]
        files += scan.files[start:stop]
        labels += scan.labels[start:stop]
        shapes += scan.shapes[start:stop]
        orientations += scan.orientations[start:stop]
    kept = SplitScan(files, labels, shapes, orientations, *(
        [p for v in scanned.values() for p in getattr(v, field)]
        for field in ("bad", "large", "denied", "denied_dirs", "bad_names")))
    return _source(kept, IMAGE_FOLDER_NAME, split, root, class_names, order,
                   f"Split {split!r} of image_folder {root!r} has no readable images",
                   _LAYOUT_HELP)


def image_files_source(path, order=np.arange):
    """Unlabelled images: every image file below the folder ``path``, or those a text file lists.

    A folder is walked as a class folder is (sorted, hidden names ignored,
    links followed once); a list file holds one image path per line (blank
    lines and lines starting with ``#`` are ignored; relative paths are
    relative to the list file's folder). Files are checked as an image
    folder's are (cached manifest, pixel limit); bad, missing and unreadable
    files are skipped with a warning and named in ``info.skipped_files``.
    Every label is -1; ``info.name`` is ``"image_files"``, ``info.split``
    the path.
    """
    path = str(path)
    denied_dirs, candidates, missing = [], [], []
    if _isdir(path):
        candidates = [(p, s, m, -1) for p, s, m in _list_images(path, denied_dirs)]
        what, help_text = "(an unlabelled image folder)", (
            "Put image files (" + ", ".join(IMAGE_EXTENSIONS) + ") in it or below it.")
    elif tf.io.gfile.exists(path):
        base = os.path.dirname(path)
        with _open(path) as f:
            raw = f.read()
        try:
            lines = raw.decode("utf-8").splitlines() if isinstance(raw, bytes) else (
                raw.splitlines())
        except UnicodeDecodeError:
            raise ValueError(f"The image list {path!r} is not UTF-8 text: write one image "
                             "path per line.") from None
        for line in lines:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            full = entry if (os.path.isabs(entry) or is_remote(entry)) else os.path.join(
                base, entry)
            try:
                if is_remote(full):
                    st = tf.io.gfile.stat(full)
                    candidates.append((full, int(st.length), int(st.mtime_nsec), -1))
                else:
                    st = os.stat(full)
                    if not os.path.isfile(full):
                        raise OSError
                    candidates.append((full, int(st.st_size), int(st.st_mtime_ns), -1))
            except (OSError, tf.errors.OpError):
                missing.append(full)
        what, help_text = "(an image list)", "Write one image path per line."
        if not candidates and missing:
            raise ValueError(
                f"None of the {len(missing)} files listed in {path!r} exists, e.g. "
                f"{missing[0]!r}. Relative paths are read relative to the list's folder "
                f"{base or '.'!r}.")
    else:
        raise ValueError(f"{path!r} does not exist: pass a folder of images or a text file "
                         "listing one image path per line.")
    scan = _check_files(candidates, path, denied_dirs, what, help_text)
    scan.missing = missing
    return _source(scan, "image_files", path, path, None, order,
                   f"{path!r} holds no readable images", help_text)


def _source(scan, name, split, root, class_names, order, none_left, help_text):
    """The :class:`Source` of the good files of ``scan``; warns about (and lists) the rest."""
    files, labels, shapes, orientations = scan.files, scan.labels, scan.shapes, scan.orientations
    denied, denied_dirs, bad, bad_names, large, missing = (
        scan.denied, scan.denied_dirs, scan.bad, scan.bad_names, scan.large, scan.missing)
    _warn_skipped(missing, "listed file(s) that do not exist", root)
    _warn_skipped(denied_dirs + denied, "file(s) or folder(s) that may not be read "
                  "(permission denied)", root, "make them readable (chmod -R a+rX) and they "
                  "are used on the next load")
    _warn_skipped(bad, "unreadable image file(s) (corrupt, empty, or a variant TensorFlow "
                  "cannot decode such as animated WebP)", root)
    _warn_skipped(bad_names, "image file(s) whose path is not valid UTF-8 (TensorFlow cannot "
                  "open them)", root, "rename them to UTF-8 (e.g. convmv -f latin1 -t utf8 -r "
                  "--notest ROOT) and they are used on the next load", show=_shown)
    _warn_skipped(large, f"image file(s) above the limit of {max_image_pixels()} pixels "
                  f"(skipped_too_large; raise it with {MAX_PIXELS_ENV}=PIXELS, 0 for none)",
                  root)
    if not files:
        raise ValueError(
            f"{none_left} "
            f"({len(bad)} corrupt or empty, {len(denied)} permission denied, "
            + (f"{len(missing)} missing, " if missing else "")
            + f"{len(large)} above the pixel limit"
            + (f", {len(bad_names)} named in bytes that are not UTF-8" if bad_names else "")
            + "). " + help_text)
    unique_shapes = set(shapes)
    image_shape = (*unique_shapes.pop(), 3) if len(unique_shapes) == 1 else None
    info = DatasetInfo(
        name=name,
        split=split,
        num_examples=len(files),
        num_classes=len(class_names) if class_names else 0,
        image_shape=image_shape,
        skipped=len(bad) + len(denied) + len(bad_names) + len(missing),
        class_names=class_names,
        skipped_too_large=len(large),
        skipped_files=tuple(_printable(p) for p in (
            missing + denied_dirs + denied + bad + bad_names + large)),
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
    stand_in_hw = image_shape[:2] if image_shape else _STAND_IN_HW
    return Source(records=records, decode=_or_stand_in(decode, stand_in_hw), info=info,
                  cheap_records=True)


def _decode_file_record(record):
    return {"image": decode_image_bytes(tf.io.read_file(record["path"])),
            "label": record["label"]}


def _decode_oriented_file_record(record):
    image = decode_image_bytes(tf.io.read_file(record["path"]))
    return {"image": apply_orientation(image, record["orientation"]),
            "label": record["label"]}


# ------------------------------------------------- files that go bad mid-run
#
# The scan decoded every file once; a file deleted, truncated or overwritten
# after it would stop the run with a TensorFlow error deep in tf.data. Instead
# the decode stands in for it, in place: a blank (mid-gray) image of the
# split's size with label -1, "unknown", which every supervised loss, metric
# and linear evaluation leaves out. The epoch keeps its number of examples
# and every other example its image, label and augmentation, so the stream
# stays deterministic: a resumed run sees what an uninterrupted run saw.

_STAND_IN_HW = (64, 64)  # a split of mixed sizes: the stand-in's size (it is resized anyway)
_STAND_IN_GRAY = 128
_mid_run_bad = {}  # path -> times a stand-in was used for it, in this process
_mid_run_lock = threading.Lock()


def mid_run_skipped():
    """``{path: times}`` of the files that could not be read or decoded after the scan.

    Each time the decode stood in for one of them with a blank unlabelled
    image counts once (a file gone bad is met again every epoch).
    """
    with _mid_run_lock:
        return dict(_mid_run_bad)


def _note_mid_run_bad(path):
    path = path.numpy().decode("utf-8", "replace")
    with _mid_run_lock:
        first = path not in _mid_run_bad
        _mid_run_bad[path] = _mid_run_bad.get(path, 0) + 1
        total = len(_mid_run_bad)
    if first:
        logger.warning(
            "image_folder: %r could not be read or decoded, though the scan found it good "
            "(deleted, truncated or overwritten since): a blank unlabelled image stands in "
            "for it, so the run goes on with the same number of examples (%d file(s) so "
            "far). The next scan skips it, or uses it again once you restore it.",
            path, total)
    return 0


def _or_stand_in(decode, hw):
    """``decode``, with the blank unlabelled stand-in when a file cannot be read or decoded.

    A nested dataset holds the one decode: ``ignore_errors`` drops it when it
    fails, and the stand-in concatenated after it is taken instead. Its
    ``take(1)`` never reaches the stand-in of a good file, whose image is
    exactly ``decode``'s.
    """
    height, width = int(hw[0]), int(hw[1])

    def stand_in(record):
        noted = tf.py_function(_note_mid_run_bad, [record["path"]], tf.int32)
        with tf.control_dependencies([noted]):
            image = tf.fill([height, width, 3], tf.constant(_STAND_IN_GRAY, tf.uint8))
        return {"image": tf.ensure_shape(image, [None, None, 3]),
                "label": tf.constant(-1, record["label"].dtype)}

    def decode_or_stand_in(record):
        one = tf.data.Dataset.from_tensors(record)
        decoded = one.map(decode).ignore_errors()
        return decoded.concatenate(one.map(stand_in)).take(1).get_single_element()

    return decode_or_stand_in


