"""An image file's header (size, EXIF orientation) read without decoding its pixels.

Plain JPEG and PNG headers (most of a large folder) are parsed from the
file's first bytes by :func:`_parse_header`, several times faster than
``PIL.Image.open`` on small images and with the same result; anything else,
or anything unusual in them, is read by Pillow (``benchmarks/folder_scan.py``).
"""

import zlib
from typing import NamedTuple, Optional, Tuple

import tensorflow as tf
from PIL import ExifTags, Image

from simclr_tf.files import is_remote

_PIL_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


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
