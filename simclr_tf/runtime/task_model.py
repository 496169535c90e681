"""Keras' ``compile``/``fit``/``evaluate`` for a SimCLR model and a task."""

import functools

import keras
import tensorflow as tf

from simclr_tf import optimizers
from simclr_tf.runtime import steps as steps_lib
from simclr_tf.tasks.base import others


class TaskModel(keras.Model):
    """Trains a :class:`~simclr_tf.SimCLRModel` on a :class:`~simclr_tf.tasks.Task` with ``fit``.

    ``python -m simclr_tf.run`` drives training with its own loop (exact
    resume, checkpoints, several workers). In a notebook or a Keras app, this
    adapter gives the same training step
    (:func:`simclr_tf.runtime.steps.make_train_step`) through ``model.fit``
    and top-1/top-5 through ``model.evaluate``; the network stays a separate
    object (``network``) to export or reuse. Weights with an optimizer of
    their own (``task.own_optimizers``, e.g. the probe's, at a constant
    learning rate since ``fit`` does not know the run's length) are built on
    the first step; the compiled optimizer trains the rest.

    Args:
        network: the :class:`~simclr_tf.SimCLRModel` to train.
        task: the objective, e.g. ``simclr_tf.tasks.PretrainTask(cfg.loss)``.
        nonfinite_policy: ``"stop"`` or ``"skip"`` (see
            :func:`~simclr_tf.runtime.steps.make_train_step`).
        weight_decay: ``(optimizer name, coefficient)`` for
            :func:`simclr_tf.optimizers.weight_decay_in_loss`; default: the
            compiled optimizer's (a LARS decays inside; others get none).
        loss_scale: a :class:`~simclr_tf.loss_scale.DynamicLossScale` for a
            network built with ``precision="float16"`` (implies ``"skip"``).

    Example:

    ```python
    cfg = simclr_tf.Config(image_size=32)
    network = simclr_tf.build_model(cfg, num_classes=10)
    trainer = TaskModel(network, simclr_tf.build_task("pretrain", cfg.loss))
    trainer.compile(optimizer=simclr_tf.LARS(0.3, weight_decay=1e-6))
    trainer.fit(train_ds, steps_per_epoch=100)  # ({"view1", "view2"}, labels)
    trainer.evaluate(eval_ds)                    # (images [B, 32, 32, 3], labels)
    ```

    Reference: Chen et al. 2020, arXiv:2002.05709.
    """

    def __init__(self, network, task, nonfinite_policy="stop", weight_decay=None,
                 loss_scale=None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.task = task
        self.nonfinite_policy = steps_lib.step_policy(nonfinite_policy, loss_scale)
        self.weight_decay = weight_decay
        self.loss_scale = loss_scale
        self._train_metrics = steps_lib.train_metrics(task.metric_names(network),
                                                      self.nonfinite_policy)
        self._eval_metrics = steps_lib.eval_metrics()
        self._eval_step = steps_lib.make_eval_step(network, self._eval_metrics)
        self._own = _Untracked()  # the task's own optimizers, once built
        self._train_step = None

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def _decay(self):
        name, coefficient = self.weight_decay or optimizers.weight_decay_of(self.optimizer)
        return functools.partial(optimizers.weight_decay_in_loss, name, coefficient)

    def compute_loss(self, batch, training=True):
        """``(loss, metrics)`` of the task on ``batch`` (no update)."""
        own = [v for _, variables in self._own_optimizers() for v in variables]
        return steps_lib.compute_loss(self.network, self.task, batch, self._decay(), own,
                                      training=training)

    def _own_optimizers(self):
        # Built outside the traced replica function (in the strategy's
        # cross-replica context), as fit builds the compiled optimizer:
        # variables created per replica would not be mirrored.
        if self._own.value is None:
            with tf.init_scope():
                self._own.value = self.task.own_optimizers(self.network)
        return self._own.value

    def make_train_function(self, force=False):
        # Build every optimizer eagerly, in the strategy's scope, before fit
        # traces the step: a step that creates variables is traced twice.
        if self.network.built:
            with self.distribute_strategy.scope():
                self._own_optimizers()
                if not self.optimizer.built:
                    with tf.init_scope():
                        self.optimizer.build(self.network.trainable_variables)
        return super().make_train_function(force)

    def train_step(self, data):
        if self._train_step is None:
            own = self._own_optimizers()
            updates = [(self.optimizer, others(self.network, own))] + own
            self._train_step = steps_lib.make_train_step(
                self.network, self.task, updates, self._train_metrics,
                self.nonfinite_policy, self.loss_scale, self._decay())
        return self._train_step(data)

    def test_step(self, data):
        self._eval_step(data)
        return {name: m.result() for name, m in self._eval_metrics.items()}

    @property
    def metrics(self):
        return list(self._train_metrics.values()) + list(self._eval_metrics.values())


class _Untracked:
    """Holds the task's optimizers out of Keras' tracking (a built model refuses new state;
    the checkpoint of a fit run is the user's business)."""

    value = None
