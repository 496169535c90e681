"""Tests for simclr_tf.data.datasets and simclr_tf.data.offline."""

import io
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.data import datasets, image_folder
from simclr_tf.data import offline

PIL = pytest.importorskip("PIL.Image")


def _collect(ds):
    images, labels = [], []
    for ex in ds.as_numpy_iterator():
        images.append(ex["image"])
        labels.append(ex["label"])
    return images, np.array(labels)


# ---------------------------------------------------------------------------
# offline_shapes
# ---------------------------------------------------------------------------


def test_offline_generation_is_deterministic():
    x1, y1 = offline.generate("test")
    offline._generate_cached.cache_clear()  # force a second, independent generation
    x2, y2 = offline.generate("test")
    assert x1 is not x2
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_offline_shapes_dtypes_balance_and_splits():
    x, y = offline.generate("train")
    xt, yt = offline.generate("test")
    assert x.shape == (10_000, 32, 32, 3) and x.dtype == np.uint8
    assert xt.shape == (2_000, 32, 32, 3) and xt.dtype == np.uint8
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, 1000))
    np.testing.assert_array_equal(np.bincount(yt, minlength=10), np.full(10, 200))
    # Labels are shuffled, not in class blocks.
    assert len(set(y[:20].tolist())) > 3
    # Train and test come from different seeds: no test image occurs in train.
    train_keys = {img.tobytes() for img in x}
    assert not any(img.tobytes() in train_keys for img in xt)
    # Images are varied (not blank) and use a broad range of values.
    assert x.std() > 40
    assert len({img.tobytes() for img in x}) == len(x)


def test_offline_load_through_datasets():
    ds, info = datasets.load("offline_shapes", "test")
    assert info == datasets.DatasetInfo(
        name="offline_shapes", split="test", num_examples=2000, num_classes=10,
        image_shape=(32, 32, 3), skipped=0, class_names=offline.CLASS_NAMES)
    assert ds.element_spec["image"].dtype == tf.uint8
    assert ds.element_spec["label"].dtype == tf.int64
    images, labels = _collect(ds.take(50))
    xt, yt = offline.generate("test")
    np.testing.assert_array_equal(np.stack(images), xt[:50])
    np.testing.assert_array_equal(labels, yt[:50])
    # The contract's alias and TFDS-style slicing.
    ds2, info2 = datasets.load("offline", "test[10:20]+train[:5]")
    assert info2.num_examples == 15
    images2, labels2 = _collect(ds2)
    x, y = offline.generate("train")
    np.testing.assert_array_equal(np.stack(images2), np.concatenate([xt[10:20], x[:5]]))
    np.testing.assert_array_equal(labels2, np.concatenate([yt[10:20], y[:5]]))


def test_offline_bad_split():
    with pytest.raises(ValueError, match="validation"):
        datasets.load("offline_shapes", "validation")


def test_offline_shuffle_files_is_seeded_permutation():
    ds_a, _ = datasets.load("offline_shapes", "test[:100]", shuffle_files=True, seed=3)
    ds_b, _ = datasets.load("offline_shapes", "test[:100]", shuffle_files=True, seed=3)
    _, la = _collect(ds_a)
    _, lb = _collect(ds_b)
    np.testing.assert_array_equal(la, lb)
    _, y = offline.generate("test")
    assert not np.array_equal(la, y[:100])
    np.testing.assert_array_equal(np.sort(la), np.sort(y[:100]))


# ---------------------------------------------------------------------------
# image_folder
# ---------------------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(d))
    return d


def _make_folder(root):
    """Builds ROOT/{train,test}/<class>/... and returns the expected pixels."""
    rng = np.random.default_rng(0)
    expected = {}  # relative path -> (label, RGB uint8 array or None for lossy)

    def save(rel, array, mode=None, label=None, exact=None, **kw):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = PIL.fromarray(array) if mode is None else PIL.fromarray(array).convert(mode)
        img.save(path, **kw)
        expected[rel] = (label, exact)

    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    save("train/cat/a.jpg", rgb, label=0, quality=95)
    gray = rng.integers(0, 256, (20, 25), dtype=np.uint8)
    save("train/cat/b_gray.png", gray, label=0, exact=np.repeat(gray[..., None], 3, axis=-1))
    rgba = rng.integers(0, 256, (33, 33, 4), dtype=np.uint8)
    save("train/dog/c_rgba.png", rgba, label=1, exact=rgba[..., :3])
    g16 = rng.integers(0, 65536, (16, 16)).astype(np.uint16)
    save("train/dog/d_16bit.png", g16, label=1,
         exact=np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, axis=-1))
    cmyk_src = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    save("train/zebra/e_cmyk.jpg", cmyk_src, mode="CMYK", label=2, quality=95)
    big = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    save("train/zebra/f.png", big, label=2, exact=big)
    small = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    save("train/zebra/sub/g.bmp", small, label=2, exact=small)
    save("train/cat/h.gif", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), label=0)
    # Unreadable files: a truncated PNG (valid header, broken data) and an empty file.
    good_png = (root / "train/zebra/f.png").read_bytes()
    (root / "train/cat/corrupt.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "train/dog/empty.jpg").write_bytes(b"")
    # Ignored: non-image files, hidden files, hidden sub-folders and a hidden class
    # folder, all holding valid images (so a loader that reads them counts them).
    (root / "train/dog/notes.txt").write_text("not an image")
    hidden = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for rel in ("train/dog/.hidden.png", "train/cat/.thumbs/x.png",
                "train/.ipynb_checkpoints/y.png", "test/dog/.t3.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        PIL.fromarray(hidden).save(root / rel)
    # The test split lacks the 'cat' class: labels must still use all classes.
    test_img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    save("test/dog/t1.png", test_img, label=1, exact=test_img)
    save("test/zebra/t2.png", test_img[::-1].copy(), label=2, exact=test_img[::-1])
    return expected


def test_image_folder_loads_all_formats(tmp_path, cache_dir, caplog):
    root = tmp_path / "root"
    expected = _make_folder(root)
    with caplog.at_level(logging.WARNING, logger="simclr_tf.data.datasets"):
        ds, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.skipped == 2
    assert info.num_examples == 8
    assert info.num_classes == 3  # not the hidden .ipynb_checkpoints folder
    assert info.class_names == ("cat", "dog", "zebra")
    assert info.image_shape is None  # sizes differ
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 2" in warning and "corrupt.png" in warning and "empty.jpg" in warning

    images, labels = _collect(ds)
    assert len(images) == 8
    # Files are listed in sorted order within sorted classes.
    train_rel = sorted(
        (rel for rel in expected if rel.startswith("train/")),
        key=lambda r: (expected[r][0], r))
    np.testing.assert_array_equal(labels, [expected[r][0] for r in train_rel])
    for rel, image in zip(train_rel, images):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        pil = PIL.open(root / rel)
        assert image.shape[:2] == (pil.height, pil.width), rel
        exact = expected[rel][1]
        if exact is not None:
            np.testing.assert_array_equal(image, exact, err_msg=rel)
        else:  # lossy (JPEG, GIF palette): compare with PIL's RGB decode
            ref = np.asarray(pil.convert("RGB")).astype(np.int32)
            assert np.abs(image.astype(np.int32) - ref).mean() < 3.0, rel


def test_image_folder_test_split_uses_global_class_index(tmp_path, cache_dir):
    root = tmp_path / "root"
    _make_folder(root)
    ds, info = datasets.load("image_folder", "test", data_dir=str(root))
    assert info.num_examples == 2 and info.skipped == 0 and info.num_classes == 3
    assert info.image_shape == (32, 32, 3)
    _, labels = _collect(ds)
    np.testing.assert_array_equal(labels, [1, 2])


def test_image_folder_manifest_is_cached_and_refreshed(tmp_path, cache_dir):
    root = tmp_path / "root"
    _make_folder(root)
    _, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.skipped == 2
    manifests = list(cache_dir.rglob("*.json"))
    assert len(manifests) == 1
    # Repair the corrupt file: the changed size/mtime must trigger a re-check.
    good = (root / "train/zebra/f.png").read_bytes()
    (root / "train/cat/corrupt.png").write_bytes(good)
    _, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.skipped == 1 and info.num_examples == 9
    # Slicing works on the valid files.
    _, info = datasets.load("image_folder", "train[:3]", data_dir=str(root))
    assert info.num_examples == 3


def test_image_folder_garbage_bytes_are_skipped(tmp_path, cache_dir):
    root = tmp_path / "root"
    (root / "train" / "a").mkdir(parents=True)
    PIL.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train/a/ok.png")
    (root / "train/a/garbage.jpg").write_bytes(b"definitely not a jpeg" * 20)
    ds, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.skipped == 1 and info.num_examples == 1
    assert len(list(ds)) == 1


def test_image_folder_errors(tmp_path, cache_dir):
    root = tmp_path / "root"
    _make_folder(root)
    with pytest.raises(ValueError) as e:
        datasets.load("image_folder", "validation", data_dir=str(root))
    assert str(root / "validation") in str(e.value)
    assert "ROOT/<split>/<class>/<image>" in str(e.value)
    with pytest.raises(ValueError, match="data_dir"):
        datasets.load("image_folder", "train")
    with pytest.raises(ValueError, match="does not exist"):
        datasets.load("image_folder", "train", data_dir=str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    (empty / "train" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError) as e:
        datasets.load("image_folder", "train", data_dir=str(empty))
    assert str(empty / "train") in str(e.value)
    no_classes = tmp_path / "no_classes"
    (no_classes / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="class folders"):
        datasets.load("image_folder", "train", data_dir=str(no_classes))


# ---------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_tfds_cifar10_mock(split, tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        ds, info = datasets.load("cifar10", split, data_dir=str(tmp_path))
        assert info.name == "cifar10" and info.split == split
        assert info.num_examples == 12 and info.num_classes == 10
        assert info.image_shape == (32, 32, 3)
        assert len(info.class_names) == 10
        # data.json records it: a resume on another version is refused (test_model_dir).
        assert info.version == str(tfds.builder("cifar10", data_dir=str(tmp_path)).info.version)
        images, labels = _collect(ds)
        # A second path: the same mocked (encoded) examples through tfds.load,
        # decoded with PIL instead of TF.
        decoders = tfds.decode.PartialDecoding(
            {"image": True, "label": True}, decoders={"image": tfds.decode.SkipDecoding()})
        ref = list(tfds.load("cifar10", split=split, decoders=decoders).as_numpy_iterator())
    assert len(images) == len(ref) == 12
    for image, label, ex in zip(images, labels, ref):
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        expected = np.asarray(PIL.open(io.BytesIO(ex["image"])).convert("RGB"))
        np.testing.assert_array_equal(image, expected)
        assert label == ex["label"]
    assert labels.dtype == np.int64 and ((labels >= 0) & (labels < 10)).all()


def test_tfds_grayscale_becomes_rgb(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        ds, info = datasets.load("mnist", "test", data_dir=str(tmp_path))
        images, _ = _collect(ds)
    assert info.image_shape == (28, 28, 3)
    for image in images:
        assert image.shape == (28, 28, 3)
        np.testing.assert_array_equal(image[..., 0], image[..., 1])
        np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_unknown_dataset_name():
    with pytest.raises(ValueError) as e:
        datasets.load("cifar1O", "train")
    message = str(e.value)
    assert "cifar1O" in message
    assert "offline_shapes" in message and "image_folder" in message
    assert "'cifar10'" in message  # close-match suggestion


def test_to_rgb_uint8():
    gray16 = tf.constant([[[65535], [0]]], tf.uint16)
    np.testing.assert_array_equal(
        datasets.to_rgb_uint8(gray16).numpy(), [[[255] * 3, [0] * 3]])
    rgba = tf.constant([[[1, 2, 3, 4]]], tf.uint8)
    np.testing.assert_array_equal(datasets.to_rgb_uint8(rgba).numpy(), [[[1, 2, 3]]])
    unknown = tf.function(datasets.to_rgb_uint8,
                          input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    np.testing.assert_array_equal(unknown(tf.constant([[[7]]], tf.uint8)).numpy(), [[[7, 7, 7]]])
    np.testing.assert_array_equal(unknown(rgba).numpy(), [[[1, 2, 3]]])


# ---------------------------------------------------------------------------
# image_folder: awkward folders (issue 17)
# ---------------------------------------------------------------------------


def _save(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(array).save(path, **kw)


@pytest.mark.timeout(120)  # before the fix, the walk took exponentially long
def test_image_folder_symlink_loop_ends_and_lists_each_file_once(tmp_path, cache_dir):
    root = tmp_path / "root"
    img = np.zeros((8, 8, 3), np.uint8)
    _save(root / "train/a/one.png", img)
    _save(root / "train/a/sub/two.png", img)
    (root / "train/a/sub/loop").symlink_to(root / "train/a", target_is_directory=True)
    (root / "train/a/self").symlink_to(".", target_is_directory=True)
    # A link to a folder outside the class is followed (once).
    _save(root / "elsewhere/three.png", img)
    (root / "train/a/linked").symlink_to(root / "elsewhere", target_is_directory=True)
    ds, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.num_examples == 3 and info.skipped == 0
    assert len(list(ds)) == 3


def test_image_folder_upper_case_extensions_and_webp(tmp_path, cache_dir):
    root = tmp_path / "root"
    rng = np.random.default_rng(1)
    pixels = {}
    for name in ("a.PNG", "b.Png", "c.BMP", "d.webp", "e.WEBP"):
        x = rng.integers(0, 256, (10 + len(pixels), 7, 3), dtype=np.uint8)
        kw = {"lossless": True} if name.lower().endswith(".webp") else {}
        _save(root / "train/k" / name, x, **kw)
        pixels[name] = x
    _save(root / "train/k/f.JPG", np.full((9, 9, 3), 128, np.uint8), quality=95)
    _save(root / "train/k/g.JPEG", np.full((9, 9, 3), 64, np.uint8), quality=95)
    ds, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.num_examples == 7 and info.skipped == 0
    images, _ = _collect(ds)
    for name, image in zip(sorted(pixels), images[:5]):  # sorted paths: a..e first
        np.testing.assert_array_equal(image, pixels[name], err_msg=name)
    assert abs(int(images[5].mean()) - 128) <= 2 and abs(int(images[6].mean()) - 64) <= 2


def test_image_folder_animated_gif_gives_first_frame(tmp_path, cache_dir):
    root = tmp_path / "root"
    frames = [PIL.fromarray(np.full((12, 10, 3), c, np.uint8)) for c in (30, 220, 120)]
    path = root / "train/k/anim.gif"
    path.parent.mkdir(parents=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert PIL.open(path).n_frames == 3
    ds, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.num_examples == 1 and info.image_shape == (12, 10, 3)
    (image,), _ = _collect(ds)
    assert image.shape == (12, 10, 3)
    np.testing.assert_array_equal(image, np.asarray(frames[0].convert("RGB")))


def test_image_folder_animated_webp_is_skipped_not_crashing(tmp_path, cache_dir, caplog):
    root = tmp_path / "root"
    frames = [PIL.fromarray(np.full((8, 6, 3), c, np.uint8)) for c in (10, 200)]
    path = root / "train/k/anim.webp"
    path.parent.mkdir(parents=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True)
    _save(root / "train/k/still.png", np.zeros((8, 6, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="simclr_tf.data.datasets"):
        ds, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.num_examples == 1 and info.skipped == 1
    assert "anim.webp" in caplog.text and "animated WebP" in caplog.text
    assert len(list(ds)) == 1


def _oriented_jpeg(path, array, orientation):
    exif = PIL.Exif()
    exif[0x0112] = orientation
    _save(path, array, quality=100, subsampling=0, exif=exif.tobytes())


def test_image_folder_applies_exif_orientation(tmp_path, cache_dir):
    from PIL import ImageOps

    root = tmp_path / "root"
    # 16 x 24 stored pixels in four flat blocks: JPEG keeps them, and each of the
    # eight orientations gives a different layout.
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:8, :12] = (250, 0, 0)
    stored[:8, 12:] = (0, 250, 0)
    stored[8:, :12] = (0, 0, 250)
    stored[8:, 12:] = (250, 250, 250)
    for o in range(1, 9):
        _oriented_jpeg(root / f"train/k/o{o}.jpg", stored, o)
    ds, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.num_examples == 8 and info.image_shape is None  # 16x24 and 24x16
    images, _ = _collect(ds)
    layouts = set()
    for o, image in zip(range(1, 9), images):
        expected = np.asarray(ImageOps.exif_transpose(PIL.open(root / f"train/k/o{o}.jpg")))
        assert image.shape == expected.shape, o
        assert image.shape[:2] == ((16, 24) if o <= 4 else (24, 16)), o
        diff = np.abs(image.astype(int) - expected.astype(int))
        assert diff.mean() < 3, o  # JPEG decoders differ a little at block edges
        np.testing.assert_allclose(image[4::8, 4::8], expected[4::8, 4::8], atol=12,
                                   err_msg=f"orientation {o}")  # block centres
        layouts.add(tuple((image[::8, ::8] > 128).reshape(-1)))
    assert len(layouts) == 8
    # Orientation 6 ("rotate 90 clockwise to display"): the stored top-left block
    # (red) ends up top-right.
    assert tuple(images[5][0, -1] > 128) == (True, False, False)
    # One orientation for the whole folder: the displayed shape is known.
    root2 = tmp_path / "root2"
    _oriented_jpeg(root2 / "train/k/a.jpg", stored, 8)
    _, info = datasets.load("image_folder", "train", data_dir=str(root2))
    assert info.image_shape == (24, 16, 3)


def test_read_header_orientation_and_size(tmp_path):
    read = lambda name: tuple(image_folder.read_header(str(tmp_path / name))[:2])  # noqa: E731
    _oriented_jpeg(tmp_path / "a.jpg", np.zeros((5, 7, 3), np.uint8), 6)
    assert read("a.jpg") == ((5, 7), 6)
    _save(tmp_path / "b.jpg", np.zeros((5, 7, 3), np.uint8))
    assert read("b.jpg") == ((5, 7), 1)
    for fmt in ("png", "gif", "bmp", "webp"):  # stored sizes; no orientation
        _save(tmp_path / f"c.{fmt}", np.zeros((5, 7, 3), np.uint8))
        assert read(f"c.{fmt}") == ((5, 7), 1), fmt
    # By content, not by name: a PNG called .jpg; orientation from EXIF only.
    _save(tmp_path / "png.jpg", np.zeros((3, 4, 3), np.uint8), format="PNG")
    assert read("png.jpg") == ((3, 4), 1)
    exif = PIL.Exif()
    exif[0x0112] = 9  # not an orientation
    _save(tmp_path / "d.jpg", np.zeros((5, 7, 3), np.uint8), exif=exif.tobytes())
    assert read("d.jpg") == ((5, 7), 1)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    _save(tmp_path / "e.jpg", np.zeros((5, 7, 3), np.uint8), xmp=xmp)
    assert read("e.jpg") == ((5, 7), 1)
    # Not images, or cut short before the size: the decoder judges them.
    (tmp_path / "f.jpg").write_bytes(b"not an image at all")
    (tmp_path / "g.png").write_bytes((tmp_path / "c.png").read_bytes()[:20])
    (tmp_path / "h.jpg").write_bytes(b"")
    for name in ("f.jpg", "g.png", "h.jpg"):
        assert image_folder.read_header(str(tmp_path / name)) == (None, 1, False), name


def _manifest_folder(root):
    """train/a: two good PNGs (5x7, 6x4), one corrupt file and a 100,000 x 100,000 PNG bomb."""
    import struct
    import zlib

    _save(root / "train/a/good1.png", np.zeros((5, 7, 3), np.uint8))
    _save(root / "train/a/good2.png", np.zeros((6, 4, 3), np.uint8))
    (root / "train/a/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    (root / "train/a/bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_image_folder_scan_fields_and_manifest_rows(tmp_path, cache_dir, monkeypatch):
    root = tmp_path / "root"
    _manifest_folder(root)
    decoded = []
    real = image_folder._decode_shapes
    monkeypatch.setattr(image_folder, "_decode_shapes",
                        lambda paths: decoded.extend(paths) or real(paths))
    scan = image_folder._scan_split(str(root), "train", ("a",))
    assert isinstance(scan, image_folder.SplitScan)
    names = lambda paths: [os.path.basename(p) for p in paths]  # noqa: E731
    assert names(scan.files) == ["good1.png", "good2.png"] and scan.labels == [0, 0]
    assert scan.shapes == [(5, 7), (6, 4)] and scan.orientations == [1, 1]
    assert names(scan.bad) == ["corrupt.jpg"] and names(scan.large) == ["bomb.png"]
    assert scan.denied == [] and scan.denied_dirs == []
    assert sorted(names(decoded)) == ["corrupt.jpg", "good1.png", "good2.png"]  # not the bomb

    # On disk: JSON arrays [size, mtime_ns, status, [h, w] or None, orientation],
    # as before the rows had names; the bomb's size is unknown (Pillow refused it).
    manifest = image_folder._manifest_path(str(root / "train"))
    with open(manifest, encoding="utf-8") as f:
        data = json.load(f)
    assert data["version"] == 3
    rows = data["files"]
    assert rows["a/good1.png"][2:] == ["ok", [5, 7], 1]
    assert rows["a/corrupt.jpg"][2:] == ["bad", None, 1]
    assert rows["a/bomb.png"][2:] == ["large", None, 1]
    size = os.path.getsize(root / "train/a/good2.png")
    assert rows["a/good2.png"][:2] == [size, os.stat(root / "train/a/good2.png").st_mtime_ns]
    assert image_folder._read_manifest(manifest, str(root / "train"))["a/good2.png"] == (
        image_folder.ManifestRow(size, rows["a/good2.png"][1], "ok", (6, 4), 1))

    # A manifest as the hand-written header parser wrote it (the bomb's size in
    # its row) is reused: nothing is read or decoded again.
    rows["a/bomb.png"][3] = [100_000, 100_000]
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump(data, f)
    decoded.clear()
    real_read_header = image_folder.read_header
    monkeypatch.setattr(image_folder, "read_header", lambda path: pytest.fail(path))
    again = image_folder._scan_split(str(root), "train", ("a",))
    assert again == scan and not decoded
    monkeypatch.setattr(image_folder, "read_header", real_read_header)

    # A damaged row: the split is scanned again (and the manifest rewritten).
    rows["a/good1.png"] = ["ok"]
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump(data, f)
    assert image_folder._scan_split(str(root), "train", ("a",)) == scan
    assert len(decoded) == 3
    assert image_folder._read_manifest(manifest, str(root / "train"))["a/good1.png"].status == "ok"


def test_image_folder_bomb_beyond_pillows_guard_and_no_limit(tmp_path, cache_dir, monkeypatch):
    """Without a limit the bomb goes to the decoder, which refuses it: skipped, as before."""
    root = tmp_path / "root"
    _manifest_folder(root)
    scan = image_folder._scan_split(str(root), "train", ("a",))
    assert len(scan.large) == 1 and len(scan.bad) == 1
    monkeypatch.setenv(image_folder.MAX_PIXELS_ENV, "0")  # the cached "large" row is rechecked
    scan = image_folder._scan_split(str(root), "train", ("a",))
    assert scan.large == [] and sorted(os.path.basename(p) for p in scan.bad) == [
        "bomb.png", "corrupt.jpg"]
    assert len(scan.files) == 2


def _make_unreadable_folder(root):
    img = np.full((8, 8, 3), 7, np.uint8)
    _save(root / "train/k/ok.png", img)
    _save(root / "train/k/secret.png", img)
    _save(root / "train/k/locked/inner.png", img)


def test_image_folder_permission_denied_is_skipped_then_rechecked(
        tmp_path, cache_dir, caplog, monkeypatch):
    """The guard, with os.access and the header read refusing as for a non-root user.

    The same case with real permissions runs in a process without root below.
    """
    root = tmp_path / "root"
    _make_unreadable_folder(root)
    secret = str(root / "train/k/secret.png")
    real_access, real_open = os.access, image_folder._open

    def access(path, mode, *a, **kw):
        return False if str(path) == secret else real_access(path, mode, *a, **kw)

    def open_(path):
        if str(path) == secret:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path)

    monkeypatch.setattr(image_folder.os, "access", access)
    monkeypatch.setattr(image_folder, "_open", open_)
    with caplog.at_level(logging.WARNING, logger="simclr_tf.data.datasets"):
        ds, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.num_examples == 2 and info.skipped == 1
    assert "permission denied" in caplog.text and "secret.png" in caplog.text
    assert len(list(ds)) == 2
    # Made readable again (chmod keeps size and mtime): used on the next load.
    monkeypatch.undo()
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(cache_dir))
    _, info = datasets.load("image_folder", "train", data_dir=str(root))
    assert info.num_examples == 3 and info.skipped == 0


_UNPRIVILEGED_SCRIPT = r"""
import logging, os, pwd, sys
# Import everything first: the interpreter may live under root's home.
import tensorflow_datasets
from simclr_tf.data import datasets
if sys.argv[2]:  # drop root
    user = pwd.getpwnam(sys.argv[2])
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
logging.basicConfig(level=logging.WARNING)
ds, info = datasets.load("image_folder", "train", data_dir=sys.argv[1])
print("RESULT", info.num_examples, info.skipped, len(list(ds)))
try:  # a root whose only class folder may not be listed
    datasets.load("image_folder", "train", data_dir=sys.argv[3])
except ValueError as e:
    print("ERROR", str(e).replace("\n", " "))
"""


@pytest.mark.slow
def test_image_folder_permission_denied_as_unprivileged_user(tmp_path):
    """chmod 000 files and folders, read by a process that is not root."""
    import shutil
    import subprocess
    import sys
    import tempfile

    import subprocs

    user = subprocs.unprivileged_user()  # "": already unprivileged, run as ourselves
    if user is None:
        pytest.skip("running as root and no unprivileged user exists")
    # A world-traversable folder (pytest's tmp_path is private to root).
    base = tempfile.mkdtemp(prefix="simclr_perm_")
    try:
        os.chmod(base, 0o777)
        root = os.path.join(base, "root")
        _make_unreadable_folder(__import__("pathlib").Path(root))
        for dirpath, dirnames, filenames in os.walk(root):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
        os.chmod(os.path.join(root, "train/k/secret.png"), 0)
        os.chmod(os.path.join(root, "train/k/locked"), 0)
        root2 = os.path.join(base, "root2")
        os.makedirs(os.path.join(root2, "train/k"))
        os.chmod(root2, 0o755)
        os.chmod(os.path.join(root2, "train"), 0o755)
        os.chmod(os.path.join(root2, "train/k"), 0)
        env = dict(os.environ, HOME=base, **{datasets.CACHE_DIR_ENV: os.path.join(base, "cache")})
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(datasets.__file__)))]
            + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        proc = subprocess.run(
            [sys.executable, "-c", _UNPRIVILEGED_SCRIPT, root, user or "", root2], env=env, cwd=base,
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
        assert result == ["RESULT 1 1 1"], proc.stdout + proc.stderr[-3000:]
        assert "permission denied" in proc.stderr and "secret.png" in proc.stderr
        assert "locked" in proc.stderr
        errors = [l for l in proc.stdout.splitlines() if l.startswith("ERROR")]
        assert len(errors) == 1 and "No images could be listed" in errors[0], proc.stdout
        assert "permission denied" in errors[0] and "chmod -R a+rX" in errors[0]
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        shutil.rmtree(base, ignore_errors=True)




def test_image_folder_with_only_unreadable_files_is_a_clear_error(tmp_path, cache_dir):
    root = tmp_path / "root"
    (root / "train" / "k").mkdir(parents=True)
    (root / "train/k/a.png").write_bytes(b"")
    (root / "train/k/b.jpg").write_bytes(b"\xff\xd8 not a jpeg" * 10)
    with pytest.raises(ValueError, match=r"has no readable images \(2 corrupt or empty, "
                                         r"0 permission denied, 0 above the pixel limit\)"):
        datasets.load("image_folder", "train", data_dir=str(root))


def test_bad_split_names_the_available_splits():
    with pytest.raises(ValueError, match=r"Bad split 'validation' for 'offline_shapes'.*"
                                         r"Available splits: \['test', 'train'\]"):
        datasets.load("offline_shapes", "validation")
