"""The ``image_folder`` source: ``ROOT/<split>/<class>/<image>`` files (see simclr_tf.data.datasets).

A split is scanned once and the result cached in a manifest: each file's
header is read (size, EXIF orientation; no pixels), files above
:func:`max_image_pixels` are skipped undecoded, and TensorFlow decodes the
others once to find the corrupt ones and the variants it cannot decode.

The headers of plain JPEG and PNG files (most of a large folder) are read by
:func:`_parse_header` from the file's first bytes, several times faster than
``PIL.Image.open`` on small images; anything else, or anything unusual in
them, is read by Pillow as before (``benchmarks/folder_scan.py``).
"""

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf
from PIL import ExifTags, Image

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
_PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")

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


def _warn_skipped(paths, what, root, fix=None, show=repr):
    """One warning for the files of a kind the scan skipped: how many, a few of them, the fix."""
    if not paths:
        return
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


class Header(NamedTuple):
    """What the scan learns from an image file's header, without decoding it."""

    hw: Optional[Tuple[int, int]]  # the stored (height, width); None: not read
    orientation: int = 1  # EXIF orientation of a JPEG (1-8), else 1
    over_pillow_limit: bool = False  # Pillow refused the size as a bomb: hw None


def _open(path):
    return tf.io.gfile.GFile(path, "rb") if is_remote(path) else open(path, "rb")


def _exif_orientation(image):
    """The EXIF orientation tag (1-8) of a Pillow JPEG from its header, else 1.

    EXIF only, as before Pillow did this: ``Image.getexif`` would also take
    ``tiff:Orientation`` from XMP.
    """
    return _orientation_of_exif(image.info.get("exif"))


def _orientation_of_exif(data):
    """The orientation tag (1-8) of an EXIF block (``b"Exif\\0\\0..."``), else 1."""
    if not data:
        return 1
    try:
        exif = Image.Exif()
        exif.load(data)
        value = exif.get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001  (a damaged EXIF block: the photo is upright)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# ----------------------------------------------- JPEG and PNG headers, fast
#
# PIL.Image.open costs ~30-100 us of Python per file (it builds an image
# object, walks every marker through handler functions, and checks plugins);
# on a folder of small JPEGs that was most of the scan's time. The parser
# below reads the same fields from the first bytes of a file, and gives up
# (None: Pillow reads the file as before) on anything it does not know, so
# that it never says more than Pillow would: the stored size of a frame
# header, the EXIF block Pillow would collect, and Pillow's bomb guard.

_HEAD_BYTES = 1 << 16  # a JPEG's EXIF segment is at most 64 KiB
_FIRST_READ = 4096  # read first (a 64 KiB read costs 12 us more on a small file)
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB,
                       0xCD, 0xCE, 0xCF))
# Segments Pillow reads without checking their content for the size: DHT,
# DAC, DQT, DRI, COM and APP0-APP15 (APP1 EXIF and APP2 MPF looked at below).
_JPEG_OTHER = frozenset((0xC4, 0xCC, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = frozenset(((1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3),
                        (2, 3), (4, 3), (8, 3), (8, 4), (16, 4), (8, 6), (16, 6)))


def _parse_header(head):
    """The :class:`Header` of a plain JPEG or PNG from its first bytes ``head``, else None.

    None means "ask Pillow": not a JPEG or PNG, a segment or chunk that runs
    past ``head``, a marker or mode the parser does not know, an MPO (APP2
    MPF), or anything Pillow's own open would refuse.
    """
    if head[:3] == b"\xff\xd8\xff":
        found = _jpeg_size_and_exif(head)
        if found is None:
            return None
        hw, exif = found
        return _guarded(hw, _orientation_of_exif(exif))
    if head[:8] == _PNG_SIGNATURE:
        hw = _png_size(head)
        return None if hw is None else _guarded(hw, 1)
    return None


def _guarded(hw, orientation):
    """``Header(hw, orientation)``, or over Pillow's bomb limit as ``Image.open`` would say."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max(1, hw[0]) * max(1, hw[1]) > 2 * limit:
        return Header(None, over_pillow_limit=True)
    return Header(hw, orientation)


def _jpeg_size_and_exif(head):
    """``((height, width), exif bytes or None)`` from the markers before the scan, else None."""
    pos, end_of_head = 2, len(head)
    hw, exif = None, None
    while True:
        if pos + 4 > end_of_head or head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        end = pos + 2 + ((head[pos + 2] << 8) | head[pos + 3])
        if end < pos + 4 or end > end_of_head:
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            return None if hw is None else (hw, exif)
        size = end - pos - 4  # of the segment's data
        if marker in _JPEG_SOF:
            layers = head[pos + 9] if size > 5 else 0
            if (layers not in (1, 3, 4) or size < 6 + 3 * layers or (size - 6) % 3
                    or head[pos + 4] != 8):
                return None  # not 8-bit gray, RGB or CMYK, or odd: Pillow refuses or knows better
            hw = ((head[pos + 5] << 8) | head[pos + 6], (head[pos + 7] << 8) | head[pos + 8])
            if 0 in hw:  # the height follows in a DNL segment
                return None
        elif marker == 0xE1 and head.startswith(b"Exif\0\0", pos + 4):
            exif = head[pos + 4:end] if exif is None else exif + head[pos + 10:end]
        elif marker == 0xE2 and head.startswith(b"MPF\0", pos + 4):
            return None  # maybe an MPO: Pillow decides
        elif marker == 0xDB and not _dqt_sound(head, pos + 4, end):
            return None
        elif marker not in _JPEG_OTHER or (marker in (0xE0, 0xE2, 0xEE) and size
                                            < _jpeg_app_minimum(head, marker, pos + 4)):
            return None  # a segment Pillow's open would fail on, or one it does not know
        pos = end


def _jpeg_app_minimum(head, marker, start):
    """The length below which Pillow fails on this segment: it reads JFIF's version,
    Adobe's flags and an ICC fragment's count at fixed offsets."""
    if marker == 0xE0 and head.startswith(b"JFIF", start):
        return 7
    if marker == 0xEE and head.startswith(b"Adobe", start):
        return 7
    if marker == 0xE2 and head.startswith(b"ICC_PROFILE\0", start):
        return 14
    return 0


def _dqt_sound(head, start, end):
    """Whether a DQT segment's tables fill it exactly, as Pillow checks."""
    while start < end:
        start += 1 + 64 * (1 if head[start] < 16 else 2)
    return start == end


def _png_size(head):
    """``(height, width)`` from a PNG's IHDR when its chunks up to IDAT are sound, else None."""
    pos, end_of_head, hw = 8, len(head), None
    while True:
        if pos + 8 > end_of_head:
            return None
        length = int.from_bytes(head[pos:pos + 4], "big")
        kind = head[pos + 4:pos + 8]
        if kind == b"IDAT":
            return hw
        if not kind.isalpha():
            return None  # Pillow calls the file broken
        end = pos + 12 + length
        if end > end_of_head or zlib.crc32(head[pos + 4:end - 4]) != int.from_bytes(
                head[end - 4:end], "big"):
            return None  # cut short, or a damaged chunk
        if kind == b"IHDR":
            if pos != 8 or length != 13 or head[pos + 19] != 0 or (
                    head[pos + 16], head[pos + 17]) not in _PNG_MODES:
                return None
            hw = (int.from_bytes(head[pos + 12:pos + 16], "big"),
                  int.from_bytes(head[pos + 8:pos + 12], "big"))
        elif hw is None:
            return None  # IHDR must come first
        pos = end


def read_header(path):
    """The :class:`Header` of the image file at ``path``.

    ``PIL.Image.open`` reads the header only (the pixels are not decoded) and
    recognises JPEG (also MPO), PNG, GIF, BMP and WebP by their content. A
    file Pillow cannot read gives ``Header(None)``: the TensorFlow decode then
    judges it, as it judges every file within the limit. Plain JPEG and PNG
    headers are read from the file's first bytes by :func:`_parse_header`
    instead, with the same result as Pillow's.

    Raises:
        PermissionError: the file exists but may not be read.
    """
    try:
        with _open(path) as f:
            head = f.read(_FIRST_READ)  # a small JPEG's or PNG's header fits
            parsed = _parse_header(head)
            if parsed is None and len(head) == _FIRST_READ:  # maybe a longer header
                parsed = _parse_header(head + f.read(_HEAD_BYTES - _FIRST_READ))
            if parsed is not None:
                return parsed
            f.seek(0)
            with Image.open(f, formats=_PIL_FORMATS) as image:
                width, height = image.size
                jpeg = image.format in ("JPEG", "MPO")
                return Header((height, width), _exif_orientation(image) if jpeg else 1)
    except PermissionError:
        raise
    except tf.errors.PermissionDeniedError as e:
        raise PermissionError(str(e)) from None
    except Image.DecompressionBombError:
        return Header(None, over_pillow_limit=True)
    except Exception:  # noqa: BLE001  (not an image Pillow knows: the decoder judges it)
        return Header(None)


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


