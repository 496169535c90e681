"""python -m simclr_tf.data.make_folder: balanced image folders from TFDS (issue 31, item 5).

The TFDS side is mocked (``tfds.testing.mock_data``: no download); every
written image is compared with the same example read through ``tfds.load``
and decoded by PIL, a second path that shares nothing with the writer.
"""

import json
import os
import pathlib
import re
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from simclr_tf import config as config_lib
from simclr_tf.errors import ConfigError
from simclr_tf.data import datasets, make_folder, subsets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_EXAMPLES = 100  # per split; mock labels are random: 4..16 per class here


def _labels(num_classes=10, per_class=40, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


# ----------------------------------------------------------- per_class_indices
def test_per_class_indices_exact_balanced_deterministic_and_nested():
    labels = np.concatenate([_labels(), [-1] * 7, [3] * 5])  # unlabelled and a bigger class
    a = subsets.per_class_indices(labels, 12, seed=5)
    np.testing.assert_array_equal(np.bincount(labels[a]), np.full(10, 12))
    assert np.all(np.diff(a) > 0) and np.all(labels[a] >= 0)
    np.testing.assert_array_equal(a, subsets.per_class_indices(labels.copy(), 12, seed=5))
    assert not np.array_equal(a, subsets.per_class_indices(labels, 12, seed=6))
    assert set(subsets.per_class_indices(labels, 4, seed=5)) <= set(a)
    # The draw --label_fraction makes: a fraction giving 12 per class picks these.
    b, k = subsets.balanced_indices(_labels(), 0.3, seed=5)
    assert k == 12
    np.testing.assert_array_equal(b, subsets.per_class_indices(_labels(), 12, seed=5))


def test_per_class_indices_refuses_a_short_class_and_bad_sizes():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(subsets.SubsetError, match="class 1 has .3 examples.*at most 3"):
        subsets.per_class_indices(labels, 4)
    for bad in (0, -1, 2.5):
        with pytest.raises(subsets.SubsetError, match="per_class"):
            subsets.per_class_indices(labels, bad)
    with pytest.raises(subsets.SubsetError, match="no labelled"):
        subsets.per_class_indices(np.full(5, -1), 1)


# ------------------------------------------------------------ the folder itself
def _reference(split, data_dir):
    """(PIL-decoded images, labels) of the mocked split, in TFDS order."""
    decoders = tfds.decode.PartialDecoding(
        {"image": True, "label": True}, decoders={"image": tfds.decode.SkipDecoding()})
    examples = list(tfds.load("cifar10", split=split, data_dir=data_dir,
                              decoders=decoders).as_numpy_iterator())
    images = [np.asarray(Image.open(__import__("io").BytesIO(e["image"])).convert("RGB"))
              for e in examples]
    return images, np.array([int(e["label"]) for e in examples])


def _read_folder(root):
    """{split: [(class folder, index from the file name, pixels)]}, sorted."""
    found = {}
    for split in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, split)):
            continue
        for cls in sorted(os.listdir(os.path.join(root, split))):
            for name in sorted(os.listdir(os.path.join(root, split, cls))):
                assert re.fullmatch(r"\d+\.png", name), name
                with Image.open(os.path.join(root, split, cls, name)) as im:
                    pixels = np.asarray(im)
                found.setdefault(split, []).append((cls, int(name[:-4]), pixels))
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("make_folder")
    tfds_dir = str(tmp / "tfds")
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        out = {}
        for name, seed in (("a", 0), ("c", 1)):
            out[name] = make_folder.build(str(tmp / name), "cifar10", per_class=3,
                                          test_per_class=2, seed=seed, data_dir=tfds_dir)
        refs = {s: _reference(s, tfds_dir) for s in ("train", "test")}
        names = tfds.builder("cifar10", data_dir=tfds_dir).info.features["label"].names
        again = make_folder.build(str(tmp / "a"), "cifar10", per_class=3, test_per_class=2,
                                  seed=0, data_dir=tfds_dir)
        with pytest.raises(ConfigError, match="holds something else"):
            make_folder.build(str(tmp / "a"), "cifar10", per_class=4, test_per_class=2,
                              seed=0, data_dir=tfds_dir)
    return dict(tmp=tmp, manifests=out, refs=refs, names=names, again=again)


def test_folder_is_balanced_exact_and_equals_the_tfds_examples(built):
    root = built["tmp"] / "a"
    found = _read_folder(str(root))
    assert sorted(found) == ["test", "train"]
    assert sorted(os.listdir(root)) == ["make_folder.json", "test", "train"]
    for split, per_class in (("train", 3), ("test", 2)):
        images, labels = built["refs"][split]
        rows = found[split]
        counts = {}
        for cls, index, pixels in rows:
            counts[cls] = counts.get(cls, 0) + 1
            # The class folder names the TFDS label; the pixels are TFDS's, exactly.
            assert cls == built["names"][labels[index]]
            assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
            np.testing.assert_array_equal(pixels, images[index])
        assert counts == {n: per_class for n in built["names"]}
        manifest = built["manifests"]["a"][split]
        assert sorted(i for _, i, _ in rows) == manifest["indices"]
        assert manifest["num_images"] == 10 * per_class
        assert manifest["num_split_examples"] == MOCK_EXAMPLES
    with open(root / "make_folder.json") as f:
        on_disk = json.load(f)
    assert on_disk["seed"] == 0 and on_disk["train"]["per_class"] == 3
    assert not [n for n in os.listdir(root.parent) if n.startswith(f".{root.name}.")]


def test_the_examples_are_a_function_of_labels_and_seed(built):
    # Seed 0 and seed 1 pick other examples; each is the per-class draw from the
    # reference labels alone, so a rerun (or another machine) writes the same folder.
    a, c = (_read_folder(str(built["tmp"] / n)) for n in "ac")
    for split, k in (("train", 3), ("test", 2)):
        _, labels = built["refs"][split]
        ia, ic = ({i for _, i, _ in f[split]} for f in (a, c))
        assert ia != ic
        assert sorted(ia) == subsets.per_class_indices(labels, k, seed=0).tolist()
        assert sorted(ic) == subsets.per_class_indices(labels, k, seed=1).tolist()
    # A rerun with the same settings writes nothing and says so; others were refused.
    assert built["again"]["already_built"] and not built["manifests"]["a"]["already_built"]


def test_the_folder_reads_back_with_the_tfds_labels(built):
    ds, info = datasets.load("image_folder", "train", data_dir=str(built["tmp"] / "a"))
    labels = sorted(int(e["label"]) for e in ds.as_numpy_iterator())
    _, ref = built["refs"]["train"]
    manifest = built["manifests"]["a"]["train"]
    assert info.num_examples == 30
    assert labels == sorted(ref[manifest["indices"]].tolist())


def test_bad_sizes_are_refused_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="per_class"):
        make_folder.build(str(tmp_path / "x"), per_class=0)
    with pytest.raises(ConfigError, match="test_per_class"):
        make_folder.build(str(tmp_path / "x"), test_per_class=-1)
    assert not os.path.exists(tmp_path / "x")
    assert make_folder.main([f"--out={tmp_path / 'x'}", "--per_class=0"]) == 2


def test_a_short_class_leaves_no_folder(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        with pytest.raises(subsets.SubsetError, match="more than class"):
            make_folder.build(str(tmp_path / "out"), per_class=5, data_dir=str(tmp_path / "t"))
    assert not os.path.exists(tmp_path / "out")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.")]  # no temporaries


# ------------------------------------------ the recipe and the docs use the folder
def _readme_make_folder_out():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    outs = re.findall(r"python -m simclr_tf\.data\.make_folder[^\n]*?--out=(\S+)", text)
    assert outs, "README shows no make_folder command"
    assert len(set(outs)) == 1
    return outs[0]


def test_cpu_recipe_reads_the_folder_the_readme_builds():
    cfg = config_lib.resolve("cifar10_cpu")
    assert cfg.dataset == "image_folder"
    assert cfg.data_dir == _readme_make_folder_out()
    # 390 steps of batch 128 = 10 epochs of 5,000 images, 1 warm-up epoch (39 steps).
    assert (cfg.train_steps, cfg.train_batch_size, cfg.warmup_epochs) == (390, 128, 1)


def test_studies_commands_use_only_what_a_user_can_get():
    folder = _readme_make_folder_out()
    with open(os.path.join(REPO, "STUDIES.md")) as f:
        text = f.read()
    commands = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert commands
    for block in commands:
        assert "/work" not in block and "../shared" not in block, block
        for data_dir in re.findall(r"--data_dir=(\S+)", block):
            assert data_dir == folder, block
    assert "/work/" not in text and "../shared" not in text


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    """files.remove_dead_siblings (make_folder's and embed's cleanup): a killed
    writer's sibling goes; a live writer's, and the user's own look-alikes, stay."""
    import subprocess

    from simclr_tf import files

    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f".out.make_folder~{socket.gethostname()}~{dead.pid}~0abc1234"
    live = pathlib.Path(files.temp_sibling(out, ".make_folder"))
    keep = [tmp_path / "out.partial", tmp_path / ".out.make_folder-notes",
            tmp_path / f".out.embed~{socket.gethostname()}~{dead.pid}~0abc1234"]
    for d in [gone, live, *keep]:
        d.mkdir()
        (d / "f").write_text("x")
    assert live.name.startswith(".out.make_folder~")
    files.remove_dead_siblings(out, ".make_folder")
    assert not gone.exists()
    assert live.exists() and all(d.exists() for d in keep)
