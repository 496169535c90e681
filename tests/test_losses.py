"""Tests for simclr_tf.losses (NT-Xent, Eq. 1 of arXiv:2002.05709)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from multidevice import run_with_devices
from simclr_tf.losses import LARGE_NUM, NTXentLoss, contrastive_metrics, nt_xent_loss


def reference_nt_xent(z1, z2, temperature, hidden_norm):
    """The paper's Eq. 1, one anchor at a time, in float64.

    The 2N views are v[0..N-1] = z1 and v[N..2N-1] = z2; the positive of view
    k is its other view (k+N or k-N). For each anchor i:
        l(i) = -log( exp(s(i, pos)/tau) / sum_{k != i} exp(s(i, k)/tau) )
    and the loss is the mean of l over all 2N anchors.
    """
    v = np.concatenate([z1, z2], axis=0).astype(np.float64)
    n2 = v.shape[0]
    n = n2 // 2

    def sim(a, b):
        if hidden_norm:
            return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        return float(a @ b)

    total = 0.0
    for i in range(n2):
        pos = i + n if i < n else i - n
        denom = 0.0
        for k in range(n2):
            if k != i:
                denom += math.exp(sim(v[i], v[k]) / temperature)
        total += -math.log(math.exp(sim(v[i], v[pos]) / temperature) / denom)
    return total / n2


def reference_official(z1, z2, temperature, hidden_norm):
    """The official objective (google-research/simclr tf2/objective.py), from its definition.

    Anchors of view 1 classify, among the N view-2 keys and the N - 1 other
    view-1 keys, which key is their own view 2 (softmax cross-entropy, mean
    over the N anchors); the view-2 anchors do the same the other way; the
    objective is the sum of the two means. Written with matrices, in float64.
    """
    a = np.asarray(z1, np.float64)
    b = np.asarray(z2, np.float64)
    if hidden_norm:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    n = len(a)

    def direction(q, other, same):
        cross = q @ other.T / temperature  # column i: the positive of anchor i
        own = q @ same.T / temperature
        own[np.arange(n), np.arange(n)] = -np.inf  # an anchor is not its own key
        logits = np.concatenate([cross, own], axis=1)
        log_z = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + \
            logits.max(1)
        return np.mean(log_z - cross[np.arange(n), np.arange(n)])

    return direction(a, b, a) + direction(b, a, b)


@pytest.mark.parametrize("n,d,temperature,hidden_norm", [
    (1, 3, 0.5, True),
    (4, 8, 0.1, True),
    (7, 5, 1.0, True),
    (5, 16, 0.5, False),
    (3, 2, 2.0, False),
])
def test_matches_numpy_loop_reference(n, d, temperature, hidden_norm):
    rng = np.random.default_rng(100 * n + d)
    scale = 1.0 if hidden_norm else 0.4
    z1 = (scale * rng.normal(size=(n, d))).astype(np.float32)
    z2 = (scale * rng.normal(size=(n, d))).astype(np.float32)
    loss, _, _ = nt_xent_loss(tf.constant(z1), tf.constant(z2), temperature,
                              hidden_norm=hidden_norm)
    expected = reference_official(z1, z2, temperature, hidden_norm)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=2e-5)
    # The official objective is twice the paper's Eq. 1 (mean over 2N anchors).
    np.testing.assert_allclose(
        expected, 2 * reference_nt_xent(z1, z2, temperature, hidden_norm), rtol=1e-9)


def test_hidden_norm_changes_result_for_unnormalised_inputs():
    rng = np.random.default_rng(3)
    z1 = 3.0 * rng.normal(size=(4, 6)).astype(np.float32)
    z2 = 3.0 * rng.normal(size=(4, 6)).astype(np.float32)
    a, _, _ = nt_xent_loss(z1, z2, 0.5, hidden_norm=True)
    b, _, _ = nt_xent_loss(z1, z2, 0.5, hidden_norm=False)
    assert abs(float(a) - float(b)) > 1e-2
    np.testing.assert_allclose(float(b), reference_official(z1, z2, 0.5, False),
                               rtol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
@pytest.mark.parametrize("hidden_norm", [True, False])
def test_collapsed_embeddings_give_2_log_2n_minus_1(n, hidden_norm):
    # All views identical: every similarity is equal, so the positive has
    # probability 1/(2N-1) among the 2N-1 other views, in both directions.
    z = np.tile(np.array([[0.3, -1.2, 0.5]], np.float32), (n, 1))
    loss, _, _ = nt_xent_loss(z, z.copy(), temperature=0.2,
                              hidden_norm=hidden_norm)
    np.testing.assert_allclose(float(loss), 2 * math.log(2 * n - 1), rtol=1e-5,
                               atol=1e-6)


def test_shapes_labels_and_positive_logits():
    n, d, tau = 6, 4, 0.3
    rng = np.random.default_rng(7)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = rng.normal(size=(n, d)).astype(np.float32)
    loss, logits, labels = nt_xent_loss(z1, z2, tau)
    assert loss.shape == ()
    assert logits.shape == (2 * n, 2 * n)
    assert labels.shape == (2 * n,)
    assert labels.dtype == tf.int32 and logits.dtype == tf.float32
    np.testing.assert_array_equal(
        labels.numpy(), np.concatenate([np.arange(n) + n, np.arange(n)]))

    u1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    u2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    logits = logits.numpy()
    rows = np.arange(2 * n)
    positives = logits[rows, labels.numpy()]
    expected = np.concatenate([np.sum(u1 * u2, 1), np.sum(u2 * u1, 1)]) / tau
    np.testing.assert_allclose(positives, expected, rtol=1e-5, atol=1e-6)
    # Each anchor's own column is masked out; everything else is finite sim/tau.
    np.testing.assert_array_equal(logits[rows, rows], -LARGE_NUM)
    u = np.concatenate([u1, u2])
    full = u @ u.T / tau
    off = ~np.eye(2 * n, dtype=bool)
    np.testing.assert_allclose(logits[off], full[off], rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_are_computed_in_float32():
    rng = np.random.default_rng(11)
    z1 = tf.cast(rng.normal(size=(5, 8)), tf.bfloat16)
    z2 = tf.cast(rng.normal(size=(5, 8)), tf.bfloat16)
    loss, logits, labels = nt_xent_loss(z1, z2, 0.5)
    assert loss.dtype == tf.float32 and logits.dtype == tf.float32
    expected = reference_official(tf.cast(z1, tf.float32).numpy(),
                                  tf.cast(z2, tf.float32).numpy(), 0.5, True)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_works_inside_tf_function_with_unknown_batch():
    fn = tf.function(
        lambda a, b: nt_xent_loss(a, b, 0.5)[0],
        input_signature=[tf.TensorSpec([None, 4], tf.float32)] * 2)
    rng = np.random.default_rng(5)
    for n in (2, 3):
        z1 = rng.normal(size=(n, 4)).astype(np.float32)
        z2 = rng.normal(size=(n, 4)).astype(np.float32)
        np.testing.assert_allclose(float(fn(z1, z2)),
                                   reference_official(z1, z2, 0.5, True),
                                   rtol=2e-5)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    z1 = tf.Variable(rng.normal(size=(3, 4)), dtype=tf.float64)
    z2 = rng.normal(size=(3, 4)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss, _, _ = nt_xent_loss(z1, z2, 0.5)
    grad = tape.gradient(loss, z1).numpy()
    eps = 1e-3
    base = z1.numpy()
    for idx in [(0, 0), (1, 2), (2, 3)]:
        plus, minus = base.copy(), base.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (reference_official(plus, z2, 0.5, True)
              - reference_official(minus, z2, 0.5, True)) / (2 * eps)
        np.testing.assert_allclose(grad[idx], fd, rtol=2e-3, atol=2e-4)


def test_contrastive_metrics_against_numpy():
    rng = np.random.default_rng(9)
    n = 5
    z1 = rng.normal(size=(n, 6)).astype(np.float32)
    z2 = (z1 + 0.8 * rng.normal(size=(n, 6))).astype(np.float32)
    _, logits, labels = nt_xent_loss(z1, z2, 0.2)
    m = contrastive_metrics(logits, labels)

    lg = logits.numpy().astype(np.float64)
    lb = labels.numpy()
    acc = np.mean(np.argmax(lg, 1) == lb)
    ent = []
    for row, a in zip(lg, range(2 * n)):
        others = np.delete(row, a)  # the anchor's own column has p = 0
        p = np.exp(others - others.max())
        p /= p.sum()
        ent.append(-np.sum(p * np.log(p)))
    np.testing.assert_allclose(float(m["contrast_acc"]), acc, atol=1e-7)
    np.testing.assert_allclose(float(m["contrast_entropy"]), np.mean(ent),
                               rtol=1e-5)
    assert 0.0 < acc < 1.0  # the case exercises both outcomes


def test_contrastive_metrics_extremes():
    n = 4
    # Orthogonal, identical views at a tiny temperature: perfect, ~0 entropy.
    z = np.eye(n, dtype=np.float32)
    _, logits, labels = nt_xent_loss(z, z.copy(), 0.01)
    m = contrastive_metrics(logits, labels)
    assert float(m["contrast_acc"]) == 1.0
    assert float(m["contrast_entropy"]) < 1e-3
    # Collapsed: uniform over the 2N-1 others, entropy log(2N-1), no NaN.
    c = np.ones((n, 3), np.float32)
    _, logits, labels = nt_xent_loss(c, c.copy(), 0.5)
    m = contrastive_metrics(logits, labels)
    np.testing.assert_allclose(float(m["contrast_entropy"]),
                               math.log(2 * n - 1), rtol=1e-5)


# -------------------------------------------------------------- NTXentLoss
@pytest.mark.parametrize("temperature,hidden_norm", [(0.5, True), (0.1, True), (1.0, False)])
def test_ntxent_loss_is_nt_xent_loss_on_stacked_views(temperature, hidden_norm):
    rng = np.random.default_rng(int(10 * temperature))
    z = (0.5 * rng.normal(size=(12, 7))).astype(np.float32)  # B = 6 images, view 1 first
    expected, _, _ = nt_xent_loss(z[:6], z[6:], temperature, hidden_norm=hidden_norm)
    loss = NTXentLoss(temperature=temperature, hidden_norm=hidden_norm)
    for y_true in (np.zeros(6, np.float32), np.zeros(12, np.float32)):  # ignored
        got = loss(y_true, tf.constant(z))
        assert got.dtype == tf.float32
        np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)


def _tiny_ntxent_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=NTXentLoss(temperature=0.2))
    return model


def test_keras_model_compiled_with_ntxent_loss_reports_nt_xent_loss():
    """train_on_batch reports the loss of the weights before its update, evaluate
    that of the current weights: both nt_xent_loss of the model's own z."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 8)).astype(np.float32)  # 8 images' view 1, then view 2
    y = np.zeros(16, np.float32)
    model = _tiny_ntxent_model()

    def expected():
        z = model(x, training=False)
        return float(nt_xent_loss(z[:8], z[8:], 0.2)[0])

    losses_seen = []
    for _ in range(3):
        before = expected()
        reported = model.train_on_batch(x, y, return_dict=True)["loss"]
        np.testing.assert_allclose(float(reported), before, rtol=1e-5)
        losses_seen.append(before)
    assert losses_seen[-1] < losses_seen[0]  # the loss trains the model
    evaluated = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(float(evaluated), expected(), rtol=1e-5)


def test_ntxent_loss_config_round_trip():
    loss = NTXentLoss(temperature=0.3, hidden_norm=False, name="contrast")
    config = loss.get_config()
    assert (config["temperature"], config["hidden_norm"], config["name"]) == (
        0.3, False, "contrast")
    z = tf.constant(np.random.default_rng(5).normal(size=(10, 3)).astype(np.float32))
    for clone in (NTXentLoss.from_config(config),
                  keras.saving.deserialize_keras_object(
                      keras.saving.serialize_keras_object(loss))):
        assert isinstance(clone, NTXentLoss) and clone.get_config() == config
        assert float(clone(tf.zeros([5]), z)) == float(loss(tf.zeros([5]), z))
    assert NTXentLoss().get_config()["temperature"] == 0.5  # the defaults
    assert NTXentLoss().get_config()["hidden_norm"] is True


MULTI_DEVICE_BODY = r"""
import json
import numpy as np
import keras
from simclr_tf.losses import nt_xent_loss

rng = np.random.default_rng(0)
N, DIN, D, TAU = 8, 5, 4, 0.3
x1 = rng.normal(size=(N, DIN)).astype("float32")
x2 = rng.normal(size=(N, DIN)).astype("float32")
w0 = rng.normal(size=(DIN, D)).astype("float32")
b0 = rng.normal(size=(D,)).astype("float32")

def make_layer():
    layer = keras.layers.Dense(
        D, kernel_initializer=keras.initializers.Constant(w0),
        bias_initializer=keras.initializers.Constant(b0))
    layer.build((None, DIN))
    return layer

out = {}
# Single device, global batch.
layer = make_layer()
with tf.GradientTape() as tape:
    loss1, logits1, labels1 = nt_xent_loss(layer(x1), layer(x2), TAU)
g1 = tape.gradient(loss1, [layer.kernel, layer.bias])
out["loss_1"] = float(loss1)
logits1 = logits1.numpy()

# Cross-replica context inside a strategy scope: plain local computation.
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    l_cross, _, _ = nt_xent_loss(layer(x1), layer(x2), TAU)
out["loss_cross_replica_ctx"] = float(l_cross)

def run(split):
    # split: rows of the global batch held by replica 0 (replica 1 the rest).
    bounds = [(0, split), (split, N)]
    with strategy.scope():
        rep_layer = make_layer()

    def value_fn(ctx):
        a, b = bounds[ctx.replica_id_in_sync_group]
        return tf.constant(x1[a:b]), tf.constant(x2[a:b])

    inputs = strategy.experimental_distribute_values_from_function(value_fn)

    @tf.function
    def step(inputs):
        def replica_fn(xs):
            a, b = xs
            r = tf.distribute.get_replica_context().num_replicas_in_sync
            with tf.GradientTape() as tape:
                loss, logits, labels = nt_xent_loss(rep_layer(a), rep_layer(b), TAU)
                scaled = loss / r
            grads = tape.gradient(scaled, [rep_layer.kernel, rep_layer.bias])
            return scaled, grads, loss, logits, labels
        scaled, grads, loss, logits, labels = strategy.run(replica_fn, args=(inputs,))
        return (strategy.reduce("SUM", scaled, axis=None),
                [strategy.reduce("SUM", g, axis=None) for g in grads],
                strategy.experimental_local_results(loss),
                strategy.experimental_local_results(logits),
                strategy.experimental_local_results(labels))

    loss_sum, grads, losses, logits, labels = step(inputs)
    res = dict(
        loss=float(loss_sum),
        per_replica_loss=[float(l) for l in losses],
        kernel_err=float(np.max(np.abs(grads[0].numpy() - g1[0].numpy()))),
        bias_err=float(np.max(np.abs(grads[1].numpy() - g1[1].numpy()))),
        labels=[l.numpy().tolist() for l in labels],
        logits_shapes=[list(l.shape) for l in logits],
    )
    # Each replica's logits rows are the global rows of its anchors:
    # view-1 rows a..b-1 and view-2 rows N+a..N+b-1.
    errs = []
    for (a, b), lg in zip(bounds, logits):
        expect = np.concatenate([logits1[a:b], logits1[N + a:N + b]])
        errs.append(float(np.max(np.abs(lg.numpy() - expect))))
    res["logits_err"] = max(errs)
    return res

out["even"] = run(N // 2)
out["uneven"] = run(3)
out["kernel_grad_norm"] = float(np.linalg.norm(g1[0].numpy()))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def two_replica_result():
    return run_with_devices(MULTI_DEVICE_BODY, n_devices=2)


@pytest.mark.slow
def test_two_replicas_match_single_device_loss_and_gradients(two_replica_result):
    r = two_replica_result
    even = r["even"]
    assert r["kernel_grad_norm"] > 1e-3  # the comparison is not trivially 0 = 0
    np.testing.assert_allclose(even["loss"], r["loss_1"], rtol=1e-5)
    np.testing.assert_allclose(np.mean(even["per_replica_loss"]), r["loss_1"],
                               rtol=1e-5)
    # Replicas see different anchors, so their losses differ.
    assert abs(even["per_replica_loss"][0] - even["per_replica_loss"][1]) > 1e-4
    assert even["kernel_err"] < 1e-5
    assert even["bias_err"] < 1e-5
    assert even["logits_err"] < 1e-4
    assert even["logits_shapes"] == [[8, 16], [8, 16]]
    np.testing.assert_allclose(r["loss_cross_replica_ctx"], r["loss_1"],
                               rtol=1e-6)


@pytest.mark.slow
def test_two_replicas_labels_point_at_global_columns(two_replica_result):
    n, b = 8, 4
    labels = two_replica_result["even"]["labels"]
    for rep in range(2):
        i = np.arange(b)
        expected = np.concatenate([n + rep * b + i, rep * b + i])
        np.testing.assert_array_equal(labels[rep], expected)


@pytest.mark.slow
def test_uneven_replica_batches_use_gathered_offsets(two_replica_result):
    n = 8
    uneven = two_replica_result["uneven"]
    assert uneven["logits_shapes"] == [[6, 16], [10, 16]]
    np.testing.assert_array_equal(
        uneven["labels"][0], np.concatenate([n + np.arange(3), np.arange(3)]))
    np.testing.assert_array_equal(
        uneven["labels"][1],
        np.concatenate([n + 3 + np.arange(5), 3 + np.arange(5)]))
    assert uneven["logits_err"] < 1e-4
    # Per-anchor losses are unchanged, so the size-weighted mean is global.
    sizes = np.array([3, 5])
    weighted = np.sum(np.array(uneven["per_replica_loss"]) * sizes) / n
    np.testing.assert_allclose(weighted, two_replica_result["loss_1"],
                               rtol=1e-5)


MASKED_XENT_BODY = r"""
import json
import numpy as np
from simclr_tf.losses import masked_cross_entropy

rng = np.random.default_rng(0)
logits = rng.normal(size=(8, 5)).astype("float32")
# Replica 0 (rows 0-3): every label known; replica 1 (rows 4-7): one of four.
labels = np.array([0, 1, 2, 3, 4, -1, -1, -1], np.int32)
single = [float(v) for v in masked_cross_entropy(tf.constant(logits), tf.constant(labels))]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
values = strategy.experimental_distribute_values_from_function(
    lambda ctx: (tf.constant(logits[4 * ctx.replica_id_in_sync_group:][:4]),
                 tf.constant(labels[4 * ctx.replica_id_in_sync_group:][:4])))
loss, acc = strategy.run(tf.function(lambda x: masked_cross_entropy(*x)), args=(values,))
print(json.dumps({"single": single,
                  "replicas": [float(v) for v in strategy.experimental_local_results(loss)],
                  "acc": [float(v) for v in strategy.experimental_local_results(acc)]}))
"""


@pytest.mark.slow
def test_masked_cross_entropy_is_the_global_batch_mean_on_replicas():
    """The mean over replicas is the mean over the labelled examples of the
    global batch (5 here), not the mean of per-replica means, however the
    labels fall on the replicas."""
    r = run_with_devices(MASKED_XENT_BODY, n_devices=2)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 5))
    labels = np.array([0, 1, 2, 3, 4])
    log_p = logits[:5] - np.log(np.exp(logits[:5]).sum(1, keepdims=True))
    expected = -np.mean(log_p[np.arange(5), labels])
    np.testing.assert_allclose(r["single"][0], expected, rtol=1e-5)
    np.testing.assert_allclose(np.mean(r["replicas"]), expected, rtol=1e-5)
    per_replica_means = [-np.mean(log_p[np.arange(4), labels[:4]]), -log_p[4, 4]]
    assert abs(np.mean(per_replica_means) - expected) > 1e-2  # the old way differs
    accuracy = np.mean(np.argmax(logits[:5], 1) == labels)
    np.testing.assert_allclose(np.mean(r["acc"]), accuracy, rtol=1e-5)
