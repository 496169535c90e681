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
    result.json          {"top1", "top5", "global_step", ...} after an eval
"""

import json
import math
import os

import keras
import tensorflow as tf
from absl import logging

from simclr_tf import config as config_lib
from simclr_tf import distribute as distribute_lib
from simclr_tf import optimizers as optimizers_lib
from simclr_tf.data import datasets, pipeline
from simclr_tf.models import simclr_model

CHECKPOINT_SUBDIR = "checkpoints"
# Keys whose change makes an existing checkpoint meaningless for a run.
_MODEL_KEYS = ("train_mode", "resnet_depth", "width_multiplier", "sk_ratio",
               "proj_head_mode", "proj_out_dim", "num_proj_layers", "image_size",
               "dataset", "optimizer")
_LOG_EVERY = 50


class RunError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


def atomic_write_json(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def check_model_dir(cfg):
    """Refuses a model_dir that holds checkpoints of an incompatible run."""
    saved = os.path.join(cfg.model_dir, "config.yaml")
    if not (os.path.isfile(saved) and tf.train.latest_checkpoint(
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


class Session:
    """Model, optimizer, checkpoints and datasets of one run."""

    def __init__(self, cfg, strategy=None):
        self.cfg = cfg
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
        _, self.train_info = datasets.load(cfg.dataset, cfg.train_split, cfg.data_dir)
        self.num_classes = self.train_info.num_classes
        if cfg.mode in ("train", "train_then_eval") and (
                cfg.train_batch_size > self.train_info.num_examples):
            raise config_lib.ConfigError(
                f"Invalid value {cfg.train_batch_size} for 'train_batch_size': the "
                f"{cfg.train_split!r} split of {cfg.dataset!r} has only "
                f"{self.train_info.num_examples} examples. Use a batch size <= "
                f"{self.train_info.num_examples}.")
        self.steps_per_epoch = pipeline.steps_per_epoch(
            self.train_info.num_examples, cfg.train_batch_size)
        self.total_steps = optimizers_lib.total_steps(
            self.train_info.num_examples, cfg.train_batch_size, cfg.train_epochs,
            cfg.train_steps)
        with self.strategy.scope():
            self.model = simclr_model.build_model(cfg, self.num_classes)
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
        self.checkpoint = tf.train.Checkpoint(model=self.model,
                                              optimizer=self.optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._checkpoint_dir(), max_to_keep=cfg.keep_checkpoint_max)

    def _checkpoint_dir(self):
        directory = os.path.join(self.cfg.model_dir, CHECKPOINT_SUBDIR)
        if self.is_chief:
            return directory
        # Non-chief workers must write too (collective ops), but to scratch space.
        task = self.strategy.cluster_resolver.task_id
        return os.path.join(self.cfg.model_dir, f"worker_{task}_tmp", CHECKPOINT_SUBDIR)

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    # ----------------------------------------------------------- checkpoints
    def restore(self):
        """Resumes from model_dir, or loads --checkpoint weights for finetune.

        Returns a short description of what was restored.
        """
        latest = tf.train.latest_checkpoint(
            os.path.join(self.cfg.model_dir, CHECKPOINT_SUBDIR))
        if latest:
            self.checkpoint.read(latest).assert_existing_objects_matched()
            return f"resumed from {latest} at step {self.step}"
        if self.cfg.checkpoint:
            path = self.cfg.checkpoint
            if os.path.isdir(path):
                path = (tf.train.latest_checkpoint(path) or tf.train.latest_checkpoint(
                    os.path.join(path, CHECKPOINT_SUBDIR)))
            if not path:
                raise RunError(f"--checkpoint={self.cfg.checkpoint!r} holds no "
                               "checkpoint. Pass a checkpoint prefix or a model_dir "
                               "of a finished pretraining run.")
            backbone = tf.train.Checkpoint(model=tf.train.Checkpoint(
                encoder=self.model.encoder,
                projection_head=self.model.projection_head))
            try:
                backbone.read(path).expect_partial().assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise RunError(f"Could not load encoder weights from {path!r}: it does "
                               "not match this model (resnet_depth, width_multiplier, "
                               f"sk_ratio and the projection head must agree). {e}") from None
            return f"loaded pretrained encoder and projection head from {path}"
        return "started from random initialisation"

    def save(self):
        return self.manager.save(checkpoint_number=self.step)

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
                    color_jitter_impl=cfg.color_jitter_impl, **common)
            return pipeline.build_finetune_dataset(
                cfg.dataset, cfg.train_split, batch, cfg.image_size, **common)

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
        if start >= self.total_steps:
            logging.info("Training already finished (step %d of %d).", start,
                         self.total_steps)
            return
        iterator = iter(self.train_dataset(start))
        model, strategy = self.model, self.strategy

        @tf.function
        def train_steps(iterator, num_steps):
            for _ in tf.range(num_steps):
                strategy.run(model.train_step, args=(next(iterator),))

        save_every = cfg.checkpoint_steps or cfg.checkpoint_epochs * self.steps_per_epoch
        writer = tf.summary.create_file_writer(os.path.join(cfg.model_dir, "train")) \
            if self.is_chief else tf.summary.create_noop_writer()
        names = [m.name for m in model.metrics if m.name not in ("top1", "top5")]
        progbar = keras.utils.Progbar(self.total_steps, stateful_metrics=names + ["lr"],
                                      verbose=1 if self.is_chief else 0)
        progbar.update(start)
        step = start
        while step < self.total_steps:
            chunk = min(_LOG_EVERY - step % _LOG_EVERY, save_every - step % save_every,
                        self.total_steps - step)
            for m in model.metrics:
                m.reset_state()
            train_steps(iterator, tf.constant(chunk))
            step = self.step
            logs = {m.name: float(m.result()) for m in model.metrics
                    if m.name in names}
            logs["lr"] = float(self.schedule(step - 1))
            if not math.isfinite(logs["loss"]):
                raise RunError(
                    f"Loss became {logs['loss']} at step {step}. Training stopped; the "
                    "last good checkpoint is kept. Lower --learning_rate or check the "
                    "input data.")
            with writer.as_default(step=step):
                for name, value in logs.items():
                    tf.summary.scalar(name, value)
            progbar.update(step, list(logs.items()))
            if step % save_every == 0 or step == self.total_steps:
                self.save()
        writer.flush()

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
        result = {"top1": float(model._top1.result()),
                  "top5": float(model._top5.result()),
                  "global_step": self.step,
                  "eval_split": cfg.eval_split,
                  "train_mode": cfg.train_mode}
        if self.is_chief:
            with tf.summary.create_file_writer(
                    os.path.join(cfg.model_dir, "eval")).as_default(step=self.step):
                tf.summary.scalar("top1", result["top1"])
                tf.summary.scalar("top5", result["top5"])
            atomic_write_json(result, os.path.join(cfg.model_dir, "result.json"))
        return result

