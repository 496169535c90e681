"""Keras' ``compile``/``fit``/``evaluate`` for a SimCLR model and a task."""

import keras
import tensorflow as tf

from simclr_tf import optimizers
from simclr_tf.runtime import steps as steps_lib


class TaskModel(keras.Model):
    """Trains a :class:`~simclr_tf.SimCLRModel` on a :class:`~simclr_tf.tasks.Task` with ``fit``.

    ``python -m simclr_tf.run`` drives training with its own loop
    (:func:`simclr_tf.runtime.train`: exact resume, checkpoints, several
    workers). In a notebook or a Keras app, this adapter gives the same
    training step (:func:`simclr_tf.runtime.steps.make_train_step`) through
    ``model.fit`` and the top-1/top-5 evaluation through ``model.evaluate``;
    the network stays a separate object (``network``) to export or reuse.

    Args:
        network: the :class:`~simclr_tf.SimCLRModel` to train.
        task: the objective, e.g. ``simclr_tf.tasks.PretrainTask(cfg.loss)``.
        nonfinite_policy: ``"stop"`` or ``"skip"`` (see
            :func:`~simclr_tf.runtime.steps.make_train_step`).
        probe_optimizer: the optimizer of the task's probe weights
            (``task.probe_variables``: pretraining's linear probe when
            ``probe_learning_rate > 0``). Default: SGD with momentum 0.9 at a
            constant ``probe_learning_rate`` (``fit`` does not know the run's
            length; ``simclr_tf.run`` decays it by a cosine).
        loss_scale: a :class:`~simclr_tf.loss_scale.DynamicLossScale` for a
            network built with ``precision="float16"`` (implies ``"skip"``).

    Example:

    ```python
    cfg = simclr_tf.Config(image_size=32)
    network = simclr_tf.build_model(cfg.model, num_classes=10)
    trainer = TaskModel(network, simclr_tf.build_task("pretrain", cfg.loss))
    trainer.compile(optimizer=simclr_tf.LARS(0.3, weight_decay=1e-6))
    trainer.fit(train_ds, steps_per_epoch=100)  # (views [B, 32, 32, 6], labels)
    trainer.evaluate(eval_ds)                    # (images [B, 32, 32, 3], labels)
    ```

    Reference: Chen et al. 2020, arXiv:2002.05709.
    """

    def __init__(self, network, task, nonfinite_policy="stop", probe_optimizer=None,
                 loss_scale=None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.task = task
        self.nonfinite_policy = steps_lib.step_policy(nonfinite_policy, loss_scale)
        self.probe_optimizer = probe_optimizer
        self.loss_scale = loss_scale
        self._train_metrics = steps_lib.train_metrics(task.metric_names(network),
                                                      self.nonfinite_policy)
        self._eval_metrics = steps_lib.eval_metrics()
        self._eval_step = steps_lib.make_eval_step(network, self._eval_metrics)
        self._train_step = None

    def call(self, images, training=False):
        return self.network(images, training=training)

    def compute_loss(self, batch, training=True):
        """``(loss, metrics)`` of the task on ``batch`` (no update)."""
        return self.task.compute_loss(self.network, batch, training=training)

    def make_train_function(self, force=False):
        # fit calls this before the first step. Building the optimizers here,
        # eagerly and in the strategy's scope, keeps variable creation out of
        # the traced step: tf.function traces a step that creates variables
        # twice (measured: 2 traces of the first fit, 1 with this).
        if self.network.built:
            with self.distribute_strategy.scope():
                self._build_optimizers(main=True)
        return super().make_train_function(force)

    def _build_optimizers(self, main):
        """Creates (if needed) and builds the probe optimizer, and the main one if ``main``.

        ``main`` only once the network is built: before, its variables are not
        all there (a ``train_step`` called eagerly on an unbuilt network
        leaves the main optimizer to the step, which builds it on first use).
        """
        probe = self.task.probe_variables(self.network)
        if self.probe_optimizer is None and probe:
            # Built outside the traced replica function (in the strategy's
            # cross-replica context), as fit builds the main optimizer:
            # variables created per replica would not be mirrored.
            with tf.init_scope():
                self.probe_optimizer = keras.optimizers.SGD(
                    self.task.cfg.probe_learning_rate, momentum=optimizers.PROBE_MOMENTUM)
        to_build = [(self.probe_optimizer, probe)]
        if main:
            to_build.append((self.optimizer, self.network.trainable_variables))
        with tf.init_scope():
            for opt, variables in to_build:
                if opt is not None and not opt.built:
                    opt.build(variables)

    def train_step(self, data):
        if self._train_step is None:
            self._build_optimizers(main=False)
            self._train_step = steps_lib.make_train_step(
                self.network, self.task, self.optimizer, self._train_metrics,
                self.nonfinite_policy, self.probe_optimizer, self.loss_scale)
        return self._train_step(data)

    def test_step(self, data):
        self._eval_step(data)
        return {name: m.result() for name, m in self._eval_metrics.items()}

    @property
    def metrics(self):
        return list(self._train_metrics.values()) + list(self._eval_metrics.values())
