"""Everything a run is made of, built once from its config (the setup of a run)."""

import dataclasses
import functools
from typing import Any, Optional

import keras
import tensorflow as tf
from absl import logging

from simclr_tf import distribute, optimizers, tasks
from simclr_tf.config import ConfigError
from simclr_tf.data import datasets, image_folder, subsets
from simclr_tf.data.pipeline import Shard
from simclr_tf.loss_scale import DynamicLossScale
from simclr_tf.runtime.checkpointer import Checkpointer
from simclr_tf.runtime.run_dir import RunDir


@dataclasses.dataclass
class Experiment:
    """The parts of one run, built by :func:`build`; each part has one job.

    Attributes:
        cfg: the resolved :class:`simclr_tf.config.Config`.
        strategy: the ``tf.distribute`` strategy.
        is_chief: whether this process writes results and exports.
        run_dir: the :class:`~simclr_tf.runtime.run_dir.RunDir` (model_dir layout).
        train_info: the training split's ``DatasetInfo`` (the labelled subset's
            size when fine-tuning on a subset).
        num_classes: classes of the supervised head (0: none).
        label_subset: the ``LabelSubset`` of a semi-supervised run, or None.
        num_labeled_examples: labels the run may use.
        steps: the run's :class:`~simclr_tf.optimizers.StepCounts`.
        model: the :class:`~simclr_tf.models.simclr_model.SimCLRModel`.
        task: the :class:`~simclr_tf.tasks.Task` of ``train_mode``.
        schedule: the run's learning-rate schedule.
        updates: ``[(optimizer, variables)]`` of the task; the first is the run's.
        checkpointer: the :class:`~simclr_tf.runtime.checkpointer.Checkpointer`.
        jit_compile: whether the per-replica step is XLA-compiled.
        loss_scale: the :class:`~simclr_tf.loss_scale.DynamicLossScale` of
            ``precision=float16``, or None.
        gone_bad_before: :func:`image_folder.mid_run_skipped` when the run was
            built (the count is per process; see :meth:`files_gone_bad`).
    """

    cfg: Any
    strategy: Any
    is_chief: bool
    run_dir: RunDir
    train_info: Any
    num_classes: int
    label_subset: Optional[Any]
    num_labeled_examples: int
    steps: optimizers.StepCounts
    model: Any
    task: tasks.Task
    schedule: Any
    updates: list
    checkpointer: Checkpointer
    jit_compile: bool
    loss_scale: Optional[DynamicLossScale] = None
    gone_bad_before: dict = dataclasses.field(default_factory=image_folder.mid_run_skipped)

    def files_gone_bad(self):
        """Sorted paths of the image files this run found unreadable after the scan
        (each replaced by a blank unlabelled image): those met since it was built, not
        an earlier run's in the same process (a notebook's)."""
        now = image_folder.mid_run_skipped()
        return sorted(p for p, n in now.items() if n > self.gone_bad_before.get(p, 0))

    @property
    def optimizer(self):
        """The run's optimizer (its iterations are the global step)."""
        return self.updates[0][0]

    @property
    def step(self):
        return self.checkpointer.step

    @property
    def weight_decay(self):
        """The loss's weight-decay term (:func:`simclr_tf.optimizers.weight_decay_in_loss`)."""
        optim = self.cfg.optim
        return functools.partial(optimizers.weight_decay_in_loss, optim.optimizer,
                                 optim.weight_decay)

    @property
    def multi_worker(self):
        return distribute.num_workers(self.strategy) > 1

    def train_dataset(self, start_step):
        """The task's distributed training stream, positioned at ``start_step``."""
        cfg = self.cfg
        epoch, skip = divmod(start_step, self.steps.steps_per_epoch)

        def make(batch, num_shards, shard_index, skip_batches):
            shard = Shard(batch, num_shards, shard_index, epoch, skip_batches)
            return self.task.build_inputs(cfg.data, cfg.augment, shard, self.label_subset)

        return distribute.distribute_dataset(self.strategy, make, cfg.train_batch_size,
                                             skip_steps=skip)

    def eval_dataset(self):
        """The task's distributed evaluation stream (one pass of ``eval_split``)."""
        data = self.cfg.data

        def make(batch, num_shards, shard_index, _):
            return self.task.build_eval_inputs(data, Shard(batch, num_shards, shard_index))

        return distribute.distribute_dataset(self.strategy, make, data.eval_batch_size)


def _check_batches_split(cfg, num_replicas):
    for key in ("train_batch_size", "eval_batch_size"):
        value = getattr(cfg, key)
        if value % num_replicas:
            raise ConfigError(
                f"Invalid value {value} for '{key}': it must be divisible by the "
                f"number of replicas ({num_replicas}).")


def _check_batch_fits(cfg, num_examples, subset_note):
    if cfg.mode in ("train", "train_then_eval") and cfg.train_batch_size > num_examples:
        raise ConfigError(
            f"Invalid value {cfg.train_batch_size} for 'train_batch_size': the "
            f"{cfg.train_split!r} split of {cfg.dataset!r} has only {num_examples} "
            f"examples{subset_note}. Use a batch size <= {num_examples}.")


def _select_labels(cfg, task_cls, train_info, num_classes):
    """(label subset or None, train_info, labelled count, note for errors).

    A task that streams the labelled subset only (``task_cls.labelled_only``)
    has the subset's size as its epoch; the others see every image but only
    the subset's labels; feature_linear_eval fits on the subset.
    """
    label_subset = subsets.select(cfg.dataset, cfg.train_split, cfg.data_dir,
                                  cfg.label_fraction, cfg.label_subset_file, cfg.seed)
    note = ""
    labelled = train_info.num_examples if num_classes > 0 else 0
    if label_subset is not None:
        logging.info("Labelled subset of %r: %d of %d examples (%s).", cfg.train_split,
                     label_subset.num_selected, label_subset.num_examples,
                     label_subset.description)
        labelled = label_subset.num_labelled
        if task_cls.labelled_only:
            train_info = dataclasses.replace(train_info,
                                             num_examples=label_subset.num_selected)
            note = f" in the labelled subset ({label_subset.description})"
    return label_subset, train_info, int(task_cls.labels_used(cfg.loss, labelled)), note


def _num_classes(cfg, split_classes):
    """The supervised head's classes: ``num_classes`` when set, else the split's."""
    if cfg.num_classes is None:
        return split_classes
    if split_classes and split_classes != cfg.num_classes and cfg.mode != "export":
        raise ConfigError(
            f"'num_classes' is {cfg.num_classes} but the {cfg.train_split!r} split of "
            f"{cfg.dataset!r} has {split_classes} classes: pass the dataset the model "
            "was trained on, or fine-tune from it with --checkpoint in a new model_dir.")
    return cfg.num_classes


def build_schedule(cfg, num_examples):
    """The run's learning-rate schedule for a split of ``num_examples``."""
    return optimizers.WarmUpAndCosine(
        cfg.learning_rate, num_examples, cfg.train_batch_size, cfg.train_epochs,
        cfg.warmup_epochs, cfg.learning_rate_scaling, train_steps=cfg.train_steps or None)


def build(cfg, strategy=None):
    """Builds the :class:`Experiment` of ``cfg`` (nothing is written to model_dir).

    Raises ConfigError for settings that only the data or the devices can
    refute (batch sizes, label subsets, what the task loads).
    """
    if cfg.deterministic:
        keras.utils.set_random_seed(cfg.seed)
        tf.config.experimental.enable_op_determinism()
        logging.info("TF op determinism enabled; seed %d.", cfg.seed)
    strategy = strategy or distribute.get_strategy(cfg.use_tpu, cfg.tpu_name)
    distribute.warn_slow_precision(cfg.precision, strategy)
    is_chief = distribute.is_chief(strategy)
    _check_batches_split(cfg, strategy.num_replicas_in_sync)

    _, train_info = datasets.load(cfg.dataset, cfg.train_split, cfg.data_dir)
    num_classes = _num_classes(cfg, train_info.num_classes)
    task_cls = tasks.TASKS[cfg.train_mode]
    label_subset, train_info, num_labelled, note = _select_labels(cfg, task_cls, train_info,
                                                                  num_classes)
    task, num_classes = task_cls.for_run(cfg, strategy, num_classes)
    if num_classes == 1:
        logging.warning(
            "The %r split of %r has a single class: training works, but the supervised "
            "head's accuracies (in training and in the evaluation) are trivially 1.0.",
            cfg.train_split, cfg.dataset)
    _check_batch_fits(cfg, train_info.num_examples, note)
    steps = optimizers.step_counts(train_info.num_examples, cfg.train_batch_size,
                                   cfg.train_epochs, cfg.train_steps, cfg.warmup_epochs)

    task.check_data(num_classes, f"the {cfg.train_split!r} split of {cfg.dataset!r}")
    loss_scale = None
    with strategy.scope():
        model = task.build_model(cfg.model, num_classes)
        schedule = build_schedule(cfg, train_info.num_examples)
        model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]))
        updates = task.build_optimizers(model, cfg.optim, schedule, steps.total_steps)
        if cfg.precision == "float16":
            loss_scale = DynamicLossScale()
    run_dir = RunDir(cfg.model_dir)
    task_id = None if is_chief else strategy.cluster_resolver.task_id
    return Experiment(
        cfg=cfg, strategy=strategy, is_chief=is_chief, run_dir=run_dir,
        train_info=train_info, num_classes=num_classes, label_subset=label_subset,
        num_labeled_examples=num_labelled, steps=steps, model=model, task=task,
        schedule=schedule, updates=updates,
        checkpointer=Checkpointer(model, updates[0][0], run_dir, cfg.keep_checkpoint_max,
                                  task_id, own_optimizers=task.checkpointed_optimizers(updates),
                                  loss_scale=loss_scale),
        jit_compile=distribute.resolve_jit_compile(cfg.jit_compile, strategy),
        loss_scale=loss_scale)
