"""Tests for simclr_tf.optimizers (LARS, WarmUpAndCosine, helpers)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from multidevice import run_with_devices
from simclr_tf import optimizers
from simclr_tf.optimizers import (DEFAULT_EXCLUDE, LARS, WarmUpAndCosine,
                                  build_optimizer, is_excluded, weight_decay_l2)


# --------------------------------------------------------------------------
# A small nested model, so variable paths look like real ones
# ("outer/encoder/batch_normalization/gamma") while names are short ("gamma").


class Outer(keras.Model):

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder = keras.Sequential([
            keras.layers.Dense(4, name="dense"),
            keras.layers.BatchNormalization(name="batch_normalization"),
        ], name="encoder")
        self.proj = keras.layers.Dense(3, use_bias=False, name="proj",
                                       kernel_initializer="zeros")
        self.head = keras.layers.Dense(2, name="head_supervised")

    def call(self, x, training=None):
        h = self.encoder(x, training=training)
        return self.proj(h), self.head(h)


def build_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = Outer(name="outer")
    model(tf.zeros([2, 5]))
    # Non-trivial BN parameters.
    rng = np.random.default_rng(seed)
    bn = model.encoder.layers[1]
    bn.gamma.assign(1.0 + 0.1 * rng.normal(size=bn.gamma.shape))
    bn.beta.assign(0.1 * rng.normal(size=bn.beta.shape))
    return model


def excluded_by_meaning(path):
    # The test's own statement of what must be excluded (not is_excluded()).
    return (path.endswith("bias") or "/batch_normalization/" in path
            or path.startswith("outer/head_supervised/"))


def lars_reference(weights, grads_per_step, lr, momentum, wd, eta, excluded,
                   nesterov=False):
    """LARS of You et al. (2017) with classic momentum, in float64."""
    w = [np.array(x, np.float64) for x in weights]
    v = [np.zeros_like(x) for x in w]
    for grads in grads_per_step:
        for k, g in enumerate(grads):
            g = np.array(g, np.float64)
            if not excluded[k]:
                g = g + wd * w[k]
                wn, gn = np.linalg.norm(w[k]), np.linalg.norm(g)
                trust = eta * wn / gn if (wn > 0 and gn > 0) else 1.0
            else:
                trust = 1.0
            v[k] = momentum * v[k] + lr * trust * g
            step = momentum * v[k] + lr * trust * g if nesterov else v[k]
            w[k] = w[k] - step
    return w


@pytest.mark.parametrize("nesterov,eta", [(False, 0.001), (True, 0.05)])
def test_lars_matches_numpy_reference(nesterov, eta):
    model = build_model()
    variables = model.trainable_variables
    paths = [v.path for v in variables]
    excluded = [excluded_by_meaning(p) for p in paths]
    # The model has both kinds, and a zero-norm weight that is adapted.
    assert any(excluded) and not all(excluded)
    assert np.all(model.proj.kernel.numpy() == 0.0)
    assert not excluded_by_meaning(model.proj.kernel.path)

    lr, momentum, wd = 0.5, 0.9, 0.01
    opt = LARS(lr, momentum=momentum, weight_decay=wd, trust_coefficient=eta,
               nesterov=nesterov)
    rng = np.random.default_rng(1)
    steps = [[rng.normal(size=v.shape).astype(np.float32) for v in variables]
             for _ in range(3)]
    w0 = [v.numpy() for v in variables]
    for grads in steps:
        opt.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    expected = lars_reference(w0, steps, lr, momentum, wd, eta, excluded,
                              nesterov)
    for var, exp, w_init in zip(variables, expected, w0):
        np.testing.assert_allclose(var.numpy(), exp, rtol=1e-5, atol=1e-6,
                                   err_msg=var.path)
        assert not np.allclose(var.numpy(), w_init), var.path
    assert int(opt.iterations) == 3


def test_zero_norm_weight_uses_trust_one():
    model = build_model()
    kernel = model.proj.kernel  # zeros, not excluded
    opt = LARS(0.1, momentum=0.0, weight_decay=0.5, trust_coefficient=0.001)
    g = np.full(kernel.shape, 2.0, np.float32)
    opt.apply_gradients([(tf.constant(g), kernel)])
    # ||w|| = 0 -> trust 1, and wd * w = 0: a plain SGD step.
    np.testing.assert_allclose(kernel.numpy(), -0.1 * g, rtol=1e-6)


def test_zero_gradient_and_zero_weight_give_no_nan():
    v = keras.Variable(np.zeros([3], np.float32), name="kernel")
    opt = LARS(0.1, weight_decay=0.1)
    opt.apply_gradients([(tf.zeros([3]), v)])
    assert np.all(np.isfinite(v.numpy())) and np.all(v.numpy() == 0.0)


def test_bn_gamma_in_nested_model_is_excluded_by_path():
    model = build_model()
    gamma = model.encoder.layers[1].gamma
    # Keras 3: the short name would not match "batch_normalization" ...
    assert gamma.name == "gamma"
    assert "batch_normalization" not in gamma.name
    # ... the path does.
    assert gamma.path == "outer/encoder/batch_normalization/gamma"

    lr, momentum = 0.2, 0.9
    opt = LARS(lr, momentum=momentum, weight_decay=0.3)
    opt.build(model.trainable_variables)
    assert not opt.uses_weight_decay(gamma)
    assert not opt.uses_layer_adaptation(gamma)
    assert opt.uses_weight_decay(model.encoder.layers[0].kernel)
    assert not opt.uses_weight_decay(model.encoder.layers[0].bias)
    assert not opt.uses_weight_decay(model.head.kernel)

    # Numerically: plain momentum SGD, no decay, no trust ratio.
    g0 = gamma.numpy().copy()
    grad = np.linspace(-1, 1, gamma.shape[0]).astype(np.float32)
    opt.apply_gradients([(tf.constant(grad), gamma)])
    opt.apply_gradients([(tf.constant(grad), gamma)])
    v1 = lr * grad
    v2 = momentum * v1 + lr * grad
    np.testing.assert_allclose(gamma.numpy(), g0 - v1 - v2, rtol=1e-6)


def test_exclusion_lists_are_configurable():
    model = build_model()
    kernel = model.encoder.layers[0].kernel
    opt = LARS(0.1, weight_decay=0.1, exclude_from_weight_decay=("dense",),
               exclude_from_layer_adaptation=())
    opt.build(model.trainable_variables)
    assert not opt.uses_weight_decay(kernel)
    assert opt.uses_layer_adaptation(kernel)
    gamma = model.encoder.layers[1].gamma
    assert opt.uses_weight_decay(gamma) and opt.uses_layer_adaptation(gamma)


def test_weight_decay_is_applied_exactly_once():
    # Layer adaptation off for the kernel, momentum 0, zero gradient: one step
    # must be w <- w - lr * wd * w. Keras' own decoupled decay on top would
    # give w * (1 - lr*wd)^2.
    model = build_model()
    kernel = model.encoder.layers[0].kernel
    w0 = kernel.numpy().copy()
    lr, wd = 0.1, 0.5
    opt = LARS(lr, momentum=0.0, weight_decay=wd,
               exclude_from_layer_adaptation=("kernel",))
    opt.apply_gradients([(tf.zeros_like(kernel), kernel)])
    np.testing.assert_allclose(kernel.numpy(), w0 * (1 - lr * wd), rtol=1e-6)
    assert opt.weight_decay == wd
    assert opt.get_config()["weight_decay"] == wd


def test_lars_config_round_trip_with_schedule():
    sched = WarmUpAndCosine(0.3, 1000, 100, 10, 2)
    opt = LARS(sched, momentum=0.8, weight_decay=1e-4, trust_coefficient=0.002,
               exclude_from_weight_decay=("bias",), nesterov=True)
    config = opt.get_config()
    clone = LARS.from_config(config)
    assert clone.momentum == 0.8 and clone.nesterov
    assert clone.weight_decay == 1e-4 and clone.trust_coefficient == 0.002
    assert clone.get_config()["exclude_from_weight_decay"] == ["bias"]
    assert clone.get_config()["exclude_from_layer_adaptation"] == ["bias"]
    assert isinstance(clone._learning_rate, WarmUpAndCosine)
    # Also through keras' registry.
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, LARS) and again.trust_coefficient == 0.002


def test_lars_learning_rate_follows_schedule_in_tf_function():
    model = build_model()
    variables = model.trainable_variables
    sched = WarmUpAndCosine(1.0, num_examples=256, batch_size=256,
                            train_epochs=4, warmup_epochs=2)
    opt = LARS(sched, momentum=0.0, weight_decay=0.0)
    bias = model.encoder.layers[0].bias  # excluded: plain SGD step
    grads = [tf.ones_like(v) for v in variables]

    @tf.function
    def step():
        opt.apply_gradients(zip(grads, variables))

    before = []
    for _ in range(4):
        before.append(bias.numpy().copy())
        step()
    before.append(bias.numpy().copy())
    used = [float(before[i][0] - before[i + 1][0]) for i in range(4)]
    expected = [float(sched(i)) for i in range(4)]
    np.testing.assert_allclose(used, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(expected, [0.0, 0.5, 1.0, 0.5], atol=1e-6)


def test_lars_rejects_bad_momentum_and_accepts_int_lr():
    with pytest.raises(ValueError, match="momentum"):
        LARS(0.1, momentum=1.5)
    opt = LARS(1)
    assert float(opt.learning_rate) == 1.0


# --------------------------------------------------------------------------
# Schedule


def test_schedule_warmup_and_cosine_closed_form():
    base, n, b = 0.3, 1000, 100
    s = WarmUpAndCosine(base, n, b, train_epochs=10, warmup_epochs=2)
    peak = base * b / 256
    assert s.warmup_steps == 20 and s.total_steps == 100
    np.testing.assert_allclose(s.scaled_learning_rate, peak)
    values = {k: float(s(k)) for k in (0, 10, 19, 20, 40, 60, 100, 150)}
    np.testing.assert_allclose(values[0], 0.0, atol=1e-8)
    np.testing.assert_allclose(values[10], peak / 2, rtol=1e-6)
    np.testing.assert_allclose(values[19], peak * 19 / 20, rtol=1e-6)
    np.testing.assert_allclose(values[20], peak, rtol=1e-6)  # warmup end
    np.testing.assert_allclose(
        values[40], peak * 0.5 * (1 + math.cos(math.pi * 20 / 80)), rtol=1e-5)
    np.testing.assert_allclose(values[60], peak / 2, rtol=1e-5)  # cos middle
    np.testing.assert_allclose(values[100], 0.0, atol=1e-7)  # end
    np.testing.assert_allclose(values[150], 0.0, atol=1e-7)  # stays at 0


def test_schedule_sqrt_scaling():
    lin = WarmUpAndCosine(0.3, 1000, 100, 10, 0)
    sq = WarmUpAndCosine(0.075, 1000, 100, 10, 0, learning_rate_scaling="sqrt")
    np.testing.assert_allclose(float(lin(0)), 0.3 * 100 / 256, rtol=1e-6)
    np.testing.assert_allclose(float(sq(0)), 0.075 * 10.0, rtol=1e-6)
    with pytest.raises(ValueError, match="learning_rate_scaling"):
        WarmUpAndCosine(0.3, 1000, 100, 10, 0, learning_rate_scaling="log")


def test_schedule_without_warmup():
    # 1000 // 256 = 3 full batches an epoch (the pipeline drops the rest).
    s = WarmUpAndCosine(0.256, 1000, 256, train_epochs=10, warmup_epochs=0)
    assert s.warmup_steps == 0 and s.total_steps == 30
    np.testing.assert_allclose(float(s(0)), 0.256, rtol=1e-6)
    np.testing.assert_allclose(
        float(s(13)), 0.256 * 0.5 * (1 + math.cos(math.pi * 13 / 30)),
        rtol=1e-5)
    np.testing.assert_allclose(float(s(30)), 0.0, atol=1e-7)


@pytest.mark.parametrize("epochs,warmup", [(1, 2), (2, 2), (0, 0), (0, 1)])
def test_schedule_total_steps_at_most_warmup(epochs, warmup):
    s = WarmUpAndCosine(0.3, 1000, 100, train_epochs=epochs,
                        warmup_epochs=warmup)
    assert s.total_steps <= s.warmup_steps
    values = np.array([float(s(k)) for k in range(0, 40)])
    assert np.all(np.isfinite(values)) and np.all(values >= 0)
    peak = 0.3 * 100 / 256
    for k in range(min(s.total_steps, s.warmup_steps)):
        np.testing.assert_allclose(values[k], peak * k / s.warmup_steps,
                                   rtol=1e-6, atol=1e-9)
    assert values.max() <= peak * (1 + 1e-6)


def test_schedule_train_steps_override_and_rounding():
    s = WarmUpAndCosine(0.3, 1000, 100, train_epochs=10, warmup_epochs=2,
                        train_steps=50)
    assert s.total_steps == 50
    peak = 0.3 * 100 / 256
    np.testing.assert_allclose(float(s(35)), peak / 2, rtol=1e-5)
    np.testing.assert_allclose(float(s(50)), 0.0, atol=1e-7)
    # warmup_steps = round(warmup_epochs * (N // B)): 0.6 * 3 = 1.8 -> 2 (not floor 1).
    assert WarmUpAndCosine(0.3, 1000, 300, 10, 0.6).warmup_steps == 2
    # train_steps=0 means "not set", like the official flag.
    assert WarmUpAndCosine(0.3, 1000, 100, 10, 2, train_steps=0).total_steps == 100


def test_schedule_step_types_and_tf_function():
    s = WarmUpAndCosine(0.3, 1000, 100, 10, 2)
    ref = float(s(10))
    for step in (10, 10.0, tf.constant(10), tf.constant(10, tf.int64),
                 tf.constant(10.0), tf.Variable(10, dtype=tf.int64)):
        np.testing.assert_allclose(float(s(step)), ref, rtol=1e-7)
    fn = tf.function(lambda k: s(k))
    np.testing.assert_allclose(float(fn(tf.constant(60, tf.int64))),
                               float(s(60)), rtol=1e-7)
    np.testing.assert_allclose(float(fn(tf.constant(5, tf.int64))),
                               float(s(5)), rtol=1e-7)
    assert s(3).dtype == tf.float32


def test_schedule_config_round_trip():
    s = WarmUpAndCosine(0.3, 1000, 100, 10, 2, learning_rate_scaling="sqrt",
                        train_steps=70)
    clone = WarmUpAndCosine.from_config(s.get_config())
    for k in (0, 7, 20, 45, 70):
        assert float(clone(k)) == float(s(k))
    again = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(s))
    assert isinstance(again, WarmUpAndCosine) and again.total_steps == 70


def _official_schedule(base, batch_size, scaling, warmup_steps, total_steps, steps):
    """The official SimCLR schedule in float64 NumPy (model_util.WarmUpAndCosineDecay)."""
    peak = base * batch_size / 256.0 if scaling == "linear" else base * math.sqrt(batch_size)
    steps = np.asarray(steps, np.float64)
    ramp = peak * steps / warmup_steps if warmup_steps else np.full_like(steps, peak)
    decay = max(total_steps - warmup_steps, 1)  # also runs that end inside the warm-up
    progress = np.clip((steps - warmup_steps) / decay, 0.0, 1.0)
    return peak, np.where(steps < warmup_steps, ramp,
                          peak * 0.5 * (1.0 + np.cos(np.pi * progress)))


@pytest.mark.parametrize("base,n,b,epochs,warmup,scaling,steps", [
    (0.3, 50000, 512, 100, 10, "linear", None),      # CIFAR-10 recipe
    (0.075, 1281167, 4096, 800, 10, "sqrt", None),   # ImageNet, sqrt scaling
    (0.5, 1000, 100, 10, 0, "linear", None),         # no warm-up
    (0.3, 1000, 300, 10, 0.6, "linear", None),       # 2 warm-up steps
    (0.3, 1000, 100, 1, 2, "linear", None),          # ends inside the warm-up
    (0.3, 1000, 100, 2, 2, "linear", None),          # ends at the warm-up's end
    (0.2, 73257, 512, 200, 5, "sqrt", 777),          # train_steps override
])
def test_schedule_matches_the_official_closed_form(base, n, b, epochs, warmup, scaling,
                                                    steps):
    """Eager and in tf.function, at every boundary and ~1000 steps between them.

    float32 arithmetic stays within about one float32 epsilon of the peak from
    the float64 formula; a step off anywhere would miss by far more.
    """
    s = WarmUpAndCosine(base, n, b, epochs, warmup, learning_rate_scaling=scaling,
                        train_steps=steps)
    counts = optimizers.step_counts(n, b, epochs, steps, warmup)
    w, t = counts.warmup_steps, counts.total_steps
    grid = set(range(0, t + 10, max(1, t // 1000)))
    grid |= {k for edge in (w, t) for k in (edge - 1, edge, edge + 1) if k >= 0}
    grid = sorted(grid)
    peak, expected = _official_schedule(base, b, scaling, w, t, grid)
    np.testing.assert_allclose(s.scaled_learning_rate, peak, rtol=1e-15)
    in_graph = tf.function(lambda k: s(k))
    tolerance = 2 * np.finfo(np.float32).eps * peak
    for run in (s, in_graph):
        got = np.array([run(tf.constant(k, tf.int64)).numpy() for k in grid])
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    if w < t:  # (a run that ends inside its warm-up never decays)
        assert float(s(t)) == 0.0 and float(s(t + 5)) == 0.0  # ends at 0, stays there
        np.testing.assert_allclose(float(s(w)), peak, rtol=1e-6)  # the peak


# --------------------------------------------------------------------------
# Helpers


@pytest.mark.parametrize("n,b,epochs,warmup,steps", [
    (1000, 256, 10, 1.5, 0), (50000, 512, 100, 10, 0), (10, 4, 3, 0.4, 0),
    (1000, 100, 10, 2, 37)])
def test_step_counts_have_one_definition(n, b, epochs, warmup, steps):
    """steps per epoch, total steps and the schedule's steps are the same numbers."""
    counts = optimizers.step_counts(n, b, epochs, steps, warmup)
    assert counts.steps_per_epoch == optimizers.steps_per_epoch(n, b) == n // b
    assert counts.total_steps == (steps or epochs * (n // b))
    assert counts.warmup_steps == round(warmup * (n // b))
    schedule = WarmUpAndCosine(0.3, n, b, epochs, warmup, train_steps=steps)
    assert (schedule.total_steps, schedule.warmup_steps) == (
        counts.total_steps, counts.warmup_steps)


def test_is_excluded():
    assert is_excluded("a/batch_normalization/gamma", DEFAULT_EXCLUDE)
    assert is_excluded("a/dense/bias", DEFAULT_EXCLUDE)
    assert is_excluded("head_supervised/kernel", DEFAULT_EXCLUDE)
    assert not is_excluded("a/conv2d/kernel", DEFAULT_EXCLUDE)
    assert not is_excluded("a/dense/bias", None)
    assert not is_excluded("a/dense/bias", ())
    assert is_excluded("a/dense/bias", "bias")
    model = build_model()
    assert is_excluded(model.encoder.layers[1].gamma, DEFAULT_EXCLUDE)


def test_weight_decay_l2_excludes_by_path():
    model = build_model()
    model.proj.kernel.assign(np.full(model.proj.kernel.shape, 0.5, np.float32))
    wd = 0.01
    kept = [model.encoder.layers[0].kernel, model.proj.kernel]
    expected = wd * sum(np.sum(v.numpy().astype(np.float64) ** 2) / 2
                        for v in kept)
    got = weight_decay_l2(model.trainable_variables, wd)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    # Its gradient is wd * w, the decay LARS adds to the gradient.
    with tf.GradientTape() as tape:
        reg = weight_decay_l2(model.trainable_variables, wd)
    g = tape.gradient(reg, model.encoder.layers[0].kernel)
    np.testing.assert_allclose(g.numpy(),
                               wd * model.encoder.layers[0].kernel.numpy(),
                               rtol=1e-6)
    assert float(weight_decay_l2(model.trainable_variables, 0.0)) == 0.0
    everything = weight_decay_l2(model.trainable_variables, wd, exclude=())
    assert float(everything) > float(got)


def test_build_optimizer_choices():
    lars = build_optimizer("lars", 0.1, momentum=0.8, weight_decay=1e-6)
    assert isinstance(lars, LARS)
    assert lars.momentum == 0.8 and lars.weight_decay == 1e-6

    sgd = build_optimizer("momentum", 0.1, momentum=0.9, weight_decay=1e-6)
    assert type(sgd) is keras.optimizers.SGD
    assert sgd.momentum == 0.9 and sgd.nesterov
    assert not sgd.weight_decay  # weight decay goes into the loss instead

    adam = build_optimizer("Adam", 1e-3, weight_decay=1e-6)
    assert type(adam) is keras.optimizers.Adam
    assert not adam.weight_decay
    np.testing.assert_allclose(float(adam.learning_rate), 1e-3)

    sched = WarmUpAndCosine(0.3, 1000, 100, 10, 2)
    assert build_optimizer("lars", sched)._learning_rate is sched


def test_build_optimizer_unknown_name():
    with pytest.raises(ValueError) as err:
        build_optimizer("rmsprop", 0.1)
    msg = str(err.value)
    assert "rmsprop" in msg
    for name in ("lars", "momentum", "adam"):
        assert name in msg


# --------------------------------------------------------------------------
# Multi-replica behaviour (subprocess with two logical CPUs)

MULTI_DEVICE_BODY = r"""
import json
import numpy as np
import keras
from simclr_tf.optimizers import LARS, WarmUpAndCosine

rng = np.random.default_rng(0)
N = 8
X = rng.normal(size=(N, 4)).astype("float32")
Y = rng.normal(size=(N, 3)).astype("float32")
W0 = rng.normal(size=(4, 3)).astype("float32")
B0 = rng.normal(size=(3,)).astype("float32")

def train(strategy, make_opt, steps, divide):
    R = strategy.num_replicas_in_sync
    with strategy.scope():
        layer = keras.layers.Dense(
            3, kernel_initializer=keras.initializers.Constant(W0),
            bias_initializer=keras.initializers.Constant(B0))
        layer.build((None, 4))
        opt = make_opt()
        # Built eagerly in the scope: Keras 3.15 fails to create optimizer
        # slots lazily inside strategy.run under tf.function.
        opt.build(layer.trainable_variables)
    per = N // R

    def value_fn(ctx):
        i = ctx.replica_id_in_sync_group
        return tf.constant(X[i * per:(i + 1) * per]), tf.constant(Y[i * per:(i + 1) * per])

    data = strategy.experimental_distribute_values_from_function(value_fn)

    @tf.function
    def step(data):
        def replica_fn(xy):
            x, y = xy
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(layer(x) - y))
                if divide:
                    loss = loss / R
            grads = tape.gradient(loss, layer.trainable_variables)
            opt.apply_gradients(zip(grads, layer.trainable_variables))
        strategy.run(replica_fn, args=(data,))

    for _ in range(steps):
        step(data)
    return layer.kernel.numpy(), layer.bias.numpy()

one = tf.distribute.OneDeviceStrategy("/cpu:0")
def two():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

out = {}

sched = lambda: WarmUpAndCosine(0.4, num_examples=N, batch_size=N,
                                train_epochs=4, warmup_epochs=1)
lars = lambda: LARS(sched(), momentum=0.9, weight_decay=0.05,
                    trust_coefficient=0.01)
(lk1, lb1) = train(one, lars, 3, False)
(lk2, lb2) = train(two(), lars, 3, True)
out["lars_kernel_err"] = float(np.max(np.abs(lk2 - lk1)))
out["lars_bias_err"] = float(np.max(np.abs(lb2 - lb1)))
out["lars_kernel_moved"] = float(np.max(np.abs(lk1 - W0)))
out["lars_bias_moved"] = float(np.max(np.abs(lb1 - B0)))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def two_replica_result():
    return run_with_devices(MULTI_DEVICE_BODY, n_devices=2)


@pytest.mark.slow
def test_lars_two_replicas_match_one_device(two_replica_result):
    r = two_replica_result
    assert r["lars_kernel_moved"] > 1e-4 and r["lars_bias_moved"] > 1e-3
    assert r["lars_kernel_err"] < 1e-6
    assert r["lars_bias_err"] < 1e-6


# --------------------------------------------------------------------------
# Weight decay has one owner: weight_decay.py says what is excluded and whether
# it is applied in the optimizer (LARS) or in the loss (any other).


def _decayed_by_layer_type(network):
    """The hand-listed expectation, from layer types (not paths, not is_excluded):
    ``(kernels of the encoder's and projection head's convolutions and dense
    layers, the supervised head's kernel)``. Biases and BN parameters: never."""
    def kernels(layer):
        return {v.path for sub in layer._flatten_layers()
                if isinstance(sub, (keras.layers.Conv2D, keras.layers.Dense))
                for v in [sub.kernel]}
    body = kernels(network.encoder) | kernels(network.projection_head)
    head = kernels(network.supervised_head)
    never = {v.path for v in network.trainable_variables
             if any(v is getattr(layer, name, None)
                    for layer in network._flatten_layers()
                    for name in ("bias", "gamma", "beta"))}
    # The three sets cover every weight, without overlap.
    assert body | head | never == {v.path for v in network.trainable_variables}
    assert len(body) + len(head) + len(never) == len(network.trainable_variables)
    return body, head


def _penalised(term, variables):
    """Paths of the variables with a non-zero gradient of the penalty ``term(variables)``."""
    with tf.GradientTape() as tape:
        value = term(variables)
    grads = tape.gradient(value, variables)
    return {v.path for v, g in zip(variables, grads)
            if g is not None and np.any(np.asarray(g) != 0)}


def test_decayed_weights_of_a_built_model_for_lars_and_for_decay_in_the_loss():
    from simclr_tf import config as config_lib
    from simclr_tf.models import simclr_model
    cfg = config_lib.Config(resnet_depth=18, width_multiplier=0.25, image_size=16,
                            proj_out_dim=16, num_proj_layers=2)
    network = simclr_model.build_model(cfg.model, 5, probe=True)
    network(tf.zeros([1, 16, 16, 3]))
    rng = np.random.default_rng(0)
    for v in network.trainable_variables:  # no zero weight hides a penalty
        v.assign(rng.normal(size=v.shape).astype("float32"))
    variables = network.trainable_variables
    body, head = _decayed_by_layer_type(network)
    assert network.supervised_head.name == optimizers.SUPERVISED_HEAD == "head_supervised"
    assert len(body) == 21 + 2 and len(head) == 1  # 21 convolutions, 2 projection layers

    # LARS: decays in its update everything but the head; the loss adds the head's L2.
    lars = build_optimizer("lars", 0.1, weight_decay=1e-3)
    lars.build(variables)
    assert {v.path for v in variables if lars.uses_weight_decay(v)} == body
    assert {v.path for v in variables if lars.uses_layer_adaptation(v)} == body
    assert optimizers.weight_decay_of(lars) == ("lars", 1e-3)
    assert _penalised(lambda vs: optimizers.weight_decay_in_loss("lars", 1e-3, vs)[0],
                      variables) == head
    assert _penalised(lambda vs: optimizers.weight_decay_in_loss("lars", 1e-3, vs)[1],
                      variables) == body | head

    # Momentum (and Adam): nothing in the update, the whole L2 in the loss.
    for name in ("momentum", "adam"):
        optimizer = build_optimizer(name, 0.1, weight_decay=1e-3)
        assert not optimizer.weight_decay
        assert optimizers.weight_decay_of(optimizer) == ("none", 0.0)
        term = lambda vs, n=name: optimizers.weight_decay_in_loss(n, 1e-3, vs)  # noqa: E731
        assert _penalised(lambda vs: term(vs)[0], variables) == body | head
        assert _penalised(lambda vs: term(vs)[1], variables) == body | head
    # The value is the official wd * sum(w^2) / 2, in float64 by hand.
    expected = 1e-3 * sum(np.sum(v.numpy().astype(np.float64) ** 2) / 2
                          for v in variables if v.path in body | head)
    loss_term, _ = optimizers.weight_decay_in_loss("momentum", 1e-3, variables)
    np.testing.assert_allclose(float(loss_term), expected, rtol=1e-5)


def test_decay_exclusions_are_defined_once():
    """A complement to the behavioural test: the exclusions and the rule are
    defined only in weight_decay.py, LARS only in lars.py, and the supervised
    head's name is spelled only in weight_decay.py."""
    import ast
    import pathlib
    import simclr_tf
    from simclr_tf import lars as lars_module
    from simclr_tf import weight_decay
    from simclr_tf.models import heads
    root = pathlib.Path(simclr_tf.__file__).parent
    owners = {}
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            for target in targets:
                if isinstance(target, ast.Name) and target.id in (
                        "NOT_DECAYED", "SUPERVISED_HEAD", "DEFAULT_EXCLUDE"):
                    owners.setdefault(target.id, []).append(path.relative_to(root).as_posix())
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in (
                    "is_excluded", "variable_path", "LARS", "weight_decay_in_loss",
                    "decays_in_update"):
                owners.setdefault(node.name, []).append(path.relative_to(root).as_posix())
    expected = {name: ["weight_decay.py"] for name in (
        "NOT_DECAYED", "SUPERVISED_HEAD", "DEFAULT_EXCLUDE", "is_excluded",
        "variable_path", "weight_decay_in_loss", "decays_in_update")}
    assert owners == dict(expected, LARS=["lars.py"])
    for name in expected:  # the names runs use stay importable from optimizers
        assert getattr(optimizers, name) is getattr(weight_decay, name)
    assert optimizers.LARS is lars_module.LARS
    assert optimizers.decays_in_update(lars_module.LARS(0.1))
    for module in ("lars.py", "optimizers.py", "models/heads.py", "models/simclr_model.py",
                   "runtime/task_model.py", "tasks/base.py"):
        assert "head_supervised" not in (root / module).read_text(), module
    assert heads.SupervisedHead(3).name == weight_decay.SUPERVISED_HEAD
