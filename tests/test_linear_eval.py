"""Frozen-feature linear evaluation."""

import collections
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from multidevice import run_with_devices

from simclr_tf import config as config_lib
from simclr_tf import errors, linear_eval, tasks
from simclr_tf.linear_eval import features as features_lib
from simclr_tf.linear_eval import solver
from simclr_tf.data import pipeline


def test_topk_accuracy_matches_a_direct_count():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 8))
    labels = rng.integers(0, 8, 50)
    for k in (1, 3, 5):
        expected = np.mean([labels[i] in np.argsort(-logits[i])[:k] for i in range(50)])
        assert linear_eval.topk_accuracy(logits, labels, k) == expected
    assert linear_eval.topk_accuracy(logits[:, :3], labels % 3, 5) == 1.0


def test_logistic_regression_separates_gaussian_classes():
    """Three well-separated Gaussian blobs: a linear classifier must be
    nearly perfect on fresh samples, whatever the feature scale/offset."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 4
    def sample(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(size=(n, 16))) * 50 + 1000, y
    x, y = sample(600)
    predict = linear_eval.fit_logistic_regression(x, y, 3)
    xt, yt = sample(300)
    assert linear_eval.topk_accuracy(predict(xt), yt, 1) > 0.97


def test_logistic_regression_on_noise_fits_the_noise_and_is_at_chance_on_fresh_noise():
    """Pure noise: a weakly regularised fit learns the training rows (well
    above the 28% of its most frequent class, the best a constant predictor
    does), predicts every class on fresh noise, and is at chance there."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 8)), rng.integers(0, 4, 400)
    predict = linear_eval.fit_logistic_regression(x, y, 4, 1e-4)
    assert linear_eval.topk_accuracy(predict(x), y, 1) > 0.31 > np.bincount(y).max() / 400
    xt, yt = rng.normal(size=(2000, 8)), rng.integers(0, 4, 2000)
    predicted = predict(xt).argmax(1)
    assert np.bincount(predicted, minlength=4).min() > 0.05 * len(xt)
    assert abs(np.mean(predicted == yt) - 0.25) < 0.04


def test_extract_features_runs_the_encoder_in_inference_mode():
    calls = []

    class Encoder(tf.keras.layers.Layer):
        def call(self, images, training=None):
            calls.append(training)
            return tf.reduce_mean(images, axis=[1, 2])

    images = np.random.default_rng(3).uniform(size=(10, 4, 4, 3)).astype("float32")
    labels = np.arange(10, dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    feats, got = linear_eval.extract_features(Encoder(), ds)
    np.testing.assert_allclose(feats, images.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(got, labels)
    assert set(calls) == {False}


def test_progress_lines_count_rate_and_eta():
    import time

    from simclr_tf.progress import Progress

    lines = []
    progress = Progress("scan", total=10, unit="files", every=0.0, log=lines.append)
    progress.update(4)
    time.sleep(0.01)
    progress.done()
    assert lines[0].startswith("scan: 4/10 files (") and "files/s, ETA" in lines[0]
    assert lines[-1].startswith("scan: 4/10 files (") and ", done in " in lines[-1]
    rate = float(lines[0].split("(")[1].split()[0])
    eta = float(lines[0].split("ETA ")[1].split()[0])
    assert eta == pytest.approx(6 / rate, abs=1.0)  # the 6 files left at that rate


# ------------------------------------------------ the scalable protocol (#18)

def _standardised(x):
    """The documented standardisation, in float64: (x - mean) / (std + 1e-6)."""
    x = np.asarray(x, np.float64)
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def _objective(z, y, w, b, l2):
    """Mean cross-entropy + l2 ||W||^2 / 2 and its gradients (NumPy, float64)."""
    logits = z @ w + b
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(w.shape[1])[y]
    loss = -np.mean(np.log(p[np.arange(len(y)), y])) + 0.5 * l2 * np.sum(w * w)
    g = (p - onehot) / len(y)
    return loss, z.T @ g + l2 * w, g.sum(0), p


def _newton(x, y, num_classes, l2, iterations=40):
    """The exact optimum by Newton's method on the full Hessian (tiny problems only)."""
    z = _standardised(x)
    n, dim = z.shape
    za = np.hstack([z, np.ones((n, 1))])
    w, b = np.zeros((dim, num_classes)), np.zeros(num_classes)
    for _ in range(iterations):
        _, gw, gb, p = _objective(z, y, w, b, l2)
        hessian = np.zeros(((dim + 1) * num_classes,) * 2)
        for i in range(n):
            s = np.diag(p[i]) - np.outer(p[i], p[i])
            hessian += np.kron(np.outer(za[i], za[i]), s) / n
        hessian[:dim * num_classes, :dim * num_classes] += l2 * np.eye(dim * num_classes)
        step = np.linalg.lstsq(hessian, np.concatenate([gw.ravel(), gb]), rcond=None)[0]
        w -= step[:dim * num_classes].reshape(dim, num_classes)
        b -= step[dim * num_classes:]
    loss, gw, gb, _ = _objective(z, y, w, b, l2)
    assert np.abs(gw).max() < 1e-10 and np.abs(gb).max() < 1e-10  # converged
    return w, b, loss


def _blobs(n, dim, num_classes, scale, seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim)) * scale
    y = np.arange(n) % num_classes
    return (rng.normal(size=(n, dim)) + means[y]).astype(np.float32) * 3 + 5, y


def test_lbfgs_fit_is_the_optimum_newtons_method_finds():
    """Overlapping classes, so the optimum is finite even for a small l2:
    at a tight tolerance the fitted weights, bias and objective equal
    Newton's (float64) solution; at the default one (no gradient component
    above 1e-4) the objective still does to 1e-6 and every prediction is
    the same."""
    x, y = _blobs(90, 4, 3, 0.8, seed=5)
    for l2 in (1e-4, 1e-1):
        w, b, loss = _newton(x, y, 3, l2)
        clf = linear_eval.fit_logistic_regression(x, y, 3, l2, gtol=1e-6)
        np.testing.assert_allclose(clf.w, w, atol=2e-4 * max(1.0, np.abs(w).max()))
        np.testing.assert_allclose(clf.b, b, atol=2e-4 * max(1.0, np.abs(b).max()))
        assert clf.loss == pytest.approx(loss, rel=1e-6)
        np.testing.assert_allclose(clf(x), _standardised(x) @ w + b, atol=2e-3)
        default = linear_eval.fit_logistic_regression(x, y, 3, l2)
        assert default.steps < clf.steps and default.loss == pytest.approx(loss, rel=1e-6)
        np.testing.assert_allclose(default.w, w, atol=2e-3 * max(1.0, np.abs(w).max()))
        np.testing.assert_array_equal(default(x).argmax(1), (_standardised(x) @ w + b).argmax(1))


def test_lbfgs_solves_an_ill_conditioned_quadratic_and_a_preconditioner_speeds_it_up():
    """0.5 x'Ax - b'x with condition number 1e3: the minimum is A^-1 b with
    or without a preconditioner; with the exact inverse Hessian as the
    preconditioner it is one full step."""
    rng = np.random.default_rng(10)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    a = q @ np.diag(np.logspace(-3, 0, 30)) @ q.T
    b = rng.normal(size=30)
    exact = np.linalg.solve(a, b)

    def fun(x):
        return 0.5 * x @ a @ x - b @ x, a @ x - b

    x, _, plain_iterations = linear_eval.lbfgs(fun, np.zeros(30), gtol=1e-8)
    np.testing.assert_allclose(x, exact, atol=1e-4 * np.abs(exact).max())
    inverse = np.linalg.inv(a)
    x, _, iterations = linear_eval.lbfgs(fun, np.zeros(30), gtol=1e-8,
                                         precondition=lambda v: inverse @ v)
    np.testing.assert_allclose(x, exact, atol=1e-8 * np.abs(exact).max())
    assert iterations == 1 and plain_iterations > 20
    assert linear_eval.lbfgs(fun, exact, gtol=1e-8)[2] == 0  # already there


def test_the_preconditioner_is_the_inverse_hessian_at_zero_weights():
    """The Hessian of the objective at W = 0, b = 0 times a direction with no
    class-sum part (central differences of the objective's gradient), mapped
    back by the preconditioner, is that direction."""
    x, y = _blobs(400, 6, 4, 0.5, seed=11)
    stats = linear_eval.standardisation(x)
    objective = solver._Objective(x, y, None, stats, 4)
    eigen = solver.curvature(x, stats)
    rng = np.random.default_rng(11)
    for l2 in (1e-4, 1e-1):
        v = rng.normal(size=(7, 4))  # rows: the 6 features' weights, then the bias
        v -= v.mean(axis=1, keepdims=True)  # adding a vector to every class changes nothing
        direction, eps = v.ravel(), 1e-2
        hessian_v = (objective(eps * direction, l2)[1]
                     - objective(-eps * direction, l2)[1]) / (2 * eps)
        np.testing.assert_allclose(solver.preconditioner(eigen, 4, l2)(hessian_v), direction,
                                   atol=2e-3 * np.abs(direction).max())


def test_the_objective_streamed_in_chunks_equals_the_numpy_formula(monkeypatch):
    """The L-BFGS objective and gradient, over one chunk or chunks of 256
    rows (also of a row subset), equal the NumPy float64 formula up to
    float32 rounding."""
    x, y = _blobs(1000, 8, 3, 0.6, seed=13)
    stats = linear_eval.standardisation(x)
    rng = np.random.default_rng(13)
    w, b, l2 = rng.normal(size=(8, 3)), rng.normal(size=3), 1e-2
    params = np.concatenate([w.ravel(), b])
    z = (x - stats[0]) * stats[1]
    rows = np.arange(0, 1000, 3)
    whole = solver._Objective(x, y, None, stats, 3)(params, l2)
    monkeypatch.setattr(features_lib, "CHUNK_BYTES", 100)  # the minimum: 256 rows a chunk
    assert len(list(features_lib.chunks(x))) == 4
    chunked = solver._Objective(x, y, None, stats, 3)(params, l2)
    subset = solver._Objective(x, y, rows, stats, 3)(params, l2)
    for (loss, grad), zs, ys in ((whole, z, y), (chunked, z, y), (subset, z[rows], y[rows])):
        ref_loss, ref_w, ref_b, _ = _objective(zs, ys, w, b, l2)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        np.testing.assert_allclose(grad, np.concatenate([ref_w.ravel(), ref_b]), atol=1e-5)


def test_the_returned_fit_is_a_stationary_point_of_the_objective():
    """Ten overlapping classes in 32 dimensions, 3,000 rows: at every l2 of
    the grid the gradient of the l2-regularised cross-entropy, computed
    independently in float64 NumPy at the returned weights, is ~0 (the
    default tolerance), and no random small step lowers the objective."""
    x, y = _blobs(3000, 32, 10, 0.3, seed=14)
    z = _standardised(x)
    stats = linear_eval.standardisation(x)
    rng = np.random.default_rng(14)
    for clf in solver.fit_path(x, y, None, 10, stats, linear_eval.L2_GRID):
        w, b = clf.w.astype(np.float64), clf.b.astype(np.float64)
        loss, gw, gb, _ = _objective(z, y, w, b, clf.l2)
        assert max(np.abs(gw).max(), np.abs(gb).max()) < 1e-4, clf.l2
        assert clf.loss == pytest.approx(loss, rel=1e-5)
        for _ in range(5):
            dw, db = rng.normal(size=w.shape) * 1e-2, rng.normal(size=b.shape) * 1e-2
            assert _objective(z, y, w + dw, b + db, clf.l2)[0] > loss - 1e-7


def test_the_warm_started_l2_path_reaches_every_cold_fit_and_compiles_once():
    """fit_path (strongest l2 first, each fit from the previous one) ends
    where separate fits from zero end, in fewer iterations; the chunk's
    compiled function is traced once for any rows, dimension, classes or l2."""
    x, y = _blobs(600, 10, 3, 0.6, seed=12)
    stats = linear_eval.standardisation(x)
    grid = (1e-5, 1e-3, 1e-1)
    tight = solver.fit_path(x, y, None, 3, stats, grid, gtol=1e-6)
    assert [clf.l2 for clf in tight] == list(grid)
    for clf in tight:
        cold = linear_eval.fit_logistic_regression(x, y, 3, clf.l2, stats=stats,
                                                   gtol=1e-6)
        np.testing.assert_allclose(clf.w, cold.w, atol=1e-3 * np.abs(cold.w).max())
        assert clf.loss == pytest.approx(cold.loss, rel=1e-6)
    path = solver.fit_path(x, y, None, 3, stats, grid)
    cold = [linear_eval.fit_logistic_regression(x, y, 3, l2, stats=stats) for l2 in grid]
    assert sum(clf.steps for clf in path) < sum(clf.steps for clf in cold)
    for warm, zero in zip(path, cold):
        np.testing.assert_array_equal(warm(x).argmax(1), zero(x).argmax(1))
    # From a converged fit of the same l2: nothing to do.
    assert linear_eval.fit_logistic_regression(x, y, 3, 1e-1, stats=stats,
                                               init=tight[-1]).steps == 0
    linear_eval.fit_logistic_regression(x[:100, :5], y[:100] % 2, 2, 1e-2)
    assert solver._chunk_sums.experimental_get_tracing_count() == 1


def test_uninformative_features_give_zero_weights_and_the_log_prior_bias():
    """Every feature row appears with class c exactly m_c times: the features
    say nothing, so the optimum is W = 0 and b = log m_c (up to a constant;
    ours is centred, as the gradient in b sums to zero)."""
    rng = np.random.default_rng(6)
    rows = rng.normal(size=(15, 5)).astype(np.float32)
    counts = np.array([1, 2, 4])
    x = np.concatenate([np.repeat(rows, m, 0) for m in counts])
    y = np.concatenate([np.full(15 * m, c) for c, m in enumerate(counts)])
    clf = linear_eval.fit_logistic_regression(x, y, 3, 1e-3)
    np.testing.assert_allclose(clf.w, 0.0, atol=1e-5)
    np.testing.assert_allclose(clf.b, np.log(counts) - np.log(counts).mean(), atol=1e-4)


def test_held_out_split_is_stratified_seeded_and_leaves_every_class():
    labels = np.repeat(np.arange(4), [100, 50, 10, 1])
    fit, held = linear_eval.held_out_split(labels, seed=3)
    assert [int(np.sum(labels[held] == c)) for c in range(4)] == [10, 5, 1, 0]
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(labels)))
    assert np.array_equal(held, linear_eval.held_out_split(labels, seed=3)[1])
    assert not np.array_equal(held, linear_eval.held_out_split(labels, seed=4)[1])
    # At most max_size, still stratified.
    _, held = linear_eval.held_out_split(labels, max_size=8, seed=3)
    assert [int(np.sum(labels[held] == c)) for c in range(4)] == [5, 2, 0, 0]


def test_l2_choice_is_strong_on_noisy_features_and_weak_on_clean_ones():
    grid = (1e-6, 1e-4, 1e-2, 1.0)
    # Ten classes barely apart in 400 noisy dimensions, 90 examples each: an
    # unregularised fit learns the noise.
    rng = np.random.default_rng(0)
    means = rng.normal(size=(10, 400)) * 3 / np.sqrt(400)
    y = np.arange(1000) % 10
    x = (rng.normal(size=(1000, 400)) + means[y]).astype(np.float32)
    l2, scores, held = linear_eval.select_l2(x, y, 10, grid)
    assert l2 == 1.0 and held == 100
    assert scores[1.0] > scores[1e-6] + 0.05, scores
    # Three well-separated classes in 5 dimensions: every l2 is right on the
    # held-out part; the weakest is the most confident (lowest cross-entropy).
    y = np.arange(400) % 3
    x = (np.eye(3, 5)[y] * 8 + rng.normal(size=(400, 5))).astype(np.float32)
    l2, scores, _ = linear_eval.select_l2(x, y, 3, grid)
    assert l2 == 1e-6 and set(scores.values()) == {1.0}


def test_fit_and_score_reports_the_choice_and_is_deterministic():
    x, y = _blobs(600, 8, 3, 0.6, seed=8)
    features = (x[:500], y[:500], x[500:], y[500:])
    first = linear_eval.fit_and_score(features, 3)
    assert first == linear_eval.fit_and_score(features, 3)
    assert first["l2"] in linear_eval.L2_GRID and first["solver"] == "lbfgs"
    assert first["num_train"] == 500 and first["num_eval"] == 100
    assert first["num_heldout"] == 51  # 10% of 167, 167 and 166 examples: 17 each
    assert set(first["heldout_top1"]) == {f"{v:g}" for v in linear_eval.L2_GRID}
    # The chosen l2 has the best held-out top-1.
    assert first["heldout_top1"][f"{first['l2']:g}"] == max(first["heldout_top1"].values())
    # The reported top-1 is the refitted classifier's on the eval rows.
    clf = linear_eval.fit_logistic_regression(x[:500], y[:500], 3, first["l2"])
    assert first["top1"] == linear_eval.topk_accuracy(clf(x[500:]), y[500:], 1)
    # A fixed l2 skips the choice.
    fixed = linear_eval.fit_and_score(features, 3, l2=1e-2)
    assert fixed["l2"] == 1e-2 and fixed["heldout_top1"] == {} and fixed["num_heldout"] == 0


@pytest.mark.slow
def test_new_fit_is_at_least_as_good_as_the_old_adam_fit_on_real_features():
    """Frozen features of a randomly initialised ResNet on offline_shapes
    (2,000 test images, split 1,500 / 500): the protocol's held-out choice
    scores within a point of the old fixed 300-step Adam fit, or better."""
    keras.utils.set_random_seed(0)
    cfg = config_lib.resolve(None, dict(eval_batch_size=250))
    encoder = tasks.build_model(cfg, 10).encoder
    x, y = linear_eval.split_features(encoder, cfg.data, "test")
    features = (x[:1500], y[:1500], x[1500:], y[1500:])
    new = linear_eval.fit_and_score(features, 10)["top1"]

    def old_fit():  # the previous fit: full-batch Adam, 300 steps, lr 0.05, l2 1e-4
        mean, std = x[:1500].mean(0), x[:1500].std(0) + 1e-6
        xs = tf.constant((x[:1500] - mean) / std)
        w, b = tf.Variable(tf.zeros([x.shape[1], 10])), tf.Variable(tf.zeros([10]))
        opt = tf.keras.optimizers.Adam(0.05)
        for _ in range(300):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    y[:1500], tf.matmul(xs, w) + b)) + 1e-4 * tf.reduce_sum(w * w) / 2
            opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
        return linear_eval.topk_accuracy((x[1500:] - mean) / std @ w.numpy() + b.numpy(),
                                         y[1500:], 1)

    old = old_fit()
    print(f"frozen-feature top-1: held-out l2 choice {new:.4f}, old Adam fit {old:.4f}")
    assert new >= old - 0.01, (new, old)


def _small_encoder(seed=0):
    """A conv, BN (with non-trivial moving statistics) and pooling: quick, and
    training=True would give other numbers."""
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(12, 3, strides=2),
                                keras.layers.BatchNormalization(), keras.layers.ReLU(),
                                keras.layers.GlobalAveragePooling2D()])
    bn = encoder.layers[1]
    rng = np.random.default_rng(seed)
    bn.moving_mean.assign(rng.normal(size=12).astype("float32") * 0.1)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 12).astype("float32"))
    return encoder


@pytest.mark.slow
def test_memmap_path_equals_the_in_memory_path(tmp_path):
    """memory_limit=0 sends every split to a file on disk, read back as a
    memmap: the features, labels, label subset, fit, scores and kNN equal the
    in-memory path's, and no file is left in the scratch folder."""
    from simclr_tf import knn

    cfg = config_lib.resolve(None, dict(eval_batch_size=96)).data  # offline_shapes
    encoder = _small_encoder()
    subset = np.arange(3, 10000, 4)
    in_memory = linear_eval.frozen_features(encoder, cfg, subset)
    scratch = tmp_path / "scratch"
    on_disk = linear_eval.frozen_features(encoder, cfg, subset, memory_limit=0,
                                          scratch_dir=str(scratch))
    assert isinstance(on_disk[0], np.memmap) and not isinstance(in_memory[0], np.memmap)
    assert os.listdir(scratch) == []  # unlinked once mapped
    for a, b in zip(in_memory, on_disk):
        np.testing.assert_array_equal(a, b)
    assert len(in_memory[0]) == len(subset) == 2500 and len(in_memory[2]) == 2000
    # The subset is the same rows as the whole split's, in order.
    whole, labels = linear_eval.split_features(encoder, cfg, "train")
    np.testing.assert_array_equal(whole[subset], in_memory[0])
    np.testing.assert_array_equal(labels[subset], in_memory[1])
    # And the frozen features are the encoder's, in inference mode.
    ds, _ = pipeline.build_eval_dataset(cfg, 500, split="test")
    direct = np.concatenate([encoder(images, training=False).numpy() for images, _ in ds])
    np.testing.assert_allclose(in_memory[2], direct, rtol=1e-5, atol=1e-6)
    assert linear_eval.fit_and_score(in_memory, 10) == linear_eval.fit_and_score(on_disk, 10)
    assert knn.evaluate(in_memory, 10) == knn.evaluate(on_disk, 10)


def test_a_memmap_and_an_ndarray_give_the_same_protocol_bit_for_bit(tmp_path, monkeypatch):
    """The same features as an ndarray and as a read-only memmap, read in
    chunks of 256 rows (so the held-out rows, the fit rows and the eval rows
    all span several chunks): the standardisation, every fit and the result
    dict are identical, and so is the kNN vote."""
    from simclr_tf import knn

    x, y = _blobs(1500, 12, 4, 0.4, seed=15)
    path = tmp_path / "features.f32"
    x.tofile(path)
    mapped = np.memmap(path, np.float32, mode="r", shape=x.shape)
    monkeypatch.setattr(features_lib, "CHUNK_BYTES", 100)  # 256 rows a chunk
    in_memory, on_disk = (x[:1200], y[:1200], x[1200:], y[1200:]), (
        mapped[:1200], y[:1200], mapped[1200:], y[1200:])
    for a, b in zip(linear_eval.standardisation(in_memory[0]),
                    linear_eval.standardisation(on_disk[0])):
        np.testing.assert_array_equal(a, b)
    first = linear_eval.fit_and_score(in_memory, 4)
    assert first == linear_eval.fit_and_score(on_disk, 4)
    assert first["num_heldout"] == 120 and first["top1"] > 0.5
    rows = np.arange(1, 1200, 2)
    fits = [linear_eval.fit_logistic_regression(data[0], y[:1200], 4, 1e-3, rows=rows)
            for data in (in_memory, on_disk)]
    np.testing.assert_array_equal(fits[0].w, fits[1].w)
    np.testing.assert_array_equal(fits[0](x, rows), fits[1](mapped, rows))
    assert knn.evaluate(in_memory, 4, k=20) == knn.evaluate(on_disk, 4, k=20)


class _RowReader:
    """Features that count the rows of every read: ``len``, ``shape`` and
    ``[index]`` only, as a memmap too large for memory would be used."""

    def __init__(self, array):
        self.array, self.shape, self.largest = array, array.shape, 0

    def __len__(self):
        return len(self.array)

    def __getitem__(self, index):
        rows = self.array[index]
        self.largest = max(self.largest, len(rows))
        return rows


def test_the_protocol_and_knn_never_read_more_than_a_chunk(monkeypatch):
    """With chunks of 256 rows, the standardisation, the preconditioner, every
    fit, the held-out and eval scoring and the kNN vote read at most 256 rows
    at a time (what lets ImageNet's 10.5 GB memmap stream), and give the
    in-memory results."""
    from simclr_tf import knn

    x, y = _blobs(1300, 6, 3, 0.5, seed=16)
    monkeypatch.setattr(features_lib, "CHUNK_BYTES", 100)  # 256 rows a chunk
    train, test = _RowReader(x[:1000]), _RowReader(x[1000:])
    expected = linear_eval.fit_and_score((x[:1000], y[:1000], x[1000:], y[1000:]), 3)
    assert linear_eval.fit_and_score((train, y[:1000], test, y[1000:]), 3) == expected
    assert 0 < train.largest <= 256 and 0 < test.largest <= 256
    train.largest = 0
    assert (knn.evaluate((train, y[:1000], x[1000:], y[1000:]), 3, k=50)
            == knn.evaluate((x[:1000], y[:1000], x[1000:], y[1000:]), 3, k=50))
    assert 0 < train.largest <= 256


def test_a_full_scratch_disk_is_refused_before_writing(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(features_lib.shutil, "disk_usage", lambda path: usage(10, 10, 0))
    sink = features_lib._FeatureSink("'train'", 1000, 0, str(tmp_path))
    with pytest.raises(errors.RunError, match=r"need 0\.0 GiB of disk .* TMPDIR"):
        sink.add(np.zeros((10, 4), np.float32))
    assert os.listdir(tmp_path) == []


def _dead_pid():
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_extraction_removes_feature_files_of_dead_processes_only(tmp_path):
    """A file named after a dead process of this host goes; a live process's, another
    host's and any other file stay."""
    from simclr_tf import files

    dead = os.path.join(tmp_path, f"simclr_tf-features~{files._HOST}~{_dead_pid()}~0123abcd.f32")
    kept = [os.path.join(tmp_path, name) for name in (
        f"simclr_tf-features~{files._HOST}~{os.getpid()}~0123abcd.f32",  # alive
        f"simclr_tf-features~another-host~{_dead_pid()}~0123abcd.f32",  # not checkable
        "simclr_tf-features-notes.f32", "unrelated.txt")]
    for path in [dead, *kept]:
        with open(path, "wb") as f:
            f.write(b"\0" * 64)
    cfg = config_lib.resolve(None, dict(eval_batch_size=64)).data
    linear_eval.split_features(_small_encoder(), cfg, "test[:64]", memory_limit=0,
                               scratch_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in kept)


KILLED_EXTRACTION = """
import sys
import keras
from simclr_tf import config as config_lib, linear_eval
encoder = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
cfg = config_lib.resolve(None, dict(eval_batch_size=8)).data
linear_eval.split_features(encoder, cfg, "train", memory_limit=0, scratch_dir=sys.argv[1])
"""


@pytest.mark.slow
def test_a_feature_file_left_by_a_sigkill_is_removed_by_the_next_extraction(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    child = subprocess.Popen([sys.executable, "-c", KILLED_EXTRACTION, str(scratch)],
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not os.listdir(scratch):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    left = os.listdir(scratch)
    assert len(left) == 1 and f"~{child.pid}~" in left[0], left  # SIGKILL runs no cleanup
    cfg = config_lib.resolve(None, dict(eval_batch_size=64)).data
    linear_eval.split_features(_small_encoder(), cfg, "test[:64]", memory_limit=0,
                               scratch_dir=str(scratch))
    assert os.listdir(scratch) == []


TWO_REPLICA_BODY = """
import json
import numpy as np
import keras
from simclr_tf import config as config_lib, linear_eval
def encoder():
    keras.utils.set_random_seed(0)
    conv = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(12, 3, strides=2),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.GlobalAveragePooling2D()])
    conv.layers[1].moving_variance.assign(np.linspace(0.5, 2.0, 12).astype("float32"))

    def features(images, training=False):  # + the batch size each call sees
        size = tf.cast(tf.shape(images)[0], tf.float32)
        return tf.concat([conv(images, training=training),
                          tf.fill([tf.shape(images)[0], 1], size)], axis=1)
    return features

# 2,000 test images in batches of 30: the last batch (20) is padded to 30.
cfg = config_lib.resolve(None, dict(eval_batch_size=30)).data
subset = np.arange(1, 2000, 3)
one_x, one_y = linear_eval.split_features(encoder(), cfg, "test", subset)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with mirrored.scope():
    two = encoder()
two_x, two_y = linear_eval.split_features(two, cfg, "test", subset, strategy=mirrored,
                                          memory_limit=0)
print(json.dumps({
    "replicas": mirrored.num_replicas_in_sync, "rows": [len(one_x), len(two_x)],
    "batch_sizes": [sorted(set(one_x[:, -1].tolist())), sorted(set(two_x[:, -1].tolist()))],
    "max_diff": float(np.abs(one_x[:, :-1] - two_x[:, :-1]).max()),
    "labels_equal": bool(np.array_equal(one_y, two_y)), "memmap": type(two_x).__name__}))
"""


@pytest.mark.slow
def test_extraction_through_two_replicas_equals_one_device():
    """MirroredStrategy over two CPU devices: each replica runs the encoder
    on half of every (padded) batch, and the gathered features, labels and
    label subset equal the default strategy's."""
    r = run_with_devices(TWO_REPLICA_BODY, n_devices=2)
    assert r["replicas"] == 2 and r["rows"] == [667, 667]
    assert r["batch_sizes"] == [[30.0], [15.0]]  # per call: global batch vs half of it
    assert r["max_diff"] < 1e-5 and r["labels_equal"] and r["memmap"] == "memmap"
