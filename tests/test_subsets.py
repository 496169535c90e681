"""Tests for simclr_tf.data.subsets: class-balanced label fractions and subset files."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import optimizers
from simclr_tf.data import datasets, offline, pipeline, subsets


def _labels(num_classes=10, per_class=100, seed=0):
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


# ------------------------------------------------------------ balanced_indices
@pytest.mark.parametrize("fraction,per_class", [(0.1, 10), (0.01, 1), (0.001, 1),
                                                (0.055, 6), (1.0, 100)])
def test_balanced_fraction_is_class_balanced(fraction, per_class):
    labels = _labels()
    idx, k = subsets.balanced_indices(labels, fraction, seed=0)
    assert k == per_class
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10),
                                  np.full(10, per_class))
    assert np.all(np.diff(idx) > 0)  # sorted, unique


def test_same_seed_same_subset_other_seed_other_subset():
    labels = _labels()
    a, _ = subsets.balanced_indices(labels, 0.1, seed=3)
    b, _ = subsets.balanced_indices(labels.copy(), 0.1, seed=3)
    c, _ = subsets.balanced_indices(labels, 0.1, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.bincount(labels[c]), np.full(10, 10))


def test_smaller_fraction_is_nested_in_larger_for_one_seed():
    labels = _labels()
    small, _ = subsets.balanced_indices(labels, 0.02, seed=1)
    large, _ = subsets.balanced_indices(labels, 0.2, seed=1)
    assert set(small) <= set(large)


def test_unlabelled_never_picked_and_imbalance_capped_at_smallest_class():
    labels = np.array([0] * 50 + [1] * 5 + [-1] * 45)
    idx, k = subsets.balanced_indices(labels, 0.5, seed=0)
    # round(0.5 * 55 / 2) = 14 per class, capped at the 5 of class 1.
    assert k == 5
    np.testing.assert_array_equal(np.bincount(labels[idx]), [5, 5])


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(subsets.SubsetError, match="label_fraction"):
        subsets.balanced_indices(_labels(), fraction)


def test_no_labels_is_an_error():
    with pytest.raises(subsets.SubsetError, match="no labelled example"):
        subsets.balanced_indices(np.full(10, -1), 0.5)


# ----------------------------------------------------------- datasets/pipeline
def test_select_on_offline_shapes_matches_its_labels():
    sub = subsets.select("offline_shapes", "train", None, 0.01, None, 0)
    assert (sub.num_selected, sub.per_class, sub.num_examples) == (100, 10, 10_000)
    _, y = offline.generate("train")
    np.testing.assert_array_equal(np.bincount(y[sub.indices]), np.full(10, 10))
    assert subsets.select("offline_shapes", "train", None, 1.0, None, 0) is None


@pytest.mark.slow
def test_finetune_stream_holds_only_the_subset_and_distill_stream_masks_the_rest():
    sub = subsets.select("offline_shapes", "test", None, 0.05, None, 0)  # 10 per class
    x, y = offline.generate("test")
    cfg = config_lib.Config(dataset="offline_shapes", train_split="test", image_size=16)
    ds, info = pipeline.build_finetune_dataset(cfg.data, 100, label_subset=sub)
    assert info.num_examples == 100
    assert optimizers.steps_per_epoch(info.num_examples, 100) == 1
    _, labels = next(iter(ds))
    np.testing.assert_array_equal(np.bincount(labels.numpy()), np.full(10, 10))
    ds, info = pipeline.build_finetune_dataset(cfg.data, 500, label_subset=sub,
                                               keep_unlabeled=True)
    assert info.num_examples == 2000
    labels = np.concatenate([b[1].numpy() for b in ds.take(4)])
    assert np.sum(labels >= 0) == 100 and np.sum(labels == -1) == 1900
    # The pretraining stream keeps every image too, labels only in the subset.
    ds, _ = pipeline.build_train_dataset(cfg.data, cfg.augment, 500, label_subset=sub)
    labels = np.concatenate([b[1].numpy() for b in ds.take(4)])
    assert np.sum(labels >= 0) == 100


def test_restrict_keeps_the_selected_records_in_order():
    source = datasets.open_source("offline_shapes", "test[:50]")
    sub = subsets.LabelSubset(np.array([3, 7, 20]), 50, None, "test", 3)
    kept = list(subsets.restrict(source, sub).records.as_numpy_iterator())
    _, y = offline.generate("test")
    assert [int(r["label"]) for r in kept] == y[[3, 7, 20]].tolist()
    with pytest.raises(subsets.SubsetError, match="50 examples"):
        subsets.restrict(datasets.open_source("offline_shapes", "test[:40]"), sub)


# ----------------------------------------------------------------- subset files
def test_subset_file_of_indices_on_offline_shapes(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# ids of offline_shapes test\n5\n\n0\n  12  \n99999\n")
    sub = subsets.select("offline_shapes", "test", None, 1.0, str(path), 0)
    np.testing.assert_array_equal(sub.indices, [0, 5, 12])
    assert sub.per_class is None and sub.num_labelled == 3


def _image_folder(root):
    for split, names in (("train", ("a.png", "b.png", "c.png")), ("test", ("a.png",))):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i, name in enumerate(names):
                pixels = np.full([8, 8, 3], 40 * i + (cls == "dog") * 100, np.uint8)
                (root / split / cls / name).write_bytes(
                    tf.io.encode_png(pixels).numpy())


def test_subset_file_matches_image_folder_paths_and_file_names(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path / "cache"))
    root = tmp_path / "root"
    _image_folder(root)
    ids = tmp_path / "ids.txt"
    # relative to the split folder, relative to ROOT, a bare file name (both classes).
    ids.write_text("cat/a.png\ntrain/dog/b.png\nc.png\nnot/there.png\n")
    sub = subsets.select("image_folder", "train", str(root), 1.0, str(ids), 0)
    source = datasets.open_source("image_folder", "train", data_dir=str(root))
    paths = [r["path"].decode() for r in source.records.as_numpy_iterator()]
    chosen = sorted(p[len(str(root)) + 1:] for p in np.array(paths)[sub.indices])
    assert chosen == ["train/cat/a.png", "train/cat/c.png", "train/dog/b.png",
                      "train/dog/c.png"]
    cfg = config_lib.Config(dataset="image_folder", train_split="train", image_size=8,
                            data_dir=str(root))
    ds, info = pipeline.build_finetune_dataset(cfg.data, 4, label_subset=sub)
    assert info.num_examples == 4


def test_subset_file_errors(tmp_path):
    with pytest.raises(subsets.SubsetError, match="does not exist"):
        subsets.select("offline_shapes", "test", None, 1.0, str(tmp_path / "nope"), 0)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(subsets.SubsetError, match="lists no example id"):
        subsets.select("offline_shapes", "test", None, 1.0, str(empty), 0)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("n01440764_10026.JPEG\n")
    with pytest.raises(subsets.SubsetError, match="matches no example"):
        subsets.select("offline_shapes", "test", None, 1.0, str(wrong), 0)


# ------------------------------------------------------------------------ config
@pytest.mark.parametrize("changes,match", [
    ({"label_fraction": 0.0}, "label_fraction"),
    ({"label_fraction": 1.5}, r"label_fraction.*\(0, 1\]"),
    ({"label_subset_file": "/no/such/file.txt"}, "label_subset_file.*does not exist"),
    ({"label_fraction": 0.1, "label_subset_file": __file__}, "not both"),
])
def test_config_rejects_bad_subset_settings(changes, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.resolve(None, changes)


def test_session_fine_tunes_on_the_subset_and_counts_its_labels():
    from simclr_tf import runtime

    base = dict(train_mode="finetune", image_size=16, train_steps=1,
                label_fraction=0.01, model_dir="/tmp/unused_subset_session")
    with pytest.raises(config_lib.ConfigError, match="only 100 examples in the labelled"):
        runtime.build(config_lib.resolve(None, dict(base, train_batch_size=128)))
    exp = runtime.build(config_lib.resolve(None, dict(base, train_batch_size=50)))
    assert exp.train_info.num_examples == 100
    assert exp.steps.steps_per_epoch == 2
    assert exp.num_labeled_examples == 100
