"""Tests for simclr_tf.data.pipeline (tf.data input pipelines)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf import config as config_lib
from simclr_tf import optimizers, tasks
from simclr_tf.data import augment
from simclr_tf.data import datasets
from simclr_tf.data import offline
from simclr_tf.data import pipeline

NAME = "offline_shapes"
SPLIT = "train[:128]"  # 128 examples: 4 steps of 32 per epoch
N = 128
B = 32
S = 32


def _numpy(x):
    """A batch's inputs as numpy: a dict of views stays a dict."""
    if isinstance(x, dict):
        return {k: v.numpy() for k, v in x.items()}
    return x.numpy()


def _take(ds, n):
    xs, ys = [], []
    for x, y in ds.take(n):
        xs.append(_numpy(x))
        ys.append(y.numpy())
    return xs, ys


def _assert_views_equal(a, b):
    """Two batches of views: the same views, bit for bit."""
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _cfg(**settings):
    """A Config of NAME, SPLIT and S unless ``settings`` say otherwise."""
    settings = {"dataset": NAME, "train_split": SPLIT, "image_size": S, **settings}
    return config_lib.Config(**settings)


def _train(shard=B, *, label_subset=None, clean_view=False, shuffle_buffer=None, **settings):
    """build_train_dataset of ``_cfg(**settings)``'s data and augment sections."""
    cfg = _cfg(**settings)
    return pipeline.build_train_dataset(cfg.data, cfg.augment, shard, label_subset=label_subset,
                                        clean_view=clean_view, shuffle_buffer=shuffle_buffer)


def _raw_view(image, key):
    """A view function without augmentation: exposes which example is where."""
    del key
    return tf.cast(image, tf.float32)


def _raw_stream(batch_size=B, num_shards=1, shard_index=0, start_epoch=0):
    shard = pipeline.Shard(batch_size, num_shards, shard_index, start_epoch)
    return pipeline._build_stream(_cfg(seed=0).data, shard, _raw_view, shuffle_buffer=None,
                                  label_subset=None, keep_unlabeled=False)


def _example_ids(images):
    """Maps raw uint8 images (as float) to their index in the offline train split."""
    x, _ = offline.generate("train")
    lookup = {img.tobytes(): i for i, img in enumerate(x[:N])}
    return [lookup[img.astype(np.uint8).tobytes()] for img in images]


def test_steps_per_epoch():
    assert optimizers.steps_per_epoch(10_000, 256) == 39
    assert optimizers.steps_per_epoch(512, 256) == 2
    assert optimizers.steps_per_epoch(100, 256) == 0
    with pytest.raises(ValueError):
        optimizers.steps_per_epoch(100, 0)


def test_train_batches_shapes_ranges_and_views():
    ds, info = _train(seed=0)
    assert info.num_examples == N and info.num_classes == 10
    assert {name: (spec.shape.as_list(), spec.dtype) for name, spec in
            ds.element_spec[0].items()} == {"view1": ([B, S, S, 3], tf.float32),
                                            "view2": ([B, S, S, 3], tf.float32)}
    assert ds.element_spec[1].shape.as_list() == [B]
    assert ds.element_spec[1].dtype == tf.int32
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
    (x,), (y,) = _take(ds, 1)
    view1, view2 = x["view1"], x["view2"]
    assert min(view1.min(), view2.min()) >= 0.0 and max(view1.max(), view2.max()) <= 1.0
    assert ((y >= 0) & (y < 10)).all()
    per_example_diff = np.abs(view1 - view2).mean(axis=(1, 2, 3))
    assert (per_example_diff > 1e-3).all()


def test_train_labels_follow_their_images(tmp_path, monkeypatch):
    """Each label belongs to its image: the images encode their label.

    An image folder whose class-c images are flat gray at ``40 c + 20 +- 8``;
    crop and flip keep a flat image's value, so after shuffling, batching and
    both views, each view's value tells its true label.
    """
    from PIL import Image

    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path / "cache"))
    root = tmp_path / "root"
    rng = np.random.default_rng(0)
    for c in range(5):
        (root / "train" / f"c{c}").mkdir(parents=True)
        for i in range(13):
            value = 40 * c + 20 + int(rng.integers(-8, 9))
            Image.fromarray(np.full((20 + i, 24, 3), value, np.uint8)).save(
                root / "train" / f"c{c}" / f"{i}.png")
    ds, info = _train(
        16, dataset="image_folder", train_split="train", data_dir=str(root), seed=0,
        view1_augmentations=("crop", "flip"), view2_augmentations=("crop", "flip"))
    assert info.num_examples == 65 and info.num_classes == 5
    seen = set()
    xs, ys = _take(ds, 8)
    for x, y in zip(xs, ys):
        for view in (x["view1"], x["view2"]):
            value = view.mean(axis=(1, 2, 3)) * 255.0
            np.testing.assert_array_equal(np.round((value - 20) / 40).astype(int), y)
        seen.update(y.tolist())
    assert seen == set(range(5))


def test_train_same_seed_same_stream_and_different_seed_differs():
    a, _ = _train(seed=7)
    b, _ = _train(seed=7)
    c, _ = _train(seed=8)
    xa, ya = _take(a, 2)
    xb, yb = _take(b, 2)
    xc, yc = _take(c, 2)
    for i in range(2):
        _assert_views_equal(xa[i], xb[i])
        np.testing.assert_array_equal(ya[i], yb[i])
    assert not np.array_equal(ya[0], yc[0])
    # The mean over both views (they have the same size).
    assert np.mean([np.abs(xa[0][v] - xc[0][v]).mean() for v in ("view1", "view2")]) > 1e-2


def test_global_tf_seed_does_not_change_the_stream():
    a, _ = _train(seed=1)
    (xa,), (ya,) = _take(a, 1)
    tf.random.set_seed(1234)
    try:
        b, _ = _train(seed=1)
        (xb,), (yb,) = _take(b, 1)
    finally:
        tf.random.set_seed(None)
    np.testing.assert_array_equal(ya, yb)
    _assert_views_equal(xa, xb)


def test_resume_from_epoch_matches_uninterrupted_stream():
    steps = optimizers.steps_per_epoch(N, B)
    assert steps == 4
    full, _ = _train(seed=3)
    xs, ys = _take(full, 2 * steps)
    resumed, _ = _train(pipeline.Shard(B, start_epoch=1), seed=3)
    (xr, xr2), (yr, yr2) = _take(resumed, 2)
    np.testing.assert_array_equal(yr, ys[steps])
    _assert_views_equal(xr, xs[steps])
    np.testing.assert_array_equal(yr2, ys[steps + 1])
    _assert_views_equal(xr2, xs[steps + 1])
    # Resuming inside an epoch: skip the batches already seen.
    mid, _ = _train(pipeline.Shard(B, start_epoch=1, skip_batches=2), seed=3)
    (xm, xm2), (ym, ym2) = _take(mid, 2)
    np.testing.assert_array_equal(ym, ys[steps + 2])
    _assert_views_equal(xm, xs[steps + 2])
    _assert_views_equal(xm2, xs[steps + 3])
    # Epochs are reshuffled: epoch 1 does not repeat epoch 0's order.
    assert not np.array_equal(np.concatenate(ys[:steps]), np.concatenate(ys[steps:]))


def test_epochs_are_permutations_and_cache_gives_same_stream():
    ds, _ = _raw_stream()
    xs, _ = _take(ds, 8)
    epoch0 = _example_ids(np.concatenate(xs[:4]))
    epoch1 = _example_ids(np.concatenate(xs[4:]))
    assert sorted(epoch0) == list(range(N))  # each example exactly once per epoch
    assert sorted(epoch1) == list(range(N))
    assert epoch0 != epoch1 and epoch0 != list(range(N))
    # cache_dataset caches decoded images before shuffling; the stream is unchanged.
    cached, _ = _train(seed=0, cache_dataset=True)
    plain, _ = _train(seed=0, cache_dataset=False)
    (xc, xc2), (yc, yc2) = _take(cached, 2)
    (xp, xp2), (yp, yp2) = _take(plain, 2)
    np.testing.assert_array_equal(yc, yp)
    _assert_views_equal(xc, xp)
    _assert_views_equal(xc2, xp2)


def test_epoch_drops_the_tail_so_epochs_stay_aligned():
    # 128 examples, batch 48: 2 steps (96 examples) per epoch, 32 dropped.
    ds, _ = _raw_stream(batch_size=48)
    xs, _ = _take(ds, 4)
    epoch0 = _example_ids(np.concatenate(xs[:2]))
    epoch1 = _example_ids(np.concatenate(xs[2:]))
    assert len(set(epoch0)) == 96 and len(set(epoch1)) == 96
    assert set(epoch0) != set(epoch1)  # a different random tail is dropped
    resumed, _ = _raw_stream(batch_size=48, start_epoch=1)
    (xr,), _ = _take(resumed, 1)
    np.testing.assert_array_equal(xr, xs[2])


def test_train_sharding_partitions_each_epoch():
    ids = []
    for shard in range(2):
        ds, _ = _raw_stream(batch_size=16, num_shards=2, shard_index=shard)
        xs, _ = _take(ds, 4)  # 128 / (16 * 2) = 4 steps per epoch
        ids.append(_example_ids(np.concatenate(xs)))
    assert set(ids[0]).isdisjoint(ids[1])
    assert sorted(ids[0] + ids[1]) == list(range(N))
    assert set(ids[0]) == set(range(0, N, 2))  # shard before shuffle: i % 2 == 0


def test_eval_dataset_keeps_partial_batch_and_matches_eval_preprocessing():
    ds, info = pipeline.build_eval_dataset(_cfg(eval_split="test[:150]").data, 64)
    xs, ys = _take(ds, 10)
    assert [len(y) for y in ys] == [64, 64, 22]
    assert sum(len(y) for y in ys) == info.num_examples == 150
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    assert x.dtype == np.float32 and x.shape == (150, S, S, 3) and y.dtype == np.int32
    raw, labels = offline.generate("test")
    np.testing.assert_array_equal(y, labels[:150])
    ref = np.stack([augment.preprocess_for_eval(tf.constant(img), S).numpy() for img in raw[:3]])
    np.testing.assert_allclose(x[:3], ref, atol=1e-6)
    # Second path: at 32 px the eval transform is just scaling to [0, 1].
    np.testing.assert_allclose(x, raw[:150] / 255.0, atol=1e-5)
    # One pass: the dataset ends.
    assert ds.cardinality() == 3


def test_eval_sharding_partitions_the_split():
    raw, _ = offline.generate("test")
    lookup = {img.tobytes(): i for i, img in enumerate(raw[:150])}
    ids = []
    for shard in range(2):
        ds, _ = pipeline.build_eval_dataset(
            _cfg(eval_split="test[:150]").data, pipeline.Shard(16, 2, shard), cache=True)
        for _ in range(2):  # a cached second pass gives the same examples
            images = np.concatenate([x.numpy() for x, _ in ds])
            got = [lookup[np.round(img * 255).astype(np.uint8).tobytes()] for img in images]
        ids.append(got)
    assert set(ids[0]).isdisjoint(ids[1])
    assert sorted(ids[0] + ids[1]) == list(range(150))


def test_eval_dataset_of_the_data_section_and_the_task_stream():
    """build_eval_dataset(cfg.data, shard) reads the section's eval_split, image_size
    and cache_dataset: its batches and the task's eval stream (what runtime evaluates)
    are the shard's examples in file order, each preprocess_for_eval'd, bit for bit."""
    cfg = _cfg(eval_split="test[:150]", cache_dataset=True)
    task = tasks.PretrainTask(cfg.loss)
    raw, labels = offline.generate("test")
    for shard in (pipeline.Shard(64), pipeline.Shard(16, num_shards=2, shard_index=1)):
        rows = slice(shard.shard_index, 150, shard.num_shards)
        want = np.stack([augment.preprocess_for_eval(tf.constant(img), S).numpy()
                         for img in raw[rows]])
        sizes = [min(shard.batch_size, len(want) - i)
                 for i in range(0, len(want), shard.batch_size)]
        for ds, info in (pipeline.build_eval_dataset(cfg.data, shard),
                         task.build_eval_inputs(cfg.data, shard)):
            assert info.num_examples == 150
            for _ in range(2):  # the cached second pass is the same
                xs, ys = _take(ds, 20)
                assert [len(y) for y in ys] == sizes
                np.testing.assert_array_equal(np.concatenate(xs), want)
                np.testing.assert_array_equal(np.concatenate(ys), labels[rows])
    # split= reads another split of the same dataset; an int is a one-shard batch size.
    ds, info = pipeline.build_eval_dataset(cfg.data, 50, split="train[:100]", cache=False)
    assert info.num_examples == 100 and [len(y) for y in _take(ds, 5)[1]] == [50, 50]


def test_finetune_dataset():
    ds, info = pipeline.build_finetune_dataset(_cfg(seed=0).data, B)
    assert ds.element_spec[0].shape.as_list() == [B, S, S, 3]
    (x,), (y,) = _take(ds, 1)
    assert x.min() >= 0.0 and x.max() <= 1.0 and y.dtype == np.int32
    # Crop + flip only: no view is turned gray, unlike 20% of SimCLR views.
    spread = (x.max(axis=-1) - x.min(axis=-1)).max(axis=(1, 2))
    assert (spread > 0.05).all()
    again, _ = pipeline.build_finetune_dataset(_cfg(seed=0).data, B)
    (x2,), (y2,) = _take(again, 1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_batch_larger_than_dataset_raises():
    with pytest.raises(ValueError) as e:
        _train(64, train_split="test[:50]")
    assert "64" in str(e.value) and "50" in str(e.value) and "batch size" in str(e.value)
    with pytest.raises(ValueError, match="num_shards"):
        _train(pipeline.Shard(32, num_shards=2), train_split="test[:50]")
    with pytest.raises(ValueError):
        _train(pipeline.Shard(B, num_shards=2, shard_index=2))


def test_tfds_mock_through_pipelines(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        train, info = _train(8, dataset="cifar10", train_split="train", image_size=24,
                             data_dir=str(tmp_path), seed=0)
        assert info.num_examples == 20 and info.num_classes == 10
        (x, x2), (y, _) = _take(train, 2)
        ev, _ = pipeline.build_eval_dataset(
            _cfg(dataset="cifar10", eval_split="test", image_size=24,
                 data_dir=str(tmp_path)).data, 8)
        eval_batches = _take(ev, 10)
    assert sorted(x) == ["view1", "view2"] and y.dtype == np.int32
    for view in x.values():
        assert view.shape == (8, 24, 24, 3) and view.dtype == np.float32
        assert 0.0 <= view.min() and view.max() <= 1.0
    assert [len(b) for b in eval_batches[1]] == [8, 8, 4]
    assert eval_batches[0][0].shape == (8, 24, 24, 3)


def test_image_folder_through_pipelines(tmp_path, monkeypatch):
    pil = pytest.importorskip("PIL.Image")
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "root"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(5):
            h, w = rng.integers(20, 60, 2)
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pil.fromarray(img).save(root / "train" / cls / f"{i}.png")
    (root / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff junk")
    for cache in (False, True):
        ds, info = _train(4, dataset="image_folder", train_split="train", image_size=16,
                          data_dir=str(root), cache_dataset=cache)
        assert info.num_examples == 10 and info.skipped == 1
        (x, _), (y, _) = _take(ds, 2)
        assert {name: view.shape for name, view in x.items()} == {
            "view1": (4, 16, 16, 3), "view2": (4, 16, 16, 3)}
    ev, _ = pipeline.build_eval_dataset(
        _cfg(dataset="image_folder", eval_split="train", image_size=16, data_dir=str(root)).data, 4)
    labels = np.concatenate([y.numpy() for _, y in ev])
    np.testing.assert_array_equal(labels, [0] * 5 + [1] * 5)


def test_asymmetric_views_from_augmentation_lists():
    """view2 = "none" is the plain image (the paper's Figure 5 identity branch);
    the default lists reproduce the default pipeline bit for bit."""
    ds, _ = _train(seed=5, view1_augmentations="sobel", view2_augmentations=())
    (x,), _ = _take(ds, 1)
    view1, view2 = x["view1"], x["view2"]
    ids = _example_ids(np.round(view2 * 255.0))  # every view 2 is a raw image
    images, _ = offline.generate("train")
    np.testing.assert_allclose(view2, images[ids] / 255.0, atol=1e-6)
    np.testing.assert_allclose(view1[0], augment.sobel_filter(view2[0]).numpy(), atol=1e-5)
    a, _ = _train(seed=5)
    b, _ = _train(seed=5, view1_augmentations=("crop", "flip", "color"),
                  view2_augmentations="crop,flip,color")
    _assert_views_equal(_take(a, 1)[0][0], _take(b, 1)[0][0])


def _first_batch(seed=3, clean_view=False, **views):
    ds, _ = _train(seed=seed, clean_view=clean_view, **views)
    (x,), _ = _take(ds, 1)
    return x


def _example_keys(seed, ids):
    """The stateless key of each example of epoch 0, as _build_stream derives it."""
    fold = tf.random.experimental.stateless_fold_in
    epoch_key = fold(pipeline._base_key(seed), tf.constant(0, tf.int64))
    return [fold(epoch_key, tf.constant(i, tf.int64)) for i in ids]


def test_shared_crop_is_one_draw_for_both_views():
    """shared_augmentations=crop and no view augmentations: both views are the
    same random crop of the image, drawn from the example's shared seed."""
    plain = _first_batch(view1_augmentations=(), view2_augmentations=())
    x = _first_batch(shared_augmentations="crop", view1_augmentations=(),
                     view2_augmentations=())
    np.testing.assert_array_equal(x["view1"], x["view2"])
    # Same order as the plain stream (the order never depends on augmentation),
    # but a crop: not the resized original.
    diff = np.abs(x["view1"] - plain["view1"]).mean(axis=(1, 2, 3))
    assert (diff > 1e-3).mean() > 0.9, diff
    ids = _example_ids(np.round(plain["view1"] * 255.0))
    images, _ = offline.generate("train")
    for row, (i, key) in enumerate(zip(ids[:4], _example_keys(3, ids[:4]))):
        shared_key = tf.random.experimental.stateless_fold_in(
            key, pipeline._SHARED_SEED_SLOT)
        crop = augment.augment_view(images[i], shared_key, S, ("crop",)).numpy()
        np.testing.assert_allclose(x["view1"][row], crop, atol=1e-6)


def test_the_stream_applies_the_parsed_views_without_parsing_again(monkeypatch):
    """cfg.augment is parsed once, by the config; the stream applies its tuples
    (augment.apply_view), and its views are augment_view's of the same names."""
    cfg = _cfg(seed=3, view1_augmentations="crop,noise,gray", view2_augmentations="flip,cutout",
               shared_augmentations="crop", color_jitter_strength=0.7)
    spec = cfg.augment
    assert (spec.shared, spec.view1, spec.view2) == (
        ("crop",), ("crop", "noise", "gray"), ("flip", "cutout"))

    def parse_again(*args, **kwargs):
        raise AssertionError("the augmentation names were parsed again")

    monkeypatch.setattr(augment, "parse_augmentations", parse_again)
    ds, _ = pipeline.build_train_dataset(cfg.data, spec, 4)
    (x,), _ = _take(ds, 1)
    monkeypatch.undo()
    images, _ = offline.generate("train")
    params = augment.ViewParams(S, 0.7, cfg.color_jitter_impl)
    for name in spec.view1, ("color",), ():
        for seed in range(3):
            key = tf.constant([seed, 11], tf.int64)
            np.testing.assert_array_equal(
                augment.apply_view(images[seed], key, name, params).numpy(),
                augment.augment_view(images[seed], key, S, ",".join(name) or "none",
                                     color_jitter_strength=0.7).numpy())
    assert x["view1"].shape == (4, S, S, 3)


def test_view_augmentations_apply_on_top_of_the_shared_crop():
    """The paper's protocol (shared crop, colour on view 1, view 2 = identity):
    view 2 is the shared crop, view 1 is that crop with colour distortion only."""
    plain = _first_batch(view1_augmentations=(), view2_augmentations=())
    crop = _first_batch(shared_augmentations="crop", view1_augmentations=(),
                        view2_augmentations=())
    x = _first_batch(shared_augmentations=("crop",), view1_augmentations="color",
                     view2_augmentations="none")
    view1, view2 = x["view1"], x["view2"]
    np.testing.assert_array_equal(view2, crop["view2"])
    assert (np.abs(view1 - view2).mean(axis=(1, 2, 3)) > 1e-3).mean() > 0.5
    ids = _example_ids(np.round(plain["view1"] * 255.0))
    for row, key in enumerate(_example_keys(3, ids[:6])):
        k1 = tf.random.experimental.stateless_split(key, 2)[0]
        coloured = augment.augment_view(view2[row], k1, S, ("color",),
                                        color_jitter_strength=0.5)
        np.testing.assert_allclose(view1[row], coloured.numpy(), atol=1e-5)
    sobel = _first_batch(shared_augmentations="crop", view1_augmentations="sobel",
                         view2_augmentations=())
    np.testing.assert_array_equal(sobel["view2"], crop["view2"])
    for row in range(4):
        np.testing.assert_allclose(sobel["view1"][row],
                                   augment.sobel_filter(crop["view2"][row]).numpy(),
                                   atol=1e-5)


@pytest.mark.slow
def test_default_stream_is_unchanged_without_shared_augmentations():
    """Unset, "none" or () give the same batches, and these are the SimCLR
    views of preprocess_for_train for each example's two keys."""
    default = _first_batch()
    for unset in ("none", (), ""):
        _assert_views_equal(_first_batch(shared_augmentations=unset), default)
    ids = _example_ids(np.round(_first_batch(view1_augmentations=(),
                                             view2_augmentations=())["view1"] * 255.0))
    images, _ = offline.generate("train")
    for row, (i, key) in enumerate(zip(ids[:3], _example_keys(3, ids[:3]))):
        for view, k in enumerate(tf.unstack(tf.random.experimental.stateless_split(key, 2))):
            expected = augment.preprocess_for_train(images[i], k, S, **augment.preset(S))
            np.testing.assert_array_equal(default[f"view{view + 1}"][row], expected.numpy())


def test_config_shared_augmentations_reach_the_pretraining_stream():
    """cfg.augment.shared goes through the pretraining task's stream."""
    cfg = config_lib.Config(train_split=SPLIT, seed=3, shared_augmentations="crop",
                            view1_augmentations="none", view2_augmentations="none")
    task = tasks.build_task("pretrain", cfg.loss)
    ds, _ = task.build_inputs(cfg.data, cfg.augment, B)
    (x,), _ = _take(ds, 1)
    _assert_views_equal(x, _first_batch(shared_augmentations="crop", view1_augmentations=(),
                                        view2_augmentations=()))


def test_clean_view_is_each_example_eval_image_beside_unchanged_views():
    """clean_view=True adds the example's evaluation image (preprocess_for_eval)
    as the view "clean"; the two views stay bit-identical."""
    default = _first_batch()
    with_clean = _first_batch(clean_view=True)
    assert sorted(with_clean) == ["clean", "view1", "view2"]
    assert with_clean["clean"].shape == default["view1"].shape
    _assert_views_equal({v: with_clean[v] for v in ("view1", "view2")}, default)
    # Which example each row is, read from the resize-only views of the same stream.
    ids = _example_ids(np.round(_first_batch(view1_augmentations=(), view2_augmentations=(),
                                             clean_view=True)["view1"] * 255.0))
    images, _ = offline.generate("train")
    for row, i in enumerate(ids):
        np.testing.assert_array_equal(with_clean["clean"][row],
                                      augment.preprocess_for_eval(images[i], S).numpy())


def test_probe_view_clean_reaches_the_pretraining_stream():
    cfg = config_lib.Config(train_split=SPLIT, seed=3, probe_view="clean")
    task = tasks.build_task("pretrain", cfg.loss)
    ds, _ = task.build_inputs(cfg.data, cfg.augment, B)
    (x,), _ = _take(ds, 1)
    _assert_views_equal(x, _first_batch(clean_view=True))


def test_view_grid_shows_the_two_views_of_a_batch_with_a_clean_view():
    from simclr_tf.data import view_grid

    batch = {name: view[:3] for name, view in _first_batch(clean_view=True).items()}
    pair = {"view1": batch["view1"], "view2": batch["view2"]}
    np.testing.assert_array_equal(view_grid.grid(batch, 2), view_grid.grid(pair, 2))
    # The clean view is not shown: view 2 | clean would be another picture.
    assert not np.array_equal(
        view_grid.grid({"view1": batch["view2"], "view2": batch["clean"]}, 2),
        view_grid.grid(pair, 2))
