"""The training and evaluation driver behind ``python -m simclr_tf.run``.

It runs ``SimCLRModel.train_step`` / ``test_step`` through ``strategy.run``
inside one ``tf.function`` that executes several steps per call, rather than
through ``model.fit``: the same loop then works under the default strategy,
``MirroredStrategy``, ``TPUStrategy`` and ``MultiWorkerMirroredStrategy``
(where Keras 3's ``fit`` has known failures), it resumes at an exact step, and
the host only synchronises at logging and checkpoint boundaries.

Layout of ``model_dir``::

    config.yaml          the resolved config of the run
    checkpoints/         tf.train.CheckpointManager checkpoints (model + optimizer)
    train/, eval/        TensorBoard event files
    train_log.jsonl      one JSON line of training metrics per log_every_steps
    result.json          {"top1", "top5", "global_step", ...} after an eval
    worker_<i>_tmp/      scratch checkpoints of non-chief workers (removed at the end)

Reliability (see docs/distributed.md): checkpoints hold every model weight
(BN statistics included) and the optimizer; a run resumes from the newest
*readable* checkpoint, falling back to older ones with a warning when the
newest is corrupt or truncated; a non-finite loss stops the run before any
checkpoint of the diverged weights is written (``nonfinite_policy="stop"``)
or skips the step (``"skip"``); ``deterministic`` turns on TF op determinism.
"""

import dataclasses
import json
import math
import os
import re
import time

import keras
import tensorflow as tf
from absl import logging

from simclr_tf import config as config_lib
from simclr_tf import distribute as distribute_lib
from simclr_tf import linear_eval
from simclr_tf import optimizers as optimizers_lib
from simclr_tf import teacher as teacher_lib
from simclr_tf.data import datasets, pipeline, subsets
from simclr_tf.models import simclr_model

CHECKPOINT_SUBDIR = "checkpoints"
# Keys whose change makes an existing checkpoint meaningless for a run.
_MODEL_KEYS = ("train_mode", "resnet_depth", "width_multiplier", "sk_ratio",
               "proj_head_mode", "proj_out_dim", "num_proj_layers", "image_size",
               "dataset", "optimizer", "label_fraction", "label_subset_file",
               "teacher_checkpoint")
_LOG_EVERY = 50
TRAIN_LOG = "train_log.jsonl"


class RunError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


def short_tf_error(error):
    """The first line of a TF error message, without the ``{{function_node ...}}`` prefix."""
    text = (str(getattr(error, "message", "") or error).strip().splitlines() or [""])[0]
    return re.sub(r"^\{\{[^}]*\}\}\s*", "", text)[:300]


def enable_determinism(seed):
    """Seeds Python, NumPy, TF and Keras and turns on TF op determinism.

    Process-wide and permanent (TF cannot turn it off again). Same machine,
    same device setup, same software: bit-identical runs. See
    docs/distributed.md for what stays nondeterministic.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    logging.info("TF op determinism enabled; seed %d.", seed)


def checkpoint_candidates(directory):
    """Checkpoint prefixes in ``directory``, newest (highest number) first.

    The union of what the state file lists and the ``*.index`` files present,
    so a truncated or unreadable state file still finds the checkpoints.
    """
    paths = set()
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (ValueError, tf.errors.OpError):
        state = None
    if state is not None:
        paths.update(state.all_model_checkpoint_paths)
        if state.model_checkpoint_path:
            paths.add(state.model_checkpoint_path)
    for index in tf.io.gfile.glob(os.path.join(directory, "*.index")):
        paths.add(index[:-len(".index")])

    def number(path):
        match = re.search(r"-(\d+)$", path)
        return int(match.group(1)) if match else -1

    return sorted(paths, key=lambda p: (number(p), p), reverse=True)


def read_train_log(path):
    """The entries of a ``train_log.jsonl`` (or of ``model_dir/train_log.jsonl``)."""
    if tf.io.gfile.isdir(path):
        path = os.path.join(path, TRAIN_LOG)
    entries = []
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except ValueError:  # a line cut short by a killed process
                continue
    return entries


class TrainLog:
    """``model_dir/train_log.jsonl``: one JSON object per logged chunk of steps.

    Each line holds ``step`` (the global step at the end of the chunk), the
    chunk means of the training metrics (``loss``, ``contrast_acc``, ...,
    ``skipped_steps`` with ``nonfinite_policy=skip``), ``lr`` (the learning
    rate of that step) and ``time`` (Unix seconds). Written by the chief only.
    A run resuming at step s first drops the lines of steps after s (written
    by the interrupted run after its last checkpoint), so the file reads as
    one uninterrupted run.
    """

    def __init__(self, path, resume_step):
        self.path = path
        self._remote = "://" in path
        self._lines = []
        if tf.io.gfile.exists(path):
            kept, dropped = [], 0
            with tf.io.gfile.GFile(path) as f:
                for line in f:
                    try:
                        keep = json.loads(line)["step"] <= resume_step
                    except (ValueError, KeyError, TypeError):
                        keep = False
                    if keep:
                        kept.append(line.rstrip("\n"))
                    else:
                        dropped += 1
            self._lines = kept
            if dropped:
                self._rewrite()

    def _rewrite(self):
        tmp = self.path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write("".join(line + "\n" for line in self._lines))
        tf.io.gfile.rename(tmp, self.path, overwrite=True)

    def write(self, step, logs):
        line = json.dumps({"step": int(step), **logs, "time": round(time.time(), 3)})
        self._lines.append(line)
        if self._remote:  # object stores cannot append
            self._rewrite()
        else:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def _check_writable(model_dir):
    """Refuses a local model_dir that cannot be created or written."""
    if "://" in model_dir:
        return  # object stores: the first write reports any problem
    path = os.path.abspath(model_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"model_dir {model_dir!r} is a file, not a directory. Pass a "
                       "directory as --model_dir.")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise RunError(f"Cannot create model_dir {model_dir!r}: {parent!r} is a file. "
                       "Pass a directory path as --model_dir.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"model_dir {model_dir!r} is not writable (no write permission "
                       f"on {parent!r}). Pass a writable --model_dir.")


def atomic_write_json(obj, path):
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:  # also gs:// paths
        f.write(json.dumps(obj, indent=2))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def check_model_dir(cfg):
    """Refuses a model_dir that holds checkpoints of an incompatible run.

    Also refuses one that cannot be written (a file, a read-only directory).
    Reads only; nothing in model_dir is touched.
    """
    _check_writable(cfg.model_dir)
    saved = os.path.join(cfg.model_dir, "config.yaml")
    if not (tf.io.gfile.exists(saved) and tf.train.latest_checkpoint(
            os.path.join(cfg.model_dir, CHECKPOINT_SUBDIR))):
        return
    old = config_lib.load_yaml(saved)
    diffs = [f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in _MODEL_KEYS
             if k in old and old[k] != getattr(cfg, k)]
    if diffs and cfg.mode in ("train", "train_then_eval"):
        raise RunError(
            f"model_dir {cfg.model_dir!r} holds checkpoints of a run with a different "
            f"config ({'; '.join(diffs)}). Use a new --model_dir, or rerun with the "
            "same settings to resume.")


def resolve_jit_compile(setting, strategy):
    """Whether to XLA-compile the per-replica training step.

    ``"true"``/``"false"`` force it. ``"auto"`` turns it on for one GPU
    replica only: on CPU XLA measured slower than the oneDNN kernels (see
    BENCHMARKS.md), Keras 3 itself leaves it off under multi-replica
    strategies, and a TPU compiles the whole step with XLA anyway.
    """
    if setting in ("true", "false"):
        return setting == "true"
    if isinstance(strategy, (tf.distribute.TPUStrategy,
                             tf.distribute.experimental.TPUStrategy)):
        return False
    return bool(tf.config.list_logical_devices("GPU")) and (
        strategy.num_replicas_in_sync == 1)


def warn_slow_bfloat16(precision, strategy):
    """Warns when bfloat16 runs on a CPU without bfloat16 arithmetic (it is slower)."""
    if precision != "bfloat16" or _is_tpu(strategy) or tf.config.list_logical_devices("GPU"):
        return
    from simclr_tf import _tf_env
    if not _tf_env.cpu_has_native_bf16():
        logging.warning(
            "--precision=bfloat16 on a CPU without AVX512-BF16 or AMX-BF16: the step "
            "is several times slower than float32 here (see BENCHMARKS.md). Use "
            "--precision=float32 on this machine.")


def make_train_steps(model, strategy, jit_compile=False, nonfinite_step=None):
    """The ``tf.function(iterator, num_steps)`` that runs ``num_steps`` steps.

    One call runs the steps in a ``tf.range`` loop without host syncs; with
    ``jit_compile`` each replica's ``model.train_step`` is XLA-compiled.

    ``nonfinite_step``: optional int64 ``tf.Variable`` holding 0; after the
    first step whose loss is non-finite on a replica of this worker it holds
    that step's number, so the trainer can name it (no cross-worker
    communication: on several workers it may name a later step).
    """
    step_fn = model.train_step
    if jit_compile:
        step_fn = tf.function(step_fn, jit_compile=True, reduce_retracing=True)

    @tf.function
    def train_steps(iterator, num_steps):
        for _ in tf.range(num_steps):
            logs = strategy.run(step_fn, args=(next(iterator),))
            if nonfinite_step is not None:
                # The running mean of the chunk's loss turns non-finite at the
                # first bad step and stays so.
                finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(x)) for x in
                                        strategy.experimental_local_results(logs["loss"])])
                step = tf.cast(tf.convert_to_tensor(model.optimizer.iterations), tf.int64)
                nonfinite_step.assign(tf.where(
                    tf.logical_or(finite, nonfinite_step > 0), nonfinite_step, step))

    return train_steps


def _is_tpu(strategy):
    return isinstance(strategy, (tf.distribute.TPUStrategy,
                                 tf.distribute.experimental.TPUStrategy))


def weights_by_path(model):
    """``{variable.path: variable}`` for every weight of ``model`` (checkpoint keys)."""
    weights = {v.path: v for v in model.weights}
    if len(weights) != len(model.weights):
        raise ValueError("Model weights must have unique paths to be checkpointed.")
    return weights


class Session:
    """Model, optimizer, checkpoints and datasets of one run."""

    def __init__(self, cfg, strategy=None):
        self.cfg = cfg
        if cfg.deterministic:
            enable_determinism(cfg.seed)
        self.strategy = strategy or distribute_lib.get_strategy(cfg.use_tpu,
                                                                cfg.tpu_name)
        self.num_replicas = self.strategy.num_replicas_in_sync
        for key in ("train_batch_size", "eval_batch_size"):
            value = getattr(cfg, key)
            if value % self.num_replicas:
                raise config_lib.ConfigError(
                    f"Invalid value {value} for '{key}': it must be divisible by the "
                    f"number of replicas ({self.num_replicas}).")
        self.is_chief = distribute_lib.is_chief(self.strategy)
        self.jit_compile = resolve_jit_compile(cfg.jit_compile, self.strategy)
        warn_slow_bfloat16(cfg.precision, self.strategy)
        _, self.train_info = datasets.load(cfg.dataset, cfg.train_split, cfg.data_dir)
        self.num_classes = self.train_info.num_classes
        self._select_labels()
        self.teacher = None
        if cfg.train_mode == "distill":
            self._load_teacher()
        if self.num_classes == 1:
            logging.warning(
                "The %r split of %r has a single class: pretraining works, but the "
                "linear probe and the eval accuracy are trivially 1.0.",
                cfg.train_split, cfg.dataset)
        if cfg.mode in ("train", "train_then_eval") and (
                cfg.train_batch_size > self.train_info.num_examples):
            raise config_lib.ConfigError(
                f"Invalid value {cfg.train_batch_size} for 'train_batch_size': the "
                f"{cfg.train_split!r} split of {cfg.dataset!r} has only "
                f"{self.train_info.num_examples} examples{self._subset_note}. Use a "
                f"batch size <= {self.train_info.num_examples}.")
        self.steps_per_epoch = pipeline.steps_per_epoch(
            self.train_info.num_examples, cfg.train_batch_size)
        self.total_steps = optimizers_lib.total_steps(
            self.train_info.num_examples, cfg.train_batch_size, cfg.train_epochs,
            cfg.train_steps)
        with self.strategy.scope():
            self.model = simclr_model.build_model(cfg, self.num_classes)
            if self.teacher is not None:
                self.model.set_teacher(self.teacher)
            self.schedule = optimizers_lib.WarmUpAndCosine(
                cfg.learning_rate, self.train_info.num_examples, cfg.train_batch_size,
                cfg.train_epochs, cfg.warmup_epochs, cfg.learning_rate_scaling,
                train_steps=cfg.train_steps or None)
            self.optimizer = optimizers_lib.build_optimizer(
                cfg.optimizer, self.schedule, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay)
            self.model.compile(optimizer=self.optimizer)
            self.model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]))
            self.optimizer.build(self.model.trainable_variables)
        # weights: Keras 3 layers held in Python lists (block groups, projection
        # layers) are not checkpoint dependencies of their parent, so without it
        # BN moving statistics were not saved at all.
        self.checkpoint = tf.train.Checkpoint(model=self.model,
                                              optimizer=self.optimizer,
                                              weights=weights_by_path(self.model))
        try:
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, self._checkpoint_dir(),
                max_to_keep=cfg.keep_checkpoint_max)
        except (ValueError, tf.errors.OpError) as e:
            state = os.path.join(self._checkpoint_dir(), "checkpoint")
            raise RunError(f"The checkpoint state file {state!r} is unreadable ({e}). "
                           "Delete that file to resume from the newest readable "
                           "checkpoint next to it.") from None

    def _select_labels(self):
        """The labelled subset (label_fraction / label_subset_file) of train_split.

        finetune trains on the subset only (its size sets the epoch length);
        pretrain (probe) and distill (label loss) see every image but only the
        subset's labels; feature_linear_eval fits on the subset.
        """
        cfg = self.cfg
        try:
            self.label_subset = subsets.select(
                cfg.dataset, cfg.train_split, cfg.data_dir, cfg.label_fraction,
                cfg.label_subset_file, cfg.seed)
        except subsets.SubsetError as e:
            raise config_lib.ConfigError(str(e)) from None
        self._subset_note = ""
        labelled = self.train_info.num_examples if self.num_classes > 0 else 0
        if self.label_subset is not None:
            logging.info("Labelled subset of %r: %d of %d examples (%s).",
                         cfg.train_split, self.label_subset.num_selected,
                         self.label_subset.num_examples, self.label_subset.description)
            labelled = self.label_subset.num_labelled
            if cfg.train_mode == "finetune":
                self.train_info = dataclasses.replace(
                    self.train_info, num_examples=self.label_subset.num_selected)
                self._subset_note = f" in the labelled subset ({self.label_subset.description})"
        if cfg.train_mode == "distill" and cfg.distill_label_weight == 0:
            labelled = 0
        self.num_labeled_examples = int(labelled)

    def _load_teacher(self):
        """Loads teacher_checkpoint (in the strategy's scope) and checks its classes."""
        cfg = self.cfg
        try:
            with self.strategy.scope():
                self.teacher = teacher_lib.Teacher(cfg.teacher_checkpoint, cfg.image_size)
        except (OSError, tf.errors.OpError) as e:
            raise config_lib.ConfigError(
                f"Cannot load 'teacher_checkpoint' {cfg.teacher_checkpoint!r}: "
                f"{short_tf_error(e)}") from None
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from None
        if self.num_classes and self.num_classes != self.teacher.num_classes:
            raise config_lib.ConfigError(
                f"The teacher {cfg.teacher_checkpoint!r} predicts "
                f"{self.teacher.num_classes} classes but {cfg.dataset!r} has "
                f"{self.num_classes}: distill on the teacher's dataset.")
        self.num_classes = self.teacher.num_classes

    def _checkpoint_dir(self):
        directory = os.path.join(self.cfg.model_dir, CHECKPOINT_SUBDIR)
        if self.is_chief:
            return directory
        # Non-chief workers must write too (collective ops), but to scratch space.
        task = self.strategy.cluster_resolver.task_id
        return os.path.join(self.cfg.model_dir, f"worker_{task}_tmp", CHECKPOINT_SUBDIR)

    restored_checkpoint = None  # prefix of the checkpoint resume() restored

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    # ----------------------------------------------------------- checkpoints
    def restore(self):
        """Resumes from model_dir, or loads --checkpoint weights for finetune.

        Returns a short description of what was restored.
        """
        resumed = self.resume()
        if resumed is not None:
            return resumed
        if self.cfg.checkpoint:
            path = self.cfg.checkpoint
            if os.path.isdir(path):
                path = (tf.train.latest_checkpoint(path) or tf.train.latest_checkpoint(
                    os.path.join(path, CHECKPOINT_SUBDIR)))
            if not path:
                raise RunError(f"--checkpoint={self.cfg.checkpoint!r} holds no "
                               "checkpoint. Pass a checkpoint prefix or a model_dir "
                               "of a finished pretraining run.")
            backbone = tf.train.Checkpoint(weights={
                path: v for path, v in weights_by_path(self.model).items()
                if path.split("/")[1:2] in (["encoder"], ["projection_head"])})
            try:
                backbone.read(path).expect_partial().assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise RunError(f"Could not load encoder weights from {path!r}: it does "
                               "not match this model (resnet_depth, width_multiplier, "
                               f"sk_ratio and the projection head must agree). {e}") from None
            return f"loaded pretrained encoder and projection head from {path}"
        return "started from random initialisation"

    def resume(self):
        """Restores the newest readable checkpoint of ``model_dir/checkpoints``.

        The one implementation of checkpoint fallback, used by training,
        ``--mode=eval`` and ``--mode=export``: a corrupt, truncated or
        incomplete checkpoint is skipped with a warning (its files stay in
        place) and the previous one is tried; one that does not match the
        model raises :class:`RunError`, as does a directory whose checkpoints
        are all unreadable.

        Returns:
            A description (``"resumed from PATH at step N"``, plus the
            skipped checkpoints), or None when there is no checkpoint. The
            restored prefix is in ``self.restored_checkpoint``.
        """
        directory = os.path.join(self.cfg.model_dir, CHECKPOINT_SUBDIR)
        candidates = checkpoint_candidates(directory)
        if not candidates:
            return None
        unreadable = []
        for path in candidates:
            try:
                status = self.checkpoint.read(path)
                status.assert_existing_objects_matched()
            except (ValueError, AssertionError) as e:  # another model's checkpoint
                raise RunError(
                    f"The checkpoint {path!r} does not match the model of this config "
                    f"({short_tf_error(e)}). Use the settings of the run that wrote it "
                    f"(--config={os.path.join(self.cfg.model_dir, 'config.yaml')} "
                    f"--mode={self.cfg.mode}), or a new --model_dir.") from None
            except (tf.errors.OpError, IndexError, OSError) as e:
                logging.warning("Checkpoint %s is unreadable (%s: %s); trying the "
                                "previous one.", path, type(e).__name__, short_tf_error(e))
                unreadable.append(os.path.basename(path))
                continue
            note = (f" (skipped unreadable {', '.join(unreadable)})" if unreadable
                    else "")
            self.restored_checkpoint = path
            return f"resumed from {path} at step {self.step}{note}"
        raise RunError(
            f"No readable checkpoint in {directory!r} (unreadable: "
            f"{', '.join(unreadable)}; see the warnings above). Restore them from a "
            "backup, or move the directory away to train from scratch.")

    def save(self):
        return self.manager.save(checkpoint_number=self.step)

    def _check_weights_finite(self, step):
        bad = [v.path for v in self.model.weights
               if not bool(tf.reduce_all(tf.math.is_finite(v)))]
        if bad:
            raise RunError(
                f"Weights became non-finite at step {step} (e.g. {bad[0]}), so no "
                "checkpoint was written. Training stopped; the last good checkpoint "
                f"({self.manager.latest_checkpoint or 'none yet'}) is kept. Lower "
                "--learning_rate or check the input data.")

    @property
    def multi_worker(self):
        return distribute_lib.num_workers(self.strategy) > 1

    def _sum_over_replicas(self, values):
        """``values`` (floats) summed over all replicas: a collective on every worker."""
        strategy = self.strategy

        def replica_fn():
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.constant(values, tf.float64))

        per_replica = tf.function(lambda: strategy.run(replica_fn))()
        return strategy.experimental_local_results(per_replica)[0].numpy()

    def sync_workers(self):
        """Returns when every worker has called it (no-op on one worker)."""
        if self.multi_worker:
            self._sum_over_replicas([1.0])

    def _check_workers_agree(self, step):
        """Stops when workers restored different steps (an unshared model_dir)."""
        if not self.multi_worker:
            return
        total, total_sq, n = self._sum_over_replicas([step, step * step, 1.0])
        if total * total != total_sq * n:  # exact for integer steps < 2**26
            raise RunError(
                f"The workers restored different steps (this worker: {step}, mean "
                f"{total / n:g}). All workers must read the chief's checkpoints: put "
                "model_dir on storage every machine sees (GCS, NFS) and pass the same "
                "--model_dir to all of them.")

    def _remove_worker_scratch(self):
        if self.is_chief:
            return
        scratch = os.path.dirname(self._checkpoint_dir())
        if tf.io.gfile.exists(scratch):
            tf.io.gfile.rmtree(scratch)

    def _remove_orphaned_temp_checkpoints(self):
        """Removes ``ckpt-N_temp/`` left by a process killed while saving."""
        for path in tf.io.gfile.glob(os.path.join(self._checkpoint_dir(), "*_temp")):
            if tf.io.gfile.isdir(path):
                logging.info("Removing %s, left by an interrupted save.", path)
                tf.io.gfile.rmtree(path)

    # ------------------------------------------------------------- datasets
    def _distributed(self, make, global_batch, skip_steps=0):
        """Distributes ``make(batch, num_shards, shard_index, skip_batches)``.

        On one worker the dataset yields global batches that the strategy
        splits over the replicas, so every replica count sees the same data.
        On several workers each builds its own shard with per-replica batches
        (with several replicas per worker, epoch ends may then fall inside a
        step; resuming stays deterministic).
        """
        if distribute_lib.num_workers(self.strategy) == 1:
            ds, _ = make(global_batch, 1, 0, skip_steps)
            return self.strategy.experimental_distribute_dataset(ds)

        def dataset_fn(ctx):
            local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            ds, _ = make(ctx.get_per_replica_batch_size(global_batch),
                         ctx.num_input_pipelines, ctx.input_pipeline_id,
                         skip_steps * local_replicas)
            return ds
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def train_dataset(self, start_step):
        cfg = self.cfg
        epoch, skip = divmod(start_step, self.steps_per_epoch)

        def make(batch, num_shards, shard_index, skip_batches):
            common = dict(data_dir=cfg.data_dir, seed=cfg.seed, start_epoch=epoch,
                          skip_batches=skip_batches, cache=cfg.cache_dataset,
                          num_shards=num_shards, shard_index=shard_index)
            if cfg.train_mode == "pretrain":
                return pipeline.build_train_dataset(
                    cfg.dataset, cfg.train_split, batch, cfg.image_size,
                    color_jitter_strength=cfg.resolved_color_jitter_strength,
                    use_blur=cfg.resolved_use_blur,
                    color_jitter_impl=cfg.color_jitter_impl,
                    view1_augmentations=cfg.view_augmentations[0],
                    view2_augmentations=cfg.view_augmentations[1],
                    label_subset=self.label_subset, **common)
            # finetune: the labelled subset only; distill: every image (one
            # crop+flip view, as fine-tuning), labels only inside the subset.
            return pipeline.build_finetune_dataset(
                cfg.dataset, cfg.train_split, batch, cfg.image_size,
                label_subset=self.label_subset,
                keep_unlabeled=cfg.train_mode == "distill", **common)

        return self._distributed(make, cfg.train_batch_size, skip_steps=skip)

    def eval_dataset(self):
        cfg = self.cfg

        def make(batch, num_shards, shard_index, _):
            return pipeline.build_eval_dataset(
                cfg.dataset, cfg.eval_split, batch, cfg.image_size,
                data_dir=cfg.data_dir, cache=cfg.cache_dataset,
                num_shards=num_shards, shard_index=shard_index)

        return self._distributed(make, cfg.eval_batch_size)

    # -------------------------------------------------------------- training
    def train(self):
        cfg = self.cfg
        logging.info("%s", self.restore())
        start = self.step
        self._check_workers_agree(start)
        if self.is_chief:
            self._remove_orphaned_temp_checkpoints()
        if start >= self.total_steps:
            logging.info("Training already finished (step %d of %d).", start,
                         self.total_steps)
            self._remove_worker_scratch()
            return
        iterator = iter(self.train_dataset(start))
        model = self.model
        nonfinite_step = None
        if cfg.nonfinite_policy == "stop" and not _is_tpu(self.strategy):
            nonfinite_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        train_steps = make_train_steps(model, self.strategy, self.jit_compile,
                                       nonfinite_step=nonfinite_step)

        save_every = cfg.checkpoint_steps or cfg.checkpoint_epochs * self.steps_per_epoch
        writer = tf.summary.create_file_writer(os.path.join(cfg.model_dir, "train")) \
            if self.is_chief else tf.summary.create_noop_writer()
        names = [m.name for m in model.metrics if m.name not in ("top1", "top5")]
        progbar = keras.utils.Progbar(self.total_steps, stateful_metrics=names + ["lr"],
                                      verbose=1 if self.is_chief else 0)
        train_log = (TrainLog(os.path.join(cfg.model_dir, TRAIN_LOG), start)
                     if self.is_chief else None)
        log_every = cfg.log_every_steps or _LOG_EVERY
        progbar.update(start)
        step = start
        skipped_total = 0
        while step < self.total_steps:
            chunk = min(log_every - step % log_every, save_every - step % save_every,
                        self.total_steps - step)
            for m in model.metrics:
                m.reset_state()
            first = step + 1
            train_steps(iterator, tf.constant(chunk))
            step = self.step
            logs = {m.name: float(m.result()) for m in model.metrics
                    if m.name in names}
            logs["lr"] = float(self.schedule(step - 1))
            if not math.isfinite(logs["loss"]):
                bad = int(nonfinite_step.numpy()) if nonfinite_step is not None else 0
                where = f"at step {bad}" if bad else f"in steps {first}-{step}"
                raise RunError(
                    f"Loss became {logs['loss']} {where}. Training stopped; the last "
                    f"good checkpoint ({self.manager.latest_checkpoint or 'none yet'}) "
                    "is kept. Lower --learning_rate, check the input data, or pass "
                    "--nonfinite_policy=skip to skip such steps.")
            if "skipped_steps" in logs:
                logs["skipped_steps"] = skipped = int(round(logs["skipped_steps"]))
                skipped_total += skipped
                if skipped:
                    logging.warning(
                        "Skipped %d of steps %d-%d: non-finite loss or gradients "
                        "(%d skipped in this run).", skipped, first, step, skipped_total)
            with writer.as_default(step=step):
                for name, value in logs.items():
                    tf.summary.scalar(name, value)
            if train_log is not None:
                train_log.write(step, logs)
            progbar.update(step, list(logs.items()))
            if step % save_every == 0 or step == self.total_steps:
                self._check_weights_finite(step)
                self.save()
        writer.flush()
        self._remove_worker_scratch()

    def evaluate(self):
        """Top-1/top-5 of the supervised head on eval_split; writes result.json."""
        cfg = self.cfg
        if self.model.supervised_head is None:
            raise RunError(
                f"Cannot evaluate: the training split {cfg.train_split!r} of "
                f"{cfg.dataset!r} has no labels, so there is no supervised head. "
                "Fine-tune on a labelled split (--train_mode=finetune) first.")
        model, strategy = self.model, self.strategy

        @tf.function
        def eval_step(batch):
            strategy.run(model.test_step, args=(batch,))

        for m in model.metrics:
            m.reset_state()
        for batch in self.eval_dataset():
            eval_step(batch)
        if float(tf.convert_to_tensor(model._top1.count)) == 0:  # summed over replicas
            raise RunError(
                f"Cannot evaluate: the eval split {cfg.eval_split!r} of {cfg.dataset!r} "
                "has no labelled examples (labels are -1). Pass a labelled "
                "--eval_split.")
        result = {"top1": float(model._top1.result()),
                  "top5": float(model._top5.result()),
                  "global_step": self.step,
                  "eval_split": cfg.eval_split,
                  "train_mode": cfg.train_mode,
                  "num_labeled_examples": self.num_labeled_examples}
        if (self.is_chief and cfg.train_mode == "pretrain"
                and cfg.feature_linear_eval):
            result["feature_linear_eval"] = linear_eval.evaluate(
                self.model.encoder, cfg, self.num_classes,
                train_indices=(self.label_subset.indices
                               if self.label_subset is not None else None))
        if self.is_chief:
            with tf.summary.create_file_writer(
                    os.path.join(cfg.model_dir, "eval")).as_default(step=self.step):
                tf.summary.scalar("top1", result["top1"])
                tf.summary.scalar("top5", result["top5"])
                for key, value in result.get("feature_linear_eval", {}).items():
                    if key.startswith("top"):
                        tf.summary.scalar(f"feature_linear_eval/{key}", value)
            atomic_write_json(result, os.path.join(cfg.model_dir, "result.json"))
        return result

