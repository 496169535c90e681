"""The compiled steps of a run: one training step, a chunk of them, one eval step.

A training step runs a task's loss (:mod:`simclr_tf.tasks`) under a
``tf.GradientTape`` on each replica, applies the gradients and updates the
step metrics; the non-finite policy lives here, not in the model.
"""

import keras
import tensorflow as tf

from simclr_tf import distribute
from simclr_tf.config import NONFINITE_POLICIES


def step_policy(nonfinite_policy, loss_scale=None):
    """The non-finite policy a step runs with: float16's loss scaling always skips
    an overflowing step (that is how the scale backs off)."""
    return "skip" if loss_scale is not None else nonfinite_policy


def train_metrics(names, nonfinite_policy="stop"):
    """``{name: keras.metrics.Mean}`` for the task's metrics (+ ``skipped_steps``).

    Create them inside the strategy's scope: only then are their variables
    synchronised on read, so that a metric reports the mean over every
    replica and worker (the global batch), not this worker's share.
    """
    metrics = {n: keras.metrics.Mean(name=n) for n in names}
    if nonfinite_policy == "skip":
        metrics["skipped_steps"] = keras.metrics.Sum(name="skipped_steps")
    return metrics


def _bn_state(model):
    """The variables a training-mode forward pass updates (BN statistics)."""
    return [v for v in model.non_trainable_variables
            if v.name in ("moving_mean", "moving_variance")]


def no_weight_decay(variables):
    zero = tf.constant(0.0)
    return zero, zero


def compute_loss(model, task, batch, weight_decay=no_weight_decay, own=(), training=True):
    """``(loss, metrics)`` of ``task`` on ``batch``: the one forward pass of a step.

    ``model(inputs)`` once, then the task's objective on its outputs, plus the
    weight-decay term ``weight_decay(variables)`` returns for the trainable
    weights not in ``own`` (those with an optimizer of their own; see
    :func:`simclr_tf.optimizers.weight_decay_in_loss`); the whole penalty is
    reported as ``weight_decay``.
    """
    inputs, labels = batch
    batch = (inputs, tf.cast(labels, tf.int32))
    objective, results = task.compute_loss(model(inputs, training=training), batch)
    own = {id(v) for v in own}
    term, penalty = weight_decay([v for v in model.trainable_variables if id(v) not in own])
    results["weight_decay"] = penalty
    results["loss"] = total = objective + term
    return total, results


def make_train_step(model, task, updates, metrics, nonfinite_policy="stop", loss_scale=None,
                    weight_decay=no_weight_decay):
    """Returns ``train_step(batch) -> {metric: value}`` for ``strategy.run``.

    Each replica computes :func:`compute_loss` (the mean over its examples),
    divides it by the number of replicas (the optimizers sum the replicas'
    gradients, so the update follows the global-batch mean) and applies the
    gradients; weights without a gradient are left out.

    ``updates``: ``[(optimizer, variables)]`` (``task.build_optimizers``):
    the first (the run's) optimizer applies every gradient but those of the
    later entries' variables, which their own optimizers apply;
    ``weight_decay`` (e.g. ``functools.partial(optimizers.weight_decay_in_loss,
    "lars", 1e-6)``) gives the loss's decay term over the run's weights.

    ``loss_scale``: a :class:`simclr_tf.loss_scale.DynamicLossScale` for
    float16: the loss is scaled before the gradients and the gradients
    unscaled after; an overflowing step is skipped as with
    ``nonfinite_policy="skip"`` (which it implies: ``metrics`` must come from
    ``train_metrics(names, "skip")``) and lowers the scale.

    ``nonfinite_policy``: ``"stop"`` applies every update (the loop checks
    the loss and stops); ``"skip"``: a step whose loss or gradients are
    non-finite on any replica changes no weight, optimizer slot or BN
    statistic, only the step counters advance, and ``skipped_steps`` counts it.
    """
    if nonfinite_policy not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite_policy must be 'stop' or 'skip', got "
                         f"{nonfinite_policy!r}.")
    skip = step_policy(nonfinite_policy, loss_scale) == "skip"
    if skip and "skipped_steps" not in metrics:
        raise ValueError("Skipping steps (nonfinite_policy='skip' or a loss_scale) needs "
                         "the skipped_steps metric: train_metrics(names, 'skip').")
    updates = _Updates(updates)

    def train_step(batch):
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        bn_state = [tf.identity(v) for v in _bn_state(model)] if skip else None
        with tf.GradientTape() as tape:
            loss, results = compute_loss(model, task, batch, weight_decay, updates.own)
            scaled_loss = loss / num_replicas
            if loss_scale is not None:
                scaled_loss = loss_scale.scale_loss(scaled_loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        if loss_scale is not None:
            grads = loss_scale.unscale(grads)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if skip:
            _apply_or_skip(model, updates, metrics, loss, pairs, results, bn_state,
                           num_replicas, loss_scale)
        else:
            updates.apply(pairs)
            for name, value in results.items():
                if name in metrics:
                    metrics[name].update_state(value)
        return {name: m.result() for name, m in metrics.items()}

    return train_step


class _Updates:
    """A step's optimizers: each own optimizer applies its variables' gradients, the
    first (the run's) all the others'."""

    def __init__(self, updates):
        self.updates = list(updates)
        self.own = [v for _, variables in self.updates[1:] for v in variables]
        self._own_ids = [{id(v) for v in variables} for _, variables in self.updates[1:]]
        self._taken = {id(v) for v in self.own}

    def apply(self, pairs):
        if len(self.updates) == 1:
            self.updates[0][0].apply_gradients(pairs)
            return
        self.updates[0][0].apply_gradients([p for p in pairs if id(p[1]) not in self._taken])
        for (optimizer, _), ids in zip(self.updates[1:], self._own_ids):
            optimizer.apply_gradients([p for p in pairs if id(p[1]) in ids])

    def build(self, variables):
        """Builds the optimizers (no variable may be created inside ``tf.cond``)."""
        for i, (optimizer, own) in enumerate(self.updates):
            if not optimizer.built:
                optimizer.build(variables if i == 0 else own)

    def skip(self):
        """A skipped step: only the step counters advance."""
        for optimizer, _ in self.updates:
            optimizer.iterations.assign_add(1)


def _apply_or_skip(model, updates, metrics, loss, pairs, results, bn_state, num_replicas,
                   loss_scale=None):
    """nonfinite_policy="skip": the update unless the step is non-finite.

    The decision is all-reduced, so every replica (and worker) takes the
    same branch. A skipped step restores the BN statistics its forward pass
    changed, leaves weights and optimizer slots alone and only advances
    ``optimizer.iterations`` (so the step keeps pointing at the same batch
    of the data stream when the run resumes).
    """
    updates.build(model.trainable_variables)
    finite = tf.math.is_finite(tf.cast(loss, tf.float32))
    for g, _ in pairs:
        finite = tf.logical_and(finite, tf.reduce_all(
            tf.math.is_finite(tf.convert_to_tensor(g))))
    bad_replicas = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    skip = bad_replicas > 0
    if loss_scale is not None:
        loss_scale.update(tf.logical_not(skip))

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(skip, updates.skip, lambda: updates.apply(pairs))
    else:
        # As keras.optimizers.LossScaleOptimizer: a strategy cannot run a
        # tf.cond whose branch calls merge_call (apply_gradients does) in a
        # replica context, so branch in the cross-replica context.
        def merge_fn(strategy, skip, grads_and_vars):
            skip = strategy.experimental_local_results(skip)[0]
            tf.cond(skip, updates.skip, lambda: strategy.extended.call_for_each_replica(
                updates.apply, args=(grads_and_vars,)))

        tf.distribute.get_replica_context().merge_call(merge_fn, args=(skip, pairs))
    for v, old in zip(_bn_state(model), bn_state):
        v.assign(tf.where(skip, old, v))
    keep = 1.0 - tf.cast(skip, tf.float32)
    for name, value in results.items():
        if name in metrics:
            value = tf.cast(value, tf.float32)
            metrics[name].update_state(tf.where(skip, tf.zeros_like(value), value),
                                       sample_weight=keep)
    # Sum metrics add up their replicas when read: count each step once.
    metrics["skipped_steps"].update_state(tf.cast(skip, tf.float32) / num_replicas)


def make_train_steps(train_step, strategy, optimizer, jit_compile=False,
                     nonfinite_step=None, stop=None):
    """The ``tf.function(iterator, num_steps)`` that runs ``num_steps`` steps.

    One call runs the steps in a loop without host syncs; with ``jit_compile``
    each replica's step is XLA-compiled.

    ``nonfinite_step``: optional int64 ``tf.Variable`` holding 0; after the
    first step whose loss is non-finite on a replica of this worker it holds
    that step's number, so the loop can name it (no cross-worker
    communication: on several workers it may name a later step).

    ``stop``: optional bool ``tf.Variable`` (on the host's CPU), read before
    each step: once it is true (on any worker) the call returns without
    running the rest, so it may run fewer than ``num_steps`` steps
    (``optimizer.iterations`` says how many). On several workers the flags are
    summed over the replicas before each step (one scalar all-reduce), so
    every worker stops at the same step.
    """
    # The step is traced as written: autograph would convert every function
    # it calls (the model, the loss, the optimizer: ~300 of them, about 2 s
    # of each process's first trace) although none branches on a tensor.
    # Only the loop below needs autograph.
    step_fn = tf.autograph.experimental.do_not_convert(train_step)
    if jit_compile:
        step_fn = tf.function(step_fn, jit_compile=True, reduce_retracing=True)
    several_workers = stop is not None and distribute.num_workers(strategy) > 1

    def one_step(iterator):
        logs = strategy.run(step_fn, args=(next(iterator),))
        if nonfinite_step is not None:
            # The running mean of the chunk's loss turns non-finite at the
            # first bad step and stays so.
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(x)) for x in
                                    strategy.experimental_local_results(logs["loss"])])
            step = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64)
            nonfinite_step.assign(tf.where(
                tf.logical_or(finite, nonfinite_step > 0), nonfinite_step, step))

    def stopped():
        if not several_workers:
            return stop.read_value()

        def flag_sum():
            flag = tf.cast(stop.read_value(), tf.float32)
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, flag)

        return strategy.experimental_local_results(strategy.run(flag_sum))[0] > 0

    @tf.function
    def train_steps(iterator, num_steps):
        if stop is None:
            for _ in tf.range(num_steps):
                one_step(iterator)
        else:
            done = tf.zeros_like(num_steps)
            while tf.logical_and(done < num_steps, tf.logical_not(stopped())):
                one_step(iterator)
                done += 1

    return train_steps


def eval_metrics():
    """Top-1 and top-5 accuracy (create them in the strategy's scope, as train_metrics)."""
    return {"top1": keras.metrics.SparseTopKCategoricalAccuracy(k=1, name="top1"),
            "top5": keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")}


def make_eval_step(model, metrics):
    """Returns ``eval_step(batch)`` updating top-1/top-5 of ``logits_sup``.

    Unlabelled examples (label -1) do not count; the metrics' ``count`` is
    the number of labelled ones.
    """

    def eval_step(batch):
        images, labels = batch
        logits = tf.cast(model(images, training=False)["logits_sup"], tf.float32)
        labels = tf.cast(labels, tf.int32)
        valid = tf.cast(labels >= 0, tf.float32)
        labels = tf.maximum(labels, 0)
        for metric in metrics.values():
            metric.update_state(labels, logits, sample_weight=valid)

    return eval_step
