"""Tests for simclr_tf.data.datasets and simclr_tf.data.offline."""

import io
import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.data import datasets
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
    # Ignored: non-image files and hidden files.
    (root / "train/dog/notes.txt").write_text("not an image")
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
    assert info.num_classes == 3
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
