"""The fast parts of the image-folder scan give what the slow ones gave (issue 32 item 4).

The header parser against Pillow's ``Image.open``, the grouped decode against
one decode per file, and the manifest keys against ``os.path.relpath``.
Cheap: tiny files, one process.
"""

import io
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_tf.data import image_folder, image_headers
from simclr_tf.data.source import decode_image_bytes


def _encoded(fmt, size=(12, 9), mode="RGB", **save):
    rng = np.random.default_rng(size[0] * 31 + size[1])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def _segment(data, marker):
    """Offset of the first JPEG segment with ``marker`` (0xDB etc.)."""
    return data.index(bytes((0xFF, marker)), 2)


def _png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png(width, height, depth=8, colour=2, filter_method=0, crc_ok=True):
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0,
                                           filter_method, 0))
    if not crc_ok:
        ihdr = ihdr[:-1] + bytes((ihdr[-1] ^ 1,))
    return (b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _files():
    """``{name: (bytes, the parser must read it itself)}``."""
    jpeg = _encoded("JPEG")
    dqt = _segment(jpeg, 0xDB)
    sof = _segment(jpeg, 0xC0)
    length = (jpeg[dqt + 2] << 8) | jpeg[dqt + 3]
    bad_dqt = (jpeg[:dqt + 2] + struct.pack(">H", length + 1) + jpeg[dqt + 4:dqt + 2 + length]
               + b"\0" + jpeg[dqt + 2 + length:])  # a table longer than its segment
    twelve_bit = jpeg[:sof + 4] + b"\x0c" + jpeg[sof + 5:]
    short_jfif = jpeg[:2] + b"\xff\xe0\x00\x07JFIF\x00" + jpeg[2 + 2 + ((jpeg[4] << 8) | jpeg[5]):]
    return {
        "rgb.jpg": (jpeg, True),
        "gray.jpg": (_encoded("JPEG", (7, 13), "L"), True),
        "cmyk.jpg": (_encoded("JPEG", (9, 5), "CMYK"), True),
        "progressive.jpg": (_encoded("JPEG", (20, 11), progressive=True), True),
        "exif6.jpg": (_encoded("JPEG", (10, 6), exif=_exif(6)), True),
        "exif3_icc.jpg": (_encoded("JPEG", (6, 10), exif=_exif(3), icc_profile=b"p" * 300),
                          True),
        "big_icc.jpg": (_encoded("JPEG", (8, 8), icc_profile=b"q" * 9000), True),  # > 4 KiB
        "fill_bytes.jpg": (jpeg[:sof] + b"\xff\xff" + jpeg[sof:], True),
        "rgb.png": (_encoded("PNG", (12, 9)), True),
        "rgba.png": (_encoded("PNG", (5, 8), "RGBA"), True),
        "palette.png": (_encoded("PNG", (8, 3), "P"), True),
        "gray16.png": (_encoded("PNG", (4, 6), "I;16"), True),
        "large.png": (_png(9_000, 8_000), True),  # 72 MP: under Pillow's guard
        "bomb.png": (_png(100_000, 100_000), True),  # beyond it: over_pillow_limit
        # Files Pillow refuses or reads otherwise: the parser must not say more.
        "truncated.jpg": (jpeg[: len(jpeg) // 2], False),
        "truncated.png": (_encoded("PNG")[:40], False),
        "corrupt.jpg": (b"\xff\xd8 this is not a jpeg " * 20, False),
        "cut_short.jpg": (b"\xff\xd8\xff\xe0 cut short", False),
        "bad_dqt.jpg": (bad_dqt, False),
        "twelve_bit.jpg": (twelve_bit, False),
        "short_jfif.jpg": (short_jfif, False),
        "bad_crc.png": (_png(10, 10, crc_ok=False), False),
        "filter_method.png": (_png(10, 10, filter_method=1), False),
        "odd_mode.png": (_png(10, 10, depth=3), False),
        "odd_chunk.png": (_png(10, 10)[:33] + _png_chunk(b"t~Xt", b"x") + _png(10, 10)[33:],
                          False),
        "sof_cut.jpg": (jpeg[:sof] + b"\xff\xc0\x00\x04\x08\x00" + jpeg[sof:], False),
        "still.gif": (_encoded("GIF"), False),
        "still.bmp": (_encoded("BMP"), False),
        "still.webp": (_encoded("WEBP"), False),
        "empty.jpg": (b"", False),
    }


def test_header_parser_says_what_pillow_says(tmp_path, monkeypatch):
    files = _files()
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    opened = []  # the files read_header left to Pillow
    real_open = image_folder.Image.open
    monkeypatch.setattr(image_folder.Image, "open", lambda f, **kw: (
        opened.append(os.path.basename(f.name)) or real_open(f, **kw)))
    fast = {name: image_folder.read_header(str(tmp_path / name)) for name in files}
    monkeypatch.undo()
    assert sorted(opened) == sorted(name for name, (_, plain) in files.items() if not plain)
    parsed = {name: image_headers._parse_header(data[:image_headers._HEAD_BYTES])
              for name, (data, _) in files.items()}
    monkeypatch.setattr(image_headers, "_parse_header", lambda head: None)  # Pillow only
    pillow = {name: image_folder.read_header(str(tmp_path / name)) for name in files}
    assert fast == pillow
    assert {name for name, p in parsed.items() if p is not None} == {
        name for name, (_, plain) in files.items() if plain}
    for name, header in parsed.items():
        assert header is None or header == pillow[name], name
    # The values themselves (not only agreement): size, orientation, the bomb guard.
    assert pillow["exif6.jpg"] == ((6, 10), 6, False)
    assert pillow["exif3_icc.jpg"] == ((10, 6), 3, False)
    assert pillow["gray.jpg"] == ((13, 7), 1, False)
    assert pillow["large.png"] == ((8_000, 9_000), 1, False)
    assert pillow["bomb.png"] == (None, 1, True)
    assert pillow["bad_dqt.jpg"] == pillow["twelve_bit.jpg"] == (None, 1, False)


def _one_by_one(paths):
    """The reference: each file decoded alone, eagerly."""
    shapes = {}
    for i, path in enumerate(paths):
        try:
            shapes[i] = tuple(decode_image_bytes(tf.io.read_file(path)).shape[:2].as_list())
        except tf.errors.InvalidArgumentError:
            pass
    return shapes


def _scan_folder(root, n=75, bad=(3, 34, 35, 70)):
    """``root/train/c{0,1,2}/``: ``n`` tiny images, the ``bad`` ones corrupt or truncated."""
    expected = []
    for i in range(n):
        cls = f"c{i % 3}"
        os.makedirs(root / "train" / cls, exist_ok=True)
        size = (4 + i % 5, 3 + i % 7)
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        data = _encoded(fmt, size)
        if i in bad:
            data = data[: len(data) // 2] if i % 2 else b"\x89PNG\r\n\x1a\n garbage"
        path = root / "train" / cls / f"{i:03d}.{ext}"
        path.write_bytes(data)
        expected.append((str(path), i % 3, (size[1], size[0]), i in bad))
    return sorted(expected)


def test_grouped_decode_gives_each_file_its_own_verdict(tmp_path, monkeypatch):
    """Bad files in the first groups, two in one group, none in the last: as one by one."""
    monkeypatch.setenv(image_folder.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(image_folder, "_DECODE_GROUP", 8)
    expected = _scan_folder(tmp_path / "root")
    paths = [p for p, _, _, _ in expected]
    reference = _one_by_one(paths)
    assert sorted(set(range(len(paths))) - set(reference)) == [
        i for i, e in enumerate(expected) if e[3]]
    assert image_folder._decode_shapes(paths) == reference

    scan = image_folder._scan_split(str(tmp_path / "root"), "train", ("c0", "c1", "c2"))
    good = [e for e in expected if not e[3]]
    assert scan.files == [p for p, _, _, _ in good]
    assert scan.labels == [label for _, label, _, _ in good]
    assert scan.shapes == [hw for _, _, hw, _ in good]
    assert scan.bad == [p for p, _, _, bad in expected if bad]


@pytest.mark.parametrize("spelling", ["{root}/train", "{root}//train", "{root}/./train",
                                      "{root}/train/", "{root}/x/../train"])
def test_manifest_keys_are_the_relative_paths_they_always_were(tmp_path, spelling):
    os.makedirs(tmp_path / "x")
    split_dir = spelling.format(root=tmp_path)
    paths = [os.path.join(split_dir, "c0", "a.jpg"), os.path.join(split_dir, "c0", "d", "b.png"),
             os.path.join(split_dir, "c1", ".", "e.png"),  # as an image list may name it
             os.path.join(str(tmp_path), "elsewhere", "c.png")]  # an image list's file
    assert image_folder._relative_paths(paths, split_dir) == [
        os.path.relpath(p, split_dir) for p in paths]


def test_header_reads_go_to_threads_only_when_they_wait(monkeypatch):
    """Quick reads stay in this thread; reads that wait (a slow mount) go to threads; same order."""
    import threading
    import time

    threads = set()

    def header(path, wait=0.0):
        threads.add(threading.current_thread().name)
        if wait:
            time.sleep(wait)
        return path.upper()

    paths = [f"/mount/c{i % 3}/{i:04d}.jpg" for i in range(300)]
    monkeypatch.setattr(image_folder, "_header", header)
    assert image_folder._headers(paths) == [p.upper() for p in paths]
    assert threads == {threading.current_thread().name}

    threads.clear()
    monkeypatch.setattr(image_folder, "_header", lambda p: header(p, wait=0.001))
    assert image_folder._headers(paths) == [p.upper() for p in paths]
    assert len(threads - {threading.current_thread().name}) > 1
