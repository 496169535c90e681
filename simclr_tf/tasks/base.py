"""What every objective has: a model, optimizers, an input stream and a loss."""

from simclr_tf import optimizers
from simclr_tf.data import pipeline
from simclr_tf.models import simclr_model


class Task:
    """One training objective, everything that makes it that objective.

    A task is stateless: it holds its loss settings (``cfg.loss``) and builds,
    for a run, the model (:meth:`build_model`), the optimizers and the
    weights each one updates (:meth:`build_optimizers`) and the input stream
    (:meth:`build_inputs`); for a batch it computes the objective from the
    model's outputs (:meth:`compute_loss`). The generic training step
    (:mod:`simclr_tf.runtime.steps`) runs ``model(inputs)``, adds weight decay
    (:func:`simclr_tf.optimizers.weight_decay_in_loss`) and applies the gradients.

    Subclasses set ``name`` and implement :meth:`compute_loss`,
    :meth:`objective_metrics` and :meth:`build_inputs`.

    Args:
        loss_cfg: a ``simclr_tf.config.LossConfig``.
    """

    name = None
    #: Trains on the labelled subset only (its size is the epoch), not every image.
    labelled_only = False
    #: Checkpoint keys of :meth:`own_optimizers`' optimizers, in their order
    #: (fixed: checkpoints written by earlier versions use them).
    own_optimizer_keys = ()
    #: Config keys of this objective a run may change when it resumes.
    resume_free_keys = ()
    #: Learns a representation from views: the run shows its view pairs and
    #: ends with the frozen-feature evaluation.
    learns_representation = False

    def __init__(self, loss_cfg):
        self.cfg = loss_cfg

    @classmethod
    def for_run(cls, cfg, strategy, num_classes):
        """``(task, num_classes)`` for a run of ``cfg`` (a ``simclr_tf.Config``):
        the task with what it loads for the run (in ``strategy``'s scope), and the
        supervised head's classes (``num_classes``: the training data's).

        Raises ConfigError when what the run names cannot be loaded.
        """
        return cls(cfg.loss), num_classes

    @classmethod
    def build_model(cls, model_cfg, num_classes):
        """The network of this objective: a :class:`~simclr_tf.SimCLRModel` of ``cfg.model``."""
        return simclr_model.build_model(model_cfg, num_classes)

    @classmethod
    def labels_used(cls, loss_cfg, labelled):
        """How many of the ``labelled`` examples' labels the objective uses."""
        return labelled

    def check_data(self, num_classes, where):
        """Raises ConfigError when the training data (``num_classes`` classes,
        0 without labels; ``where`` names it) cannot serve this objective."""

    def own_optimizers(self, model, total_steps=None):
        """``[(optimizer, variables)]`` for weights that do not follow the run's
        optimizer (they get no weight decay); built. None by default.

        ``total_steps``: the run's length, or None when it is unknown (``fit``).
        """
        return []

    def build_optimizers(self, model, optim_cfg, schedule, total_steps):
        """``[(optimizer, variables it updates)]``, built; the first is the run's.

        The run's optimizer (``cfg.optim`` with ``schedule``) is built over every
        trainable weight, so checkpoints keep one layout whichever optimizer
        trains a weight, and updates those no :meth:`own_optimizers` entry takes.
        """
        optimizer = optimizers.build_optimizer(
            optim_cfg.optimizer, schedule, momentum=optim_cfg.momentum,
            weight_decay=optim_cfg.weight_decay)
        optimizer.build(model.trainable_variables)
        own = self.own_optimizers(model, total_steps)
        return [(optimizer, others(model, own))] + own

    def checkpointed_optimizers(self, updates):
        """``{checkpoint key: optimizer}`` of the own optimizers in ``updates``
        (:meth:`build_optimizers`' result after its first entry), keyed by
        :attr:`own_optimizer_keys`: what the checkpoint saves beside the run's optimizer."""
        own = [optimizer for optimizer, _ in updates[1:]]
        if len(own) > len(self.own_optimizer_keys):
            raise ValueError(f"{type(self).__name__} has {len(own)} optimizer(s) of its own "
                             f"but names {len(self.own_optimizer_keys)} checkpoint key(s) in "
                             "own_optimizer_keys.")
        return dict(zip(self.own_optimizer_keys, own))

    def build_inputs(self, data_cfg, augment_cfg, shard, label_subset=None):
        """``(tf.data.Dataset, info)`` of this objective's ``(inputs, labels)`` batches.

        ``shard``: a :class:`simclr_tf.data.pipeline.Shard`.
        """
        raise NotImplementedError

    def build_eval_inputs(self, data_cfg, shard):
        """``(tf.data.Dataset, info)``: one pass of ``data_cfg.eval_split`` as
        ``(images, labels)`` batches (eval preprocessing, the last batch partial),
        what the run's evaluation scores.

        ``shard``: a :class:`simclr_tf.data.pipeline.Shard` (or a batch size).
        """
        return pipeline.build_eval_dataset(data_cfg, shard)

    def objective_metrics(self, model):
        """Names of the metrics :meth:`compute_loss` returns for ``model``."""
        raise NotImplementedError

    def metric_names(self, model):
        """Every metric of a training step, in reporting order."""
        return ("loss",) + tuple(self.objective_metrics(model)) + ("weight_decay",)

    def compute_loss(self, outputs, batch):
        """``(objective on this replica, {metric: value})``.

        ``outputs``: the model's outputs on ``batch[0]``; ``batch``:
        ``(inputs, labels int32)``. The objective is the mean over this
        replica's examples (the step divides by the number of replicas).
        """
        raise NotImplementedError


def others(model, updates):
    """``model``'s trainable weights that no ``(optimizer, variables)`` of ``updates`` takes."""
    taken = {id(v) for _, variables in updates for v in variables}
    return [v for v in model.trainable_variables if id(v) not in taken]
