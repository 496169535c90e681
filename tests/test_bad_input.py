"""Bad input gives a clear message or a counted skip, never a traceback or a damaged dir.

One test per kind of bad input. Each checks the message (or the skip count and
its warning) and that the files that were there before are untouched.
"""

import hashlib
import io
import logging
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import subprocs
from simclr_tf import config as config_lib
from simclr_tf import errors, runtime
from simclr_tf.data import datasets, image_folder
from simclr_tf.runtime import run_dir as run_dir_lib
from simclr_tf.runtime.run_dir import RunDir


@pytest.fixture(autouse=True)
def _private_manifest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path / "manifests"))


def _image(size=(24, 24), seed=0, offset=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.uniform(size=size + (3,)) * 120 + offset).astype("uint8"))


def _folder(root, classes=("cats", "dogs"), n=4, splits=("train", "test")):
    """ROOT/<split>/<class>/img<i>.png with ``n`` good images per class."""
    for split in splits:
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                _image(seed=10 * c + i, offset=100 * c).save(d / f"img{i}.png")
    return root


def _snapshot(root):
    """{relative path: sha1} of every file under ``root`` (symlinks not followed)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def _check_model_dir(cfg):
    """What run.py checks before it writes anything."""
    run_dir = RunDir(cfg.model_dir)
    run_dir.check_writable()
    run_dir.check_compatible(cfg)


def _cfg(tmp_path, **overrides):
    values = dict(dataset="image_folder", image_size=8, resnet_depth=18,
                  width_multiplier=0.25, train_batch_size=4, eval_batch_size=64,
                  train_steps=2, warmup_epochs=0.0, proj_out_dim=8,
                  feature_linear_eval=False, log_every_steps=1,
                  data_dir=str(tmp_path / "data"), model_dir=str(tmp_path / "run"))
    values.update(overrides)
    return config_lib.resolve(None, values)


# ------------------------------------------------------------ unreadable images

def _encoded(fmt):
    buf = io.BytesIO()
    _image((32, 32)).save(buf, format=fmt)
    return buf.getvalue()


def _first_half(data):
    return data[: len(data) // 2]


UNREADABLE = {
    "corrupt.jpg": lambda: b"\xff\xd8 this is not a jpeg " * 20,
    "truncated.jpg": lambda: _first_half(_encoded("JPEG")),
    "truncated.png": lambda: _first_half(_encoded("PNG")),
    "zero_bytes.png": lambda: b"",
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_image_is_skipped_with_a_count(tmp_path, caplog, name):
    root = _folder(tmp_path / "data")
    (root / "train" / "dogs" / name).write_bytes(UNREADABLE[name]())
    before = _snapshot(root)
    with caplog.at_level(logging.WARNING):
        ds, info = datasets.load("image_folder", "train", str(root))
    assert info.skipped == 1 and info.num_examples == 8
    assert "skipped 1 unreadable image file(s)" in caplog.text and name in caplog.text
    images = [ex["image"].numpy() for ex in ds]
    assert len(images) == 8 and all(im.shape == (24, 24, 3) for im in images)
    assert _snapshot(root) == before


def test_image_whose_name_is_not_utf8_is_skipped_with_a_count(tmp_path, caplog):
    root = _folder(tmp_path / "data")
    name = b"caf\xe9.png"  # Latin-1, as an old camera or a zip from Windows names it
    _image(seed=7).save(os.path.join(os.fsencode(root / "train" / "cats"), name))
    before = _snapshot(os.fsencode(root))
    with caplog.at_level(logging.WARNING):
        ds, info = datasets.load("image_folder", "train", str(root))
    assert info.skipped == 1 and info.num_examples == 8
    assert "skipped 1 image file(s) whose path is not valid UTF-8" in caplog.text
    assert "caf\\xe9.png" in caplog.text and "rename them to UTF-8" in caplog.text
    assert len([ex for ex in ds]) == 8
    assert _snapshot(os.fsencode(root)) == before
    caplog.clear()  # a run reads the folder again (eval, views): said once per process
    with caplog.at_level(logging.WARNING):
        assert datasets.load("image_folder", "train", str(root))[1].skipped == 1
    assert "not valid UTF-8" not in caplog.text


def _mid_run_folder(tmp_path):
    root = _folder(tmp_path / "data", n=6, splits=("train",))
    ds, info = datasets.load("image_folder", "train", str(root))  # scanned: all good
    return root, ds, info


def _break(root):
    """After the scan: one file deleted, one overwritten with garbage, one truncated."""
    gone = root / "train" / "cats" / "img1.png"
    garbage = root / "train" / "dogs" / "img2.png"
    truncated = root / "train" / "dogs" / "img4.png"
    gone.unlink()
    garbage.write_bytes(b"not a png at all" * 10)
    truncated.write_bytes(_first_half(truncated.read_bytes()))
    return {str(gone), str(garbage), str(truncated)}


def test_image_gone_bad_after_the_scan_is_replaced_in_place_and_counted(tmp_path, caplog):
    root, ds, info = _mid_run_folder(tmp_path)
    good = [(ex["image"].numpy(), int(ex["label"])) for ex in ds]
    broken = _break(root)
    with caplog.at_level(logging.WARNING):
        again = [(ex["image"].numpy(), int(ex["label"])) for ex in ds]
    assert len(again) == len(good) == info.num_examples == 12
    stand_ins = [i for i, (_, label) in enumerate(again) if label == -1]
    assert len(stand_ins) == 3
    for i, (image, label) in enumerate(again):
        if i in stand_ins:
            assert image.shape == (24, 24, 3) and (image == 128).all()
        else:
            assert label == good[i][1] and np.array_equal(image, good[i][0])
    counted = image_folder.mid_run_skipped()
    assert all(counted.get(p) == 1 for p in broken), counted
    for p in broken:
        assert f"{p!r} could not be read or decoded, though the scan found it good" in caplog.text
    assert "the same number of examples" in caplog.text


@pytest.mark.slow
def test_files_gone_bad_are_counted_in_train_log_and_listed_in_result(tmp_path, monkeypatch):
    """Like the scan's skipped files, those gone bad mid-run are reported, not only warned."""
    from simclr_tf import runtime

    # The count is per process: a file an earlier run of it met is not this run's.
    monkeypatch.setattr(image_folder, "_mid_run_bad", {"/an/earlier/run/img.png": 2})
    root = _folder(tmp_path / "data", n=6, splits=("train",))
    cfg = _cfg(tmp_path, train_split="train", eval_split="train", train_steps=3,
               mode="train_then_eval")
    os.makedirs(cfg.model_dir)
    exp = runtime.build(cfg)
    stream, broken = exp.train_dataset, set()

    def scanned_then_broken(*args):  # the stream scans the folder: all good
        dataset = stream(*args)
        broken.update(_break(root))
        return dataset

    monkeypatch.setattr(exp, "train_dataset", scanned_then_broken)
    runtime.train(exp)  # 3 steps of 4: every file met once
    with open(os.path.join(cfg.model_dir, "train_log.jsonl")) as f:
        counts = [json.loads(line).get("files_gone_bad", 0) for line in f]
    assert counts[-1] == 3 and counts == sorted(counts), counts
    result = runtime.evaluate(exp)
    assert result["files_gone_bad"] == sorted(broken)
    with open(os.path.join(cfg.model_dir, "result.json")) as f:
        assert json.load(f)["files_gone_bad"] == sorted(broken)


@pytest.mark.slow
def test_training_stream_goes_on_past_a_file_gone_bad_and_resumes_exactly(tmp_path):
    from simclr_tf.data import pipeline

    root = _folder(tmp_path / "data", n=6, splits=("train",))
    cfg = _cfg(tmp_path, image_size=16, train_batch_size=4)
    full, info = pipeline.build_train_dataset(cfg.data, cfg.augment, pipeline.Shard(4))
    resumed, _ = pipeline.build_train_dataset(
        cfg.data, cfg.augment, pipeline.Shard(4, start_epoch=1, skip_batches=1))
    _break(root)  # both streams were built (scanned) before
    steps = info.num_examples // 4  # 3 batches an epoch
    batches = [b for b in full.take(2 * steps)]
    labels = np.concatenate([b[1].numpy() for b in batches[:steps]])
    assert (labels == -1).sum() == 3  # every example of the epoch is there, 3 stood in for
    for a, b in zip(batches[steps + 1:], resumed.take(steps - 1)):
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
        for key in ("view1", "view2"):
            np.testing.assert_array_equal(a[0][key].numpy(), b[0][key].numpy())


# ------------------------------------------------------ decompression bombs

def _png_bomb(height=100_000, width=100_000):
    """A ~100-byte PNG whose header claims ``height x width`` RGB pixels (30 GB)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _jpeg_bomb(height=65_000, width=65_000):
    """A tiny JPEG (APP0, then a baseline frame header) claiming ``height x width``."""
    app0 = b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\0\x02\x11\x01\x03\x11\x01"
    return (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", len(app0) + 2) + app0
            + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9")


BOMBS = {"bomb.png": _png_bomb, "bomb.jpg": _jpeg_bomb}


def test_header_sizes_of_the_bombs_are_read_without_decoding(tmp_path):
    """Pillow's own guard (179 MP by default) refuses both; within it, the exact size."""
    for name, make in BOMBS.items():
        (tmp_path / name).write_bytes(make())
        assert image_folder.read_header(str(tmp_path / name)) == (None, 1, True)
    (tmp_path / "big.png").write_bytes(_png_bomb(9_000, 8_000))  # 72 MP: under the guard
    (tmp_path / "big.jpg").write_bytes(_jpeg_bomb(7_000, 9_000))
    assert image_folder.read_header(str(tmp_path / "big.png")) == ((9_000, 8_000), 1, False)
    assert image_folder.read_header(str(tmp_path / "big.jpg")).hw == (7_000, 9_000)


def test_decompression_bombs_are_skipped_undecoded_with_a_count(tmp_path, caplog,
                                                                 monkeypatch):
    root = _folder(tmp_path / "data")
    for name, make in BOMBS.items():
        (root / "train" / "dogs" / name).write_bytes(make())
    (root / "train" / "cats" / "corrupt.jpg").write_bytes(UNREADABLE["corrupt.jpg"]())
    before = _snapshot(root)
    decoded = []
    real = image_folder._decode_shapes
    monkeypatch.setattr(image_folder, "_decode_shapes",
                        lambda paths: decoded.extend(paths) or real(paths))
    with caplog.at_level(logging.WARNING):
        ds, info = datasets.load("image_folder", "train", str(root))
    assert info.skipped_too_large == 2 and info.skipped == 1 and info.num_examples == 8
    assert len(decoded) == 9  # the good and corrupt files ...
    assert not [p for p in decoded if os.path.basename(p) in BOMBS]  # ... not the bombs
    assert ("skipped 2 image file(s) above the limit of 50000000 pixels "
            "(skipped_too_large; raise it with SIMCLR_TF_MAX_IMAGE_PIXELS") in caplog.text
    assert "bomb.png" in caplog.text and "bomb.jpg" in caplog.text
    assert "skipped 1 unreadable image file(s)" in caplog.text
    images = [ex["image"].numpy() for ex in ds]
    assert len(images) == 8 and all(im.shape == (24, 24, 3) for im in images)
    assert _snapshot(root) == before
    # From the cached manifest: the same result, and still nothing decoded.
    decoded.clear()
    _, again = datasets.load("image_folder", "train", str(root))
    assert again == info and not decoded


def test_pixel_limit_follows_the_environment_variable(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data", classes=("small",), n=3, splits=("train",))
    _image(size=(40, 40)).save(root / "train" / "small" / "big.png")  # 1600 pixels
    _, info = datasets.load("image_folder", "train", str(root))
    assert info.num_examples == 4 and info.skipped_too_large == 0
    monkeypatch.setenv(image_folder.MAX_PIXELS_ENV, "1000")  # lowered: cache reused
    _, info = datasets.load("image_folder", "train", str(root))
    assert info.num_examples == 3 and info.skipped_too_large == 1
    monkeypatch.setenv(image_folder.MAX_PIXELS_ENV, "0")  # no limit
    (root / "train" / "small" / "tiny.png").write_bytes(_png_bomb(3, 3))  # honest 3x3
    _, info = datasets.load("image_folder", "train", str(root))
    assert info.num_examples == 5 and info.skipped_too_large == 0 and info.skipped == 0
    monkeypatch.setenv(image_folder.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="SIMCLR_TF_MAX_IMAGE_PIXELS='lots' is not a pixel "
                                         "count.*or 0 for no limit"):
        datasets.load("image_folder", "train", str(root))


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1.5", "-3"])
def test_pixel_limit_that_is_not_a_whole_number_is_one_config_error(monkeypatch, value):
    monkeypatch.setenv(image_folder.MAX_PIXELS_ENV, value)
    with pytest.raises(errors.ConfigError) as info:
        image_folder.max_image_pixels()
    message = str(info.value)
    assert message.startswith(f"SIMCLR_TF_MAX_IMAGE_PIXELS={value!r} is not a pixel count")
    assert "whole number such as 50000000" in message and "0 for no limit" in message
    assert "\n" not in message
    monkeypatch.setenv(image_folder.MAX_PIXELS_ENV, "5e7")  # a whole number in any spelling
    assert image_folder.max_image_pixels() == 50_000_000


# --------------------------------------------------- unusual but valid images

def _write_png(array):
    return lambda path: path.write_bytes(tf.io.encode_png(tf.constant(array)).numpy())


def _pil(mode, color, size=(20, 16), fmt=None):
    return lambda path: Image.new(mode, size, color).save(path, format=fmt)


UNUSUAL = {
    # name: (writer, expected RGB of every pixel, tolerance, expected (H, W))
    "cmyk.jpg": (_pil("CMYK", (0, 255, 255, 0), fmt="JPEG"), (255, 0, 0), 3, (16, 20)),
    "gray16.png": (_write_png(np.full((16, 20, 1), 40000, np.uint16)), (156, 156, 156), 1,
                   (16, 20)),
    "rgb16.png": (_write_png(np.stack([np.full((16, 20), 65535), np.zeros((16, 20)),
                                       np.full((16, 20), 32768)], -1).astype(np.uint16)),
                  (255, 0, 128), 1, (16, 20)),
    "gray.png": (_pil("L", 77), (77, 77, 77), 0, (16, 20)),
    "gray.jpg": (_pil("L", 77, fmt="JPEG"), (77, 77, 77), 2, (16, 20)),
    "rgba.png": (_pil("RGBA", (10, 200, 30, 0)), (10, 200, 30), 0, (16, 20)),
    "huge.png": (_pil("RGB", (1, 2, 250), size=(6000, 4000)), (1, 2, 250), 0, (4000, 6000)),
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_image_decodes_to_rgb_uint8(tmp_path, name):
    writer, rgb, tolerance, hw = UNUSUAL[name]
    root = _folder(tmp_path / "data", classes=("b_good",), n=2, splits=("train",))
    (root / "train" / "a_odd").mkdir()
    writer(root / "train" / "a_odd" / name)
    before = _snapshot(root)
    ds, info = datasets.load("image_folder", "train", str(root))
    assert info.skipped == 0 and info.num_examples == 3 and info.num_classes == 2
    first = next(iter(ds))  # class a_odd sorts first
    image = first["image"].numpy()
    assert int(first["label"]) == 0
    assert image.dtype == np.uint8 and image.shape == hw + (3,)
    np.testing.assert_allclose(image.reshape(-1, 3).min(0), rgb, atol=tolerance)
    np.testing.assert_allclose(image.reshape(-1, 3).max(0), rgb, atol=tolerance)
    assert _snapshot(root) == before


@pytest.mark.slow
def test_training_runs_on_a_folder_of_every_kind_of_image(tmp_path):
    """All the odd files above in one folder: 2 steps of training and an eval."""
    root = _folder(tmp_path / "data", n=3)
    for name, make in sorted(UNREADABLE.items()):
        (root / "train" / "cats" / name).write_bytes(make())
    for name, make in sorted(BOMBS.items()):
        (root / "train" / "dogs" / name).write_bytes(make())
    for i, (name, (writer, *_)) in enumerate(sorted(UNUSUAL.items())):
        writer(root / "train" / ("cats", "dogs")[i % 2] / name)
    for c, name in enumerate(("cats", "dogs")):  # 20 more eval images a class
        for i in range(3, 23):
            _image(seed=1000 + 10 * c + i, offset=100 * c).save(root / "test" / name / f"img{i}.png")
    before = _snapshot(root)
    cfg = _cfg(tmp_path, data_dir=str(root))  # image_size=8: the smallest allowed
    exp = runtime.build(cfg)
    assert exp.train_info.skipped == len(UNREADABLE)
    assert exp.train_info.skipped_too_large == len(BOMBS)
    assert exp.train_info.num_examples == 6 + len(UNUSUAL)
    os.makedirs(cfg.model_dir)
    runtime.train(exp)
    result = runtime.evaluate(exp)
    assert exp.step == 2 and result["global_step"] == 2
    # Second path: the exported SavedModel's logits on the eval split, scored in NumPy.
    runtime.export(exp)
    low, high = _top1_bounds_of_export(cfg)
    # result.json holds the float32 metric: compare within its rounding.
    assert low - 1e-6 <= result["top1"] <= high + 1e-6, (low, high, result)
    assert _snapshot(root) == before


def _top1_bounds_of_export(cfg):
    """Top-1 of model_dir/saved_model's ``serve`` on cfg's eval split, as
    (ties counted wrong, ties counted right): equal when no logits tie."""
    from simclr_tf.data import pipeline
    ds, info = pipeline.build_eval_dataset(cfg.data, 16)
    served = tf.saved_model.load(os.path.join(cfg.model_dir, "saved_model")).signatures["serve"]
    logits, labels = [], []
    for images, y in ds:
        logits.append(served(images)["logits_sup"].numpy())
        labels.append(y.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    assert len(labels) == info.num_examples > 0
    own = logits[np.arange(len(labels)), labels]
    others = np.where(np.eye(logits.shape[1], dtype=bool)[labels], -np.inf, logits).max(1)
    return float(np.mean(own > others)), float(np.mean(own >= others))


# ----------------------------------------------------------------- folders

@pytest.mark.parametrize("layout,message", [
    ("empty_class_folders", "No images found in"),
    ("images_without_class_folders", "No class folders found"),
    ("empty_root", "not found for dataset 'image_folder'"),
    ("missing_root", "does not exist"),
])
def test_empty_or_misarranged_folder_is_a_clear_error(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "empty_class_folders":
        (root / "train" / "cats").mkdir(parents=True)
        (root / "train" / "dogs").mkdir(parents=True)
        (root / "train" / "dogs" / "notes.txt").write_text("not an image")
    elif layout == "images_without_class_folders":
        (root / "train").mkdir(parents=True)
        _image().save(root / "train" / "img.png")
    elif layout == "empty_root":
        root.mkdir()
    before = _snapshot(root) if root.exists() else None
    with pytest.raises(ValueError, match=message) as info:
        datasets.load("image_folder", "train", str(root))
    assert "ROOT/<split>/<class>/<image>" in str(info.value)
    if before is not None:
        assert _snapshot(root) == before


# The CLI's refusals below run run.main in this process (subprocs.main_in_process);
# that a real process prints exactly one line is test_a_config_error_is_exactly_one_line.
def test_empty_folder_through_the_cli_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "data" / "train" / "cats").mkdir(parents=True)
    model_dir = tmp_path / "existing"
    model_dir.mkdir()
    (model_dir / "keep.txt").write_text("precious")
    code = subprocs.main_in_process(
        f"--config={subprocs.SMOKE}", "--dataset=image_folder", "--train_split=train",
        "--eval_split=test", f"--data_dir={tmp_path / 'data'}", f"--model_dir={model_dir}")
    err = capsys.readouterr().err
    assert code == 2
    assert "No images found in" in err and "Traceback" not in err
    assert _snapshot(model_dir) == {"keep.txt": hashlib.sha1(b"precious").hexdigest()}


@pytest.mark.slow
def test_a_single_class_trains_with_a_warning(tmp_path, caplog):
    root = _folder(tmp_path / "data", classes=("only",), n=6)
    cfg = _cfg(tmp_path, data_dir=str(root))
    with caplog.at_level(logging.WARNING):
        exp = runtime.build(cfg)
    assert exp.num_classes == 1
    assert "single class" in caplog.text and "trivially 1.0" in caplog.text
    os.makedirs(cfg.model_dir)
    runtime.train(exp)  # it really trains: the steps run and the loss is finite
    assert exp.step == cfg.train_steps
    log = run_dir_lib.read_train_log(cfg.model_dir)
    assert [e["step"] for e in log] == list(range(1, cfg.train_steps + 1))
    assert all(np.isfinite(e["contrast_loss"]) for e in log)
    # With one class the probe has one logit: its softmax is 1, its loss 0.
    assert all(e["sup_loss"] == pytest.approx(0.0, abs=1e-6) for e in log)
    assert exp.model.supervised_head.weights[-1].shape[-1] == 1
    result = runtime.evaluate(exp)
    assert result["top1"] == 1.0 and result["num_labeled_examples"] == 6


# ------------------------------------------------------------------- labels

def _unlabelled(monkeypatch):
    """Makes the dataset loader report a split without labels (like stl10/unlabelled)."""
    real = datasets.load

    def load(name, split, data_dir=None, **kwargs):
        ds, info = real(name, split, data_dir, **kwargs)
        return ds, info.__class__(**{**info.__dict__, "num_classes": 0,
                                     "class_names": None})

    monkeypatch.setattr(runtime.experiment.datasets, "load", load)


def test_finetune_without_labels_is_refused(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data")
    _unlabelled(monkeypatch)
    with pytest.raises(ValueError, match="needs a supervised head.*must have labels"):
        runtime.build(_cfg(tmp_path, data_dir=str(root), train_mode="finetune"))


def test_clean_view_probe_without_labels_is_refused_before_writing(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data")
    _unlabelled(monkeypatch)
    cfg = _cfg(tmp_path, data_dir=str(root), probe_view="clean")
    with pytest.raises(config_lib.ConfigError, match="probe_view=clean .*no labels"):
        runtime.build(cfg)
    assert not os.path.exists(cfg.model_dir)

def test_linear_eval_without_labels_is_refused(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data")
    _unlabelled(monkeypatch)
    exp = runtime.build(_cfg(tmp_path, data_dir=str(root), mode="eval"))
    with pytest.raises(errors.RunError, match="has no labels, so there is no supervised"):
        runtime.evaluate(exp)


def test_eval_split_with_only_missing_labels_is_refused(tmp_path):
    root = _folder(tmp_path / "data")
    cfg = _cfg(tmp_path, data_dir=str(root), mode="eval")
    exp = runtime.build(cfg)
    from simclr_tf.data import pipeline
    ds, _ = pipeline.build_eval_dataset(cfg.data, cfg.eval_batch_size)
    # Labels of -1, as TFDS gives for unlabelled splits (stl10's "unlabelled").
    ds = ds.map(lambda images, labels: (images, -tf.ones_like(labels)))
    exp.eval_dataset = lambda: exp.strategy.experimental_distribute_dataset(ds)
    os.makedirs(cfg.model_dir)
    with pytest.raises(errors.RunError, match="no labelled examples"):
        runtime.evaluate(exp)
    assert not os.path.exists(os.path.join(cfg.model_dir, "result.json"))


# ----------------------------------------------------------------- settings

def test_image_size_below_the_minimum_is_refused_before_anything_runs(tmp_path, capsys):
    model_dir = tmp_path / "existing"
    model_dir.mkdir()
    (model_dir / "keep.txt").write_text("precious")
    code = subprocs.main_in_process(f"--config={subprocs.SMOKE}", "--image_size=4",
                                    f"--model_dir={model_dir}")
    err = capsys.readouterr().err
    assert code == 2
    assert "Invalid value 4 for 'image_size': it must be >= 8." in err
    assert "Traceback" not in err
    assert sorted(os.listdir(model_dir)) == ["keep.txt"]


def test_batch_larger_than_the_dataset_is_refused(tmp_path):
    root = _folder(tmp_path / "data", n=3)  # 6 training images
    with pytest.raises(config_lib.ConfigError,
                       match="'train_batch_size'.*has only 6 examples.*<= 6"):
        runtime.build(_cfg(tmp_path, data_dir=str(root), train_batch_size=8))
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("where", ["file_as_model_dir", "file_as_parent"])
def test_unwritable_model_dir_is_refused(tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("precious")
    model_dir = blocker if where == "file_as_model_dir" else blocker / "run"
    cfg = _cfg(tmp_path, model_dir=str(model_dir))
    with pytest.raises(errors.RunError, match="is a file"):
        _check_model_dir(cfg)
    assert blocker.read_text() == "precious"


_READ_ONLY_CHECK = r"""
import os, pwd, sys
from simclr_tf.errors import RunError
from simclr_tf.runtime import run_dir as run_dir_lib
from simclr_tf.runtime.run_dir import RunDir
if sys.argv[2]:  # drop root, who may write anywhere
    user = pwd.getpwnam(sys.argv[2])
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
try:
    RunDir(sys.argv[1]).check_writable()
    print("ACCEPTED")
except RunError as e:
    print("REFUSED", e)
"""


@pytest.mark.slow
def test_read_only_model_dir_is_refused(tmp_path):
    """Checked as an unprivileged user: CI runs as root, who may write anywhere."""
    import subprocess
    import sys
    import tempfile

    user = subprocs.unprivileged_user()
    if user is None:
        pytest.skip("running as root and no unprivileged user exists")
    base = tempfile.mkdtemp(prefix="simclr_ro_")  # tmp_path is private to root
    try:
        os.chmod(base, 0o755)
        parent = os.path.join(base, "ro")
        os.mkdir(parent, 0o555)
        os.chmod(parent, 0o555)
        env = dict(os.environ, PYTHONPATH=subprocs.REPO, TF_CPP_MIN_LOG_LEVEL="2")

        def check(target):
            proc = subprocess.run([sys.executable, "-c", _READ_ONLY_CHECK, target, user],
                                  env=env, cwd=base, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            return proc.stdout

        refused = check(os.path.join(parent, "run"))
        assert refused.startswith("REFUSED") and "not writable" in refused, refused
        assert parent in refused, refused
        os.chmod(base, 0o777)
        assert check(os.path.join(base, "elsewhere")).startswith("ACCEPTED")  # the same user may write there
        assert os.listdir(parent) == []
    finally:
        os.chmod(base, 0o755)
        os.chmod(os.path.join(base, "ro"), 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_unwritable_model_dir_through_the_cli_fails_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("precious")
    code = subprocs.main_in_process(f"--config={subprocs.SMOKE}", f"--model_dir={blocker}/run")
    err = capsys.readouterr().err
    assert code == 2
    assert "is a file" in err and "Traceback" not in err
    assert blocker.read_text() == "precious"


def test_eval_without_a_checkpoint_is_refused_and_writes_nothing(tmp_path, capsys):
    """--mode=eval must never report (or export) a randomly initialised model."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("precious")
    code = subprocs.main_in_process(f"--config={subprocs.SMOKE}", "--mode=eval",
                                    f"--model_dir={model_dir}")
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Nothing to evaluate" in err and str(model_dir) in err
    assert "Traceback" not in err and "result:" not in out
    assert sorted(os.listdir(model_dir)) == ["notes.txt"]  # no config.yaml, export


def test_model_dir_of_an_incompatible_run_is_refused(tmp_path):
    old = _run_in_progress(tmp_path, resnet_depth=18)
    with open(os.path.join(old.model_dir, "checkpoints", "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    before = _snapshot(old.model_dir)
    with pytest.raises(errors.RunError, match=r"resnet_depth: 18 -> 34.*new --model_dir"):
        _check_model_dir(old.replace(resnet_depth=34))
    _check_model_dir(old.replace(eval_batch_size=7))  # compatible: resumes
    assert _snapshot(old.model_dir) == before


def _run_in_progress(tmp_path, **settings):
    """A model_dir with config.yaml and a checkpoint, as a run in progress leaves it."""
    old = _cfg(tmp_path, dataset="offline_shapes", **settings)
    directory = os.path.join(old.model_dir, "checkpoints")
    os.makedirs(directory)
    config_lib.save_yaml(old, os.path.join(old.model_dir, "config.yaml"))
    with open(os.path.join(directory, "ckpt-1.index"), "wb") as f:
        f.write(b"index")
    return old


@pytest.mark.parametrize("change", [
    dict(train_batch_size=8), dict(seed=3), dict(train_split="train[:50%]"),
    dict(augmentations="crop,color"), dict(shared_augmentations="crop"),
    dict(color_jitter_strength=1.0),
    dict(learning_rate=0.1), dict(warmup_epochs=2.0), dict(learning_rate_scaling="sqrt"),
    dict(weight_decay=0.5), dict(temperature=0.7), dict(label_fraction=0.5),
    dict(train_steps=1), dict(train_steps=0, train_epochs=9)])
def test_resuming_with_other_settings_is_refused_naming_the_key(tmp_path, change):
    old = _run_in_progress(tmp_path)
    before = _snapshot(old.model_dir)
    with pytest.raises(errors.RunError) as info:
        _check_model_dir(old.replace(**change))
    message = str(info.value)
    key = "the views" if "augment" in next(iter(change)) or "color" in next(
        iter(change)) else next(iter(change))
    assert key in message, message
    if key != "the views":
        assert f"{getattr(old, key)!r} -> {change[key]!r}" in message, message
    assert "new --model_dir" in message and f"--checkpoint={old.model_dir}" in message
    assert _snapshot(old.model_dir) == before  # config.yaml untouched


def test_resuming_with_a_shared_crop_names_the_shared_stage(tmp_path):
    old = _run_in_progress(tmp_path)
    with pytest.raises(errors.RunError,
                       match=r"the views: shared=none view1=crop,flip,color .* -> "
                             r"shared=crop view1=crop,flip,color "):
        _check_model_dir(old.replace(shared_augmentations="crop"))
    _check_model_dir(old.replace(shared_augmentations="none"))  # none is unset: resumes


def test_resuming_may_lengthen_the_run_or_change_where_outputs_go(tmp_path, caplog):
    old = _run_in_progress(tmp_path)  # train_steps=2
    same_views = old.replace(augmentations="crop,flip,color")  # the default, spelt out
    for ok in (same_views, old.replace(log_every_steps=1, checkpoint_steps=1,
                                       eval_split="test[:10]", keep_checkpoint_max=2,
                                       jit_compile="false", nonfinite_policy="skip")):
        _check_model_dir(ok)
    with caplog.at_level(logging.WARNING):
        _check_model_dir(old.replace(train_steps=5))
    assert "longer run (train_steps 2 -> 5): the warm-up" in caplog.text  # only what changed
    assert caplog.text.count("longer run") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        RunDir(old.model_dir).check_compatible(old.replace(train_steps=5), warn=False)
    assert "longer run" not in caplog.text  # run.py's first, early check stays quiet
    with pytest.raises(errors.RunError, match="train_steps: 2 -> 1"):
        _check_model_dir(old.replace(train_steps=1))  # shortening is not resuming


# --------------------------------------------------------------- SavedModels

def test_loading_a_directory_without_a_saved_model_is_a_clear_error(tmp_path):
    from simclr_tf import export
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(export.NotSimCLRExportError,
                       match="No SavedModel at .*no saved_model.pb.*--mode=export"):
        export.load_encoder(str(tmp_path))
    with pytest.raises(export.NotSimCLRExportError,
                       match=f"No simclr.keras in '{tmp_path}'.*--mode=export"):
        export.load_keras_model(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_loading_a_missing_path_names_it(tmp_path):
    from simclr_tf import export
    missing = str(tmp_path / "no_such_run")
    for load in (export.find_saved_model, export.load_encoder, export.load_keras_model):
        with pytest.raises(FileNotFoundError, match=f"'{missing}' does not exist"):
            load(missing)
    assert not os.path.exists(missing)


def _doubler_saved_model(path):
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def double(self, x):
            return {"y": 2 * x}

    module = Doubler()
    tf.saved_model.save(module, path, signatures={"serving_default": module.double})


def test_loading_a_foreign_saved_model_is_a_clear_error(tmp_path):
    from simclr_tf import export
    path = str(tmp_path / "foreign")
    _doubler_saved_model(path)
    before = _snapshot(path)
    for load in (export.find_saved_model, export.load_encoder):
        with pytest.raises(export.NotSimCLRExportError,
                           match=f"'{path}' is a SavedModel but not a simclr_tf export.*"
                                 r"simclr_tf\.json.*'serve' \(returning 'final_avg_pool'\)"
                                 r".*its signatures: 'serving_default'"):
            load(path)
    with pytest.raises(export.NotSimCLRExportError, match="SavedModel directory, not a "
                                                          r"\.keras file.*load_encoder"):
        export.load_keras_model(path)
    assert isinstance(export.NotSimCLRExportError("x"), ValueError)
    assert _snapshot(path) == before


def test_loading_a_damaged_saved_model_pb_is_a_clear_error(tmp_path):
    from simclr_tf import export
    (tmp_path / "saved_model.pb").write_bytes(b"\xff not a protocol buffer")
    with pytest.raises(export.NotSimCLRExportError, match="its signatures: none"):
        export.load_encoder(str(tmp_path))


def test_loading_another_keras_export_is_a_clear_error(tmp_path):
    """A Keras export has a 'serve' endpoint too, but not our outputs."""
    import keras
    from simclr_tf import export
    model = keras.Sequential([keras.Input([4]), keras.layers.Dense(2)])
    path = str(tmp_path / "keras_export")
    model.export(path, verbose=False)
    with pytest.raises(export.NotSimCLRExportError, match="not a simclr_tf export"):
        export.load_encoder(path)
    keras_file = str(tmp_path / "other.keras")
    model.save(keras_file)
    with pytest.raises(export.NotSimCLRExportError,
                       match="a Keras model of class 'Sequential', not a saved SimCLRModel"):
        export.load_keras_model(keras_file)
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(export.NotSimCLRExportError, match="not a .keras archive"):
        export.load_keras_model(str(tmp_path / "broken.keras"))


# ------------------------------------------------------------ config files

def _unreadable_config(tmp_path, monkeypatch):
    """A config file whose read is refused: chmod 000 does not stop root, so the
    read (simclr_tf.files.read_text) raises TensorFlow's PermissionDeniedError."""
    import simclr_tf.files

    path = tmp_path / "locked.yaml"
    path.write_text("seed: 1\n")
    real = simclr_tf.files.read_text

    def refuse(p):
        if os.fspath(p) == str(path):
            raise tf.errors.PermissionDeniedError(None, None, f"{path}; Permission denied")
        return real(p)

    monkeypatch.setattr(simclr_tf.files, "read_text", refuse)
    return path, ["Cannot read config file", "Permission denied", "chmod a+r"]


def _config_directory(tmp_path, monkeypatch):
    (tmp_path / "configs_dir").mkdir()
    return tmp_path / "configs_dir", ["is a directory, not a config file", "--config=PATH.yaml"]


def _latin1_config(tmp_path, monkeypatch):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# r\u00e9glages\nseed: 1\n".encode("latin-1"))
    return path, ["is not UTF-8 text", "offset 3", "Save it as UTF-8"]


@pytest.mark.parametrize("make", [_config_directory, _latin1_config, _unreadable_config],
                         ids=["directory", "not_utf8", "unreadable"])
def test_config_file_that_cannot_be_read_is_one_config_error(tmp_path, monkeypatch, make):
    path, expected = make(tmp_path, monkeypatch)
    with pytest.raises(errors.ConfigError) as info:
        config_lib.resolve(str(path), {})
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    for part in expected:
        assert part in message, message


@pytest.mark.slow
@pytest.mark.parametrize("program", ["simclr_tf.run", "simclr_tf.views"])
def test_a_config_error_is_exactly_one_line_on_stderr(tmp_path, program):
    """No TensorFlow start-up lines (oneDNN, cuda drivers, cuInit) before the error."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=subprocs.REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it (conftest sets it)
    proc = subprocess.run([sys.executable, "-m", program, f"--config={tmp_path}"],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == (f"{program}: error: --config={str(tmp_path)!r} is a directory, "
                           "not a config file. Pass --config=PATH.yaml (e.g. a run's "
                           "model_dir/config.yaml).\n"), proc.stderr


@pytest.mark.slow
def test_make_folder_error_is_exactly_one_line_on_stderr(tmp_path):
    """make_folder imports TensorFlow quietly too (was: five start-up lines first)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=subprocs.REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, "-m", "simclr_tf.data.make_folder",
                           "--dataset=no_such_dataset", f"--out={tmp_path / 'out'}"],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "simclr_tf.data.make_folder: error: Unknown dataset 'no_such_dataset'"), proc.stderr
    assert not (tmp_path / "out").exists()


_IMPORT_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796654226.651247   27161 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1796654226.651585   27161 cudart_stub.cc:31] Could not find cuda drivers\n"
    "I0000 00:00:1796654226.703415   27161 cpu_feature_guard.cc:227] This TensorFlow binary\n"
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild\n"
    "W0000 00:00:1796654226.703415   27161 some.cc:1] a warning\n"
    "E0000 00:00:1796654229.827128   27161 cuda_platform.cc:52] failed call to cuInit\n")


def test_tensorflow_start_up_lines_are_dropped_and_other_text_kept():
    from simclr_tf import env

    other = ("/x/y.py:3: UserWarning: something the user should see\n  warnings.warn(x)\n"
             "F0000 00:00:1796654229.827128   27161 a.cc:1] a fatal line stays\n")
    assert env.drop_start_up_lines(_IMPORT_NOISE + other) == other
    assert env.drop_start_up_lines(_IMPORT_NOISE, min_level=3) == ""
    kept = env.drop_start_up_lines(_IMPORT_NOISE, min_level=2)  # errors stay at level 2
    assert kept == "E0000 00:00:1796654229.827128   27161 cuda_platform.cc:52] failed call to cuInit\n"
    assert env.drop_start_up_lines(_IMPORT_NOISE, min_level=0) == _IMPORT_NOISE


def test_the_user_s_tensorflow_log_level_is_left_alone(monkeypatch):
    from simclr_tf import env

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert env.quiet_tensorflow_start() is False
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


# ---------------------------------------------------------------- full disk

def _write_to_full_disk(how):
    if how == "python":
        with open("/dev/full", "w") as f:
            f.write("x" * 100)
    else:
        with tf.io.gfile.GFile("/dev/full", "w") as f:
            f.write("x" * 100_000)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("how", ["python", "tf_gfile"])
def test_a_full_disk_during_a_write_is_one_run_error(how):
    with pytest.raises(errors.RunError) as info:
        with errors.writing("/runs/a/result.json", "result.json",
                            "the previous result.json is kept"):
            _write_to_full_disk(how)
    message = str(info.value)
    assert message == ("Could not write result.json '/runs/a/result.json': no space left on "
                       "device; the previous result.json is kept. Free disk space (or pass "
                       "another --model_dir) and rerun the same command to continue from "
                       "the last checkpoint.")


def test_a_full_disk_during_a_checkpoint_save_is_one_run_error():
    full = tf.errors.ResourceExhaustedError(
        None, None, "{{function_node __wrapped__SaveV2}} /runs/a/checkpoints/ckpt-3_temp/"
        "part-00000-of-00001.data-00000-of-00001.tempstate1; No space left on device [Op:SaveV2]")
    with pytest.raises(errors.RunError, match=r"^Could not write the checkpoint "
                       r"'/runs/a/checkpoints/ckpt-3': no space left on device; the previous "
                       r"checkpoint is kept\. Free disk space"):
        with errors.writing("/runs/a/checkpoints/ckpt-3", "the checkpoint",
                            "the previous checkpoint is kept"):
            raise full


@pytest.mark.parametrize("error", [
    tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"),
    PermissionError(13, "Permission denied"),
    ValueError("not a write error"),
], ids=["oom", "permission", "other"])
def test_other_write_errors_pass_through_unchanged(error):
    with pytest.raises(type(error)) as info:
        with errors.writing("/runs/a/result.json", "result.json"):
            raise error
    assert info.value is error


# ------------------------------------------------------- eval restore noise

def test_eval_restore_prints_no_unrestored_value_warnings(tmp_path, caplog):
    """``save_counter`` (which Checkpoint.read never restores) and state an eval
    never creates are a partial restore on purpose: no warnings about them."""
    import dataclasses
    import gc

    cfg = _cfg(tmp_path, dataset="offline_shapes")
    trained = runtime.build(cfg)
    trained.checkpointer.save(1)
    del trained
    gc.collect()
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        evaluated = runtime.build(dataclasses.replace(cfg, mode="eval"))
        assert evaluated.checkpointer.restore_finished("evaluate").endswith("ckpt-1")
        del evaluated
        gc.collect()
    noise = [r.getMessage() for r in caplog.records
             if "could not be found" in r.getMessage() or "unrestored" in r.getMessage()]
    assert noise == []
