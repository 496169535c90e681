"""What every training objective shares: metrics, weight decay, the loss's total."""

import tensorflow as tf

from simclr_tf import optimizers

_NOT_DECAYED = ("batch_normalization", "bias")
_HEAD = "head_supervised"


class Task:
    """One training objective: its input stream and the loss of one replica's batch.

    A task is stateless: it holds its settings (a ``simclr_tf.config.LossConfig``,
    ``cfg.loss``) and computes, for a model and a batch, the loss to minimise
    and the metrics to report. The training step
    (:func:`simclr_tf.runtime.steps.make_train_step`) takes the gradients,
    applies the non-finite policy and averages the metrics.

    Subclasses set ``name`` and implement :meth:`objective`,
    :meth:`objective_metrics` and :meth:`train_dataset`.

    Weight decay, as the official code: LARS applies it in its update
    (excluding BN, biases and the supervised head, by variable path), and the
    task adds the supervised head's part as the L2 term
    ``weight_decay * sum(w^2) / 2`` over its kernel; with any other optimizer
    the task adds that term over every weight that is neither a BN parameter
    nor a bias. The whole term is reported as the ``weight_decay`` metric.
    Weights in :meth:`probe_variables` (a probe with its own optimizer) are
    never decayed.

    Args:
        loss_cfg: a ``simclr_tf.config.LossConfig``.
    """

    name = None

    def __init__(self, loss_cfg):
        self.cfg = loss_cfg
        self.decay_in_loss = loss_cfg.optimizer != "lars"

    def probe_variables(self, model):
        """Weights trained by their own optimizer (the probe's), not the run's.

        Empty unless the task has a probe with its own learning rate
        (:class:`~simclr_tf.tasks.pretrain.PretrainTask`); those weights get
        no weight decay.
        """
        return []

    def objective_metrics(self, model):
        """Names of the metrics :meth:`objective` returns for ``model``."""
        raise NotImplementedError

    def metric_names(self, model):
        """Every metric of a training step, in reporting order."""
        return ("loss",) + tuple(self.objective_metrics(model)) + ("weight_decay",)

    def objective(self, model, images, labels, training):
        """Returns (objective on this replica, dict of metric values)."""
        raise NotImplementedError

    def train_dataset(self, data_cfg, augment_cfg, batch_size, label_subset, **stream):
        """``(tf.data.Dataset, info)`` of this objective's training batches.

        ``stream``: the keyword arguments of the pipeline builders that place
        this input pipeline in the run (seed, start_epoch, skip_batches,
        num_shards, shard_index, data_dir, cache).
        """
        raise NotImplementedError

    def compute_loss(self, model, batch, training=True):
        """Returns (total loss on this replica, dict of metric values).

        The total is the objective plus, for optimizers other than LARS, the
        L2 weight-decay term. It is the mean over this replica's examples:
        the training step divides it by the number of replicas before taking
        gradients, which the optimizer then sums over replicas.
        """
        images, labels = batch
        total, results = self.objective(model, images, tf.cast(labels, tf.int32), training)
        penalty = tf.constant(0.0)
        if self.cfg.weight_decay > 0:
            own = {id(v) for v in self.probe_variables(model)}
            variables = [v for v in model.trainable_variables if id(v) not in own]
            penalty = optimizers.weight_decay_l2(variables, self.cfg.weight_decay,
                                                 exclude=_NOT_DECAYED)
            if self.decay_in_loss:
                total = total + penalty
            else:  # LARS leaves the supervised head to the loss
                head = [v for v in variables if _HEAD in optimizers.variable_path(v)]
                total = total + optimizers.weight_decay_l2(head, self.cfg.weight_decay,
                                                           exclude=_NOT_DECAYED)
        results["weight_decay"] = penalty
        results["loss"] = total
        return total, results
