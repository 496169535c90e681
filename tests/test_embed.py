"""simclr_tf.embed: representations on disk, checked against a second read of the same images.

The second read never goes through simclr_tf's pipeline: the images come from
the offline generator's arrays or from the files themselves (Pillow), and the
exported SavedModel runs them through ``keras.layers.TFSMLayer``.
"""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_tf import config as config_lib
from simclr_tf import embed, export, runtime, tasks
from simclr_tf.data import offline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")
IMAGE_SIZE = 32  # the offline images' own size: eval preprocessing leaves them as they are
ATOL = 2e-5


def build_exported(model_dir, seed=0):
    """A tiny random SimCLR model (BN statistics randomised) exported to ``model_dir``."""
    rng = np.random.default_rng(seed)
    cfg = config_lib.resolve(SMOKE, dict(image_size=IMAGE_SIZE))
    model = tasks.build_model(cfg, offline.NUM_CLASSES)
    model(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]))
    for v in model.non_trainable_weights:
        if "moving_mean" in v.path:
            v.assign(rng.normal(0.0, 0.3, v.shape).astype("float32"))
        elif "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))
    export.export_model(model, model_dir, IMAGE_SIZE, keras_file=False)
    return model_dir


_LAYERS = {}


def serve(saved_model, images):
    """The second read: ``{output: array}`` of float images [N, S, S, 3] through TFSMLayer."""
    if saved_model not in _LAYERS:
        _LAYERS[saved_model] = keras.layers.TFSMLayer(saved_model, call_endpoint="serve")
    layer = _LAYERS[saved_model]
    outs = [layer(tf.constant(images[i:i + 64], tf.float32))
            for i in range(0, len(images), 64)]
    return {k: np.concatenate([np.asarray(o[k]) for o in outs]) for k in outs[0]}


def read_index(out):
    with open(os.path.join(out, "index.csv"), newline="") as f:
        return list(csv.DictReader(f))


def run_main(main, *argv):
    """An argparse tool's ``main(ARGV)`` in this process; returns the exit status (0: none)."""
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


def run_embed(*argv):
    """``python -m simclr_tf.embed ARGV`` in this process."""
    return run_main(embed.main, *argv)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_exported(str(tmp_path_factory.mktemp("embed") / "run"))


@pytest.mark.slow
def test_offline_split_h_and_z_equal_the_savedmodel_on_the_same_images(model_dir, tmp_path,
                                                                      capsys):
    out = tmp_path / "emb"
    # 40 images in batches of 16: the last batch is padded, and the padding must not show.
    assert run_embed("--model_dir", model_dir, "--dataset=offline_shapes",
                     "--split=test[:40]", "--out", out, "--z", "--batch_size=16") == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}/h.npy {out}/z.npy {out}/index.csv {out}/embed.json" in printed
    h, z = np.load(out / "h.npy"), np.load(out / "z.npy")
    x, y = offline.generate("test")
    expected = serve(os.path.join(model_dir, "saved_model"), x[:40] / 255.0)
    assert h.shape == expected["final_avg_pool"].shape and h.dtype == np.float32
    np.testing.assert_allclose(h, expected["final_avg_pool"], atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(z, expected["proj_head_output"], atol=ATOL, rtol=1e-5)
    index = read_index(out)
    assert [r["row"] for r in index] == [str(i) for i in range(40)]
    assert [r["id"] for r in index] == [f"offline_shapes/test[:40]/{i}" for i in range(40)]
    assert [int(r["label"]) for r in index] == y[:40].tolist()
    assert [r["class"] for r in index] == [offline.CLASS_NAMES[c] for c in y[:40]]
    meta = json.loads((out / "embed.json").read_text())
    assert meta["num_rows"] == 40 and meta["dims"] == {"h": h.shape[1], "z": z.shape[1]}
    assert not [p for p in os.listdir(tmp_path) if p != "emb"]  # no temporary left

    # A previous embed output is replaced; a folder holding anything else is refused.
    assert run_embed("--model_dir", model_dir, "--dataset=offline_shapes",
                     "--split=test[40:45]", "--out", out) == 0
    assert np.load(out / "h.npy").shape[0] == 5 and not (out / "z.npy").exists()
    np.testing.assert_allclose(np.load(out / "h.npy"), np.asarray(serve(
        os.path.join(model_dir, "saved_model"), x[40:45] / 255.0)["final_avg_pool"]),
        atol=ATOL, rtol=1e-5)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert run_embed("--model_dir", model_dir, "--dataset=offline_shapes", "--split=test[:5]",
                     "--out", mine) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an embed output" in err[0] and "Pass a new --out" in err[0]
    assert os.listdir(mine) == ["notes.txt"]


def _write_png(path, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.mark.slow
def test_unlabelled_folder_and_image_list_join_on_paths(model_dir, tmp_path, capsys):
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    for name in ("b.png", "a.png", "c.PNG", "nested/d.png", "nested/deeper/e.png"):
        _write_png(photos / name, rng)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (photos / "notes.txt").write_text("not an image")
    saved_model = os.path.join(model_dir, "saved_model")

    def second_read(paths):
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        return serve(saved_model, images / 255.0)["final_avg_pool"]

    out = tmp_path / "emb_photos"
    assert run_embed("--model_dir", model_dir, "--images", photos, "--out", out,
                     "--batch_size=4") == 0
    printed = capsys.readouterr().out
    assert "skipped 1 file(s) that could not be read: " in printed and "broken.png" in printed
    index = read_index(out)
    paths = [r["id"] for r in index]
    assert sorted(os.path.relpath(p, photos) for p in paths) == [
        "a.png", "b.png", "c.PNG", "nested/d.png", "nested/deeper/e.png"]
    assert {r["label"] for r in index} == {"-1"} and {r["class"] for r in index} == {""}
    np.testing.assert_allclose(np.load(out / "h.npy"), second_read(paths), atol=ATOL,
                               rtol=1e-5)
    meta = json.loads((out / "embed.json").read_text())
    assert meta["skipped_files"] == [str(photos / "broken.png")]
    assert meta["class_names"] is None and meta["dataset"] == "image_files"

    # A list: its order is kept, relative paths are read from the list's folder,
    # a missing file is skipped and listed.
    listing = tmp_path / "list.txt"
    listing.write_text("# my picks\nphotos/nested/d.png\n\nphotos/a.png\nphotos/gone.png\n"
                       f"{photos / 'b.png'}\n")
    out2 = tmp_path / "emb_list"
    assert run_embed("--model_dir", model_dir, "--images", listing, "--out", out2) == 0
    listed = [r["id"] for r in read_index(out2)]
    assert listed == [str(tmp_path / "photos/nested/d.png"), str(tmp_path / "photos/a.png"),
                      str(photos / "b.png")]
    np.testing.assert_allclose(np.load(out2 / "h.npy"), second_read(listed), atol=ATOL,
                               rtol=1e-5)
    assert json.loads((out2 / "embed.json").read_text())["skipped_files"] == [
        str(tmp_path / "photos/gone.png")]


def test_a_checkpoint_only_model_dir_embeds_its_newest_checkpoint(tmp_path):
    """A run that trained but never exported: the checkpoint is restored (weights=auto)."""
    model_dir = str(tmp_path / "run")
    cfg = config_lib.resolve(SMOKE, dict(image_size=IMAGE_SIZE, model_dir=model_dir,
                                         train_split="train[:64]", eval_split="test[:16]"))
    exp = runtime.build(cfg)
    for v in exp.model.non_trainable_weights:  # statistics a restore must bring back
        if "moving_mean" in v.path:
            v.assign(np.full(v.shape, 0.2, "float32"))
    exp.run_dir.makedirs()
    exp.run_dir.write_config(cfg)
    exp.checkpointer.save(0)
    out = tmp_path / "emb"
    assert run_embed("--model_dir", model_dir, "--out", out, "--split=test[:12]") == 0
    meta = json.loads((out / "embed.json").read_text())
    assert meta["model"].startswith("checkpoint ") and meta["dataset"] == "offline_shapes"
    x, y = offline.generate("test")
    # The second read: the model that was saved, called directly.
    reference = exp.model(tf.constant(x[:12] / 255.0, tf.float32), training=False)
    np.testing.assert_allclose(np.load(out / "h.npy"), reference["final_avg_pool"],
                               atol=ATOL, rtol=1e-5)
    assert [int(r["label"]) for r in read_index(out)] == y[:12].tolist()

    # An export older than the checkpoint (training went on without exporting):
    # auto takes the checkpoint; once the export is the newer, the export.
    build_exported(model_dir, seed=3)
    pb = os.path.join(model_dir, "saved_model", "saved_model.pb")
    index = [p for p in os.listdir(os.path.join(model_dir, "checkpoints")) if p.endswith(".index")]
    newest = max(os.stat(os.path.join(model_dir, "checkpoints", p)).st_mtime for p in index)
    os.utime(pb, (newest - 60, newest - 60))
    assert run_embed("--model_dir", model_dir, "--out", out, "--split=test[:12]") == 0
    assert json.loads((out / "embed.json").read_text())["model"].startswith("checkpoint ")
    np.testing.assert_allclose(np.load(out / "h.npy"), reference["final_avg_pool"],
                               atol=ATOL, rtol=1e-5)
    os.utime(pb, (newest + 60, newest + 60))
    assert run_embed("--model_dir", model_dir, "--out", out, "--split=test[:12]") == 0
    assert json.loads((out / "embed.json").read_text())["model"].startswith("export ")
    np.testing.assert_allclose(
        np.load(out / "h.npy"),
        serve(os.path.join(model_dir, "saved_model"), x[:12] / 255.0)["final_avg_pool"],
        atol=ATOL, rtol=1e-5)


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "simclr_tf.embed", f"--model_dir={tmp_path / 'nothing'}",
         f"--out={tmp_path / 'emb'}", "--split=test"],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "simclr_tf.embed" in line]
    assert lines == [f"simclr_tf.embed: error: --model_dir={str(tmp_path / 'nothing')!r} is "
                     "not a directory: pass a model_dir, a converted official model or an "
                     "exported saved_model/ directory."]
    assert "Traceback" not in proc.stderr and not (tmp_path / "emb").exists()
