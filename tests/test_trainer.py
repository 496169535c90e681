"""The training driver in-process: TFDS datasets (mocked offline) and the loop."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf import config as config_lib
from simclr_tf import optimizers, runtime


def _cfg(tmp_path, **overrides):
    values = dict(dataset="cifar10", train_split="train", eval_split="test",
                  image_size=16, resnet_depth=18, width_multiplier=0.25,
                  train_batch_size=16, eval_batch_size=32, train_steps=3,
                  warmup_epochs=0.0, proj_out_dim=16, model_dir=str(tmp_path / "run"))
    values.update(overrides)
    return config_lib.resolve(None, values)


@pytest.mark.slow
def test_tfds_dataset_trains_and_evaluates_offline(tmp_path):
    cfg = _cfg(tmp_path)
    with tfds.testing.mock_data(num_examples=64):
        exp = runtime.build(cfg)
        assert exp.num_classes == 10
        assert exp.steps.total_steps == 3 and exp.steps.steps_per_epoch == 4
        os.makedirs(cfg.model_dir)
        runtime.train(exp)
        result = runtime.evaluate(exp)
    assert exp.step == 3
    with open(os.path.join(cfg.model_dir, "result.json")) as f:
        saved = json.load(f)
    assert saved == result and saved["global_step"] == 3
    # 64 mocked test images, ten classes: top-1 is a multiple of 1/64.
    assert abs(saved["top1"] * 64 - round(saved["top1"] * 64)) < 1e-4


@pytest.mark.slow
def test_run_schedule_and_stream_share_the_step_counts(tmp_path):
    """One definition of an epoch: the run's steps, its schedule and the stream."""
    # 60 examples, batch 16: 3 full batches an epoch (12 examples dropped).
    cfg = _cfg(tmp_path, train_steps=0, train_epochs=2, warmup_epochs=1.0,
               checkpoint_epochs=1)
    with tfds.testing.mock_data(num_examples=60):
        exp = runtime.build(cfg)
        assert exp.steps == optimizers.step_counts(60, 16, 2, 0, 1.0)
        assert (exp.steps.steps_per_epoch, exp.steps.total_steps,
                exp.steps.warmup_steps) == (3, 6, 3)
        assert (exp.schedule.total_steps, exp.schedule.warmup_steps) == (6, 3)
        os.makedirs(cfg.model_dir)
        runtime.train(exp)
    assert exp.step == 6
    # A checkpoint at each epoch end: steps 3 and 6.
    saved = sorted(int(p.rsplit("-", 1)[1].split(".")[0]) for p in os.listdir(
        os.path.join(cfg.model_dir, "checkpoints")) if p.endswith(".index"))
    assert saved == [3, 6]


def test_learning_rate_follows_the_schedule(tmp_path):
    cfg = _cfg(tmp_path, optimizer="momentum", learning_rate=0.4, train_steps=4,
               warmup_epochs=0.5)
    with tfds.testing.mock_data(num_examples=64):
        exp = runtime.build(cfg)
        # 64 examples / batch 16 = 4 steps per epoch; warmup 0.5 epochs = 2 steps.
        peak = 0.4 * 16 / 256
        expected = [0.0, peak / 2, peak, peak * (1 + np.cos(np.pi * 1 / 2)) / 2]
        got = [float(exp.schedule(s)) for s in range(4)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_batch_not_divisible_by_replicas_is_refused(tmp_path):
    cfg = _cfg(tmp_path, train_batch_size=15)

    class TwoReplicas:
        num_replicas_in_sync = 2

    with pytest.raises(config_lib.ConfigError, match="divisible by the number of replicas"):
        runtime.build(cfg, strategy=TwoReplicas())


@pytest.mark.slow
def test_knn_and_linear_eval_during_pretraining_and_at_evaluation(tmp_path):
    cfg = _cfg(tmp_path, train_steps=0, train_epochs=2, knn_every_epochs=1,
               feature_eval_every_epochs=2, log_every_steps=1)
    with tfds.testing.mock_data(num_examples=64):
        exp = runtime.build(cfg)
        os.makedirs(cfg.model_dir)
        runtime.train(exp)
        result = runtime.evaluate(exp)
    from simclr_tf.runtime.run_dir import read_train_log

    log = read_train_log(cfg.model_dir)
    with_knn = [e["step"] for e in log if "knn_top1" in e]
    assert with_knn == [4, 8]  # every epoch of 4 steps
    assert all(0.0 <= e["knn_top1"] <= 1.0 for e in log if "knn_top1" in e)
    # At the end of training the monitor and the evaluation read the same encoder.
    assert log[-1]["knn_top1"] == pytest.approx(result["knn"]["top1"])
    # The frozen-feature linear evaluation every 2 epochs: once, at the end.
    assert [e["step"] for e in log if "feature_linear_eval_top1" in e] == [8]
    assert log[-1]["feature_linear_eval_top1"] == pytest.approx(
        result["feature_linear_eval"]["top1"])
    assert result["knn"]["k"] == 64 and result["knn"]["temperature"] == 0.1  # k <= N
    assert abs(result["knn"]["top1"] * 64 - round(result["knn"]["top1"] * 64)) < 1e-4
    # View pairs in TensorBoard at the log points (first 4 images: 4 rows of 2 views).
    images = {}
    for path in tf.io.gfile.glob(os.path.join(cfg.model_dir, "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "augmented_views":
                    images[event.step] = tf.make_ndarray(value.tensor)
    assert sorted(images) == list(range(1, 9))
    width, height = (int(v) for v in images[1][:2])  # image summaries: width, height, PNG
    side = 16 * (96 // 16)
    assert (width, height) == (2 * side + 2, 4 * side + 3 * 2)


def test_views_png_shows_the_pipelines_pairs(tmp_path):
    """python -m simclr_tf.views: the PNG's halves are the pipeline's two views."""
    from simclr_tf import views as views_cli
    from simclr_tf.data import pipeline

    cfg = config_lib.resolve("smoke", dict(model_dir=str(tmp_path / "run")))
    path = str(tmp_path / "views.png")
    shape = views_cli.write_views(cfg, path, num_pairs=3, scale=2)
    picture = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert picture.shape == shape == (3 * 32 + 2 * 2, 2 * 32 + 2, 3)
    reference = cfg.replace(color_jitter_strength=0.5)
    ds, _ = pipeline.build_train_dataset(reference.data, reference.augment, 3)
    views, _ = next(iter(ds))
    first = np.round(views["view1"].numpy()[0] * 255)
    second = np.round(views["view2"].numpy()[0] * 255)
    np.testing.assert_allclose(picture[0:32:2, 0:32:2], first, atol=1)
    np.testing.assert_allclose(picture[0:32:2, 34:66:2], second, atol=1)
    assert not np.allclose(first, second)  # two different views
