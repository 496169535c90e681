"""Image dimensions from the file header, without decoding the pixels.

:func:`image_size` reads a few bytes of a PNG, JPEG, GIF, BMP or WebP file and
returns its ``(height, width)``, so that an image folder can skip
decompression bombs (a small file that decodes to gigabytes) before anything
decodes them. Pure Python; reads at most the JPEG segment headers before the
first frame (seeking over their contents), a few dozen bytes for the other
formats.

:func:`max_image_pixels` is the limit the image-folder loader applies:
``$SIMCLR_TF_MAX_IMAGE_PIXELS`` or 50 megapixels.

Example:
    >>> from simclr_tf.data import image_header
    >>> image_header.image_size("cat.png")      # doctest: +SKIP
    (480, 640)
"""

import os
import struct

import tensorflow as tf

MAX_PIXELS_ENV = "SIMCLR_TF_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...);
# C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_NO_LENGTH = {0x01, 0xD8} | set(range(0xD0, 0xD8))
_JPEG_MAX_SEGMENTS = 1000


def max_image_pixels():
    """The pixel limit (height x width) for image-folder images; 0 means none.

    ``$SIMCLR_TF_MAX_IMAGE_PIXELS`` when set, else 50 million.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count: set it to a whole number "
            f"such as {DEFAULT_MAX_PIXELS} (height x width), or 0 for no limit.")
    return value


def _open(path):
    return tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb")


def image_size(path):
    """``(height, width)`` from the header of the image file at ``path``.

    Returns None when the format is not recognised or the header is cut
    short or inconsistent (the caller then decodes the file as usual, and a
    corrupt file is found there). Never decodes pixel data.
    """
    try:
        with _open(path) as f:
            head = f.read(32)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(f)
            return _small_header_size(head)
    except (OSError, IndexError, struct.error, tf.errors.OpError):
        return None


def _small_header_size(head):
    """Dimensions of PNG, GIF, BMP and WebP from their first 32 bytes."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    if head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", head[6:10])
        return height, width
    if head.startswith(b"BM"):
        (dib_size,) = struct.unpack("<I", head[14:18])
        if dib_size == 12:  # BITMAPCOREHEADER: 16-bit sizes
            width, height = struct.unpack("<hh", head[18:22])
        else:
            width, height = struct.unpack("<ii", head[18:26])
        return abs(height), abs(width)  # negative height: top-down rows
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp_size(head)
    return None


def _webp_size(head):
    chunk = head[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas size minus one
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return height, width
    if chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14-bit sizes minus one
        (bits,) = struct.unpack("<I", head[21:25])
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width, height = struct.unpack("<HH", head[26:30])
        return height & 0x3FFF, width & 0x3FFF
    return None


def _jpeg_size(f):
    """Walks the JPEG segments after SOI up to the first start-of-frame."""
    f.seek(2)
    for _ in range(_JPEG_MAX_SEGMENTS):
        byte = f.read(1)
        if byte != b"\xff":
            return None
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_NO_LENGTH:
            continue
        if code in (0xD9, 0xDA):  # end of image, start of scan: no frame header
            return None
        (length,) = struct.unpack(">H", f.read(2))
        if length < 2:
            return None
        if code in _JPEG_SOF:
            _, height, width = struct.unpack(">BHH", f.read(5))
            return (height, width) if height else None  # 0: size set later (DNL)
        f.seek(length - 2, 1)
    return None
