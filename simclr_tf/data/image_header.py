"""Image dimensions from the file header, without decoding the pixels.

:func:`image_size` reads a few bytes of a PNG, JPEG, GIF, BMP or WebP file and
returns its ``(height, width)``, so that an image folder can skip
decompression bombs (a small file that decodes to gigabytes) before anything
decodes them. Pure Python; reads at most the JPEG segment headers before the
first frame (seeking over their contents, except for the EXIF segment), a few
dozen bytes for the other formats.

:func:`read_header` also returns the EXIF orientation of a JPEG (1-8; 1 for
upright images and the other formats), which the image-folder loader applies
after decoding so that a photo appears as the camera meant. It raises
``PermissionError`` when the file cannot be opened for lack of permission.

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

from simclr_tf.files import is_remote

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
    return tf.io.gfile.GFile(path, "rb") if is_remote(path) else open(path, "rb")


def image_size(path):
    """``(height, width)`` from the header of the image file at ``path``.

    Returns None when the format is not recognised or the header is cut
    short or inconsistent (the caller then decodes the file as usual, and a
    corrupt file is found there). Never decodes pixel data.
    """
    try:
        return read_header(path)[0]
    except PermissionError:
        return None


def read_header(path):
    """``((height, width) or None, orientation)`` from the header at ``path``.

    ``orientation`` is the EXIF orientation tag of a JPEG (1-8, see
    :data:`ORIENTATIONS`), 1 when there is none or for other formats. The size
    is the stored (not the displayed) size; it is None as in :func:`image_size`.

    Raises:
        PermissionError: the file exists but may not be read.
    """
    try:
        with _open(path) as f:
            head = f.read(32)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_header(f)
            return _small_header_size(head), 1
    except PermissionError:
        raise
    except tf.errors.PermissionDeniedError as e:
        raise PermissionError(str(e)) from None
    except (OSError, IndexError, struct.error, tf.errors.OpError):
        return None, 1


# EXIF orientation -> how to turn the stored pixels into the displayed image.
ORIENTATIONS = {
    1: "upright",
    2: "mirrored left-right",
    3: "rotated 180",
    4: "mirrored top-bottom",
    5: "transposed (mirror + rotate 90 counter-clockwise)",
    6: "rotate 90 clockwise to display",
    7: "transversed (mirror + rotate 90 clockwise)",
    8: "rotate 90 counter-clockwise to display",
}
_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_MAX_BYTES = 65535


def _exif_orientation(data):
    """The orientation tag (1-8) of an APP1 segment's payload, or 1."""
    if not data.startswith(b"Exif\x00\x00"):
        return 1
    tiff = data[6:]
    if tiff[:2] == b"II":
        order = "<"
    elif tiff[:2] == b"MM":
        order = ">"
    else:
        return 1
    try:
        (magic, ifd) = struct.unpack(order + "HI", tiff[2:8])
        if magic != 42:
            return 1
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
            tag, typ, n = struct.unpack(order + "HHI", entry[:8])
            if tag == _EXIF_ORIENTATION_TAG:
                if typ == 3:  # SHORT
                    (value,) = struct.unpack(order + "H", entry[8:10])
                elif typ == 4:  # LONG
                    (value,) = struct.unpack(order + "I", entry[8:12])
                else:
                    return 1
                return value if value in ORIENTATIONS else 1
    except struct.error:
        return 1
    return 1


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


def _jpeg_header(f):
    """Walks the JPEG segments after SOI up to the first start-of-frame.

    Returns ``((height, width) or None, orientation)``; the orientation comes
    from the first EXIF APP1 segment before the frame.
    """
    f.seek(2)
    orientation = None
    for _ in range(_JPEG_MAX_SEGMENTS):
        byte = f.read(1)
        if byte != b"\xff":
            return None, orientation or 1
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return None, orientation or 1
        code = marker[0]
        if code in _JPEG_NO_LENGTH:
            continue
        if code in (0xD9, 0xDA):  # end of image, start of scan: no frame header
            return None, orientation or 1
        (length,) = struct.unpack(">H", f.read(2))
        if length < 2:
            return None, orientation or 1
        if code in _JPEG_SOF:
            _, height, width = struct.unpack(">BHH", f.read(5))
            # height 0: size set later (DNL)
            return ((height, width) if height else None), orientation or 1
        if code == 0xE1 and orientation is None:  # APP1: EXIF (or XMP)
            data = f.read(min(length - 2, _EXIF_MAX_BYTES))
            if data.startswith(b"Exif\x00\x00"):
                orientation = _exif_orientation(data)
            f.seek(length - 2 - len(data), 1)
            continue
        f.seek(length - 2, 1)
    return None, orientation or 1
