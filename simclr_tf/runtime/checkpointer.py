"""Checkpoints of a run: saving, resuming, and the fallback over damaged ones."""

import os
import re

import tensorflow as tf
from absl import logging

from simclr_tf import errors, files
from simclr_tf.errors import RunError, short_tf_error

# A trainable weight beyond this magnitude has diverged (a healthy SimCLR
# network stays within ~10): such weights are never checkpointed, because the
# next step would turn them non-finite.
MAX_WEIGHT = 1e6
# Checkpoint key of the float16 loss scale. The keys of the optimizers a task
# adds for weights of their own are the task's (Task.own_optimizer_keys).
_LOSS_SCALE = "loss_scale"
# What --checkpoint loads into a new run: the backbone, not the heads.
_PRETRAINED_PARTS = ("encoder", "projection_head")
# Marker of a save in flight: checkpoints/.saving~<host>~<pid>~<random>.
_SAVING = ".saving"


def weights_by_path(model):
    """``{variable.path: variable}`` for every weight of ``model`` (checkpoint keys)."""
    weights = {v.path: v for v in model.weights}
    if len(weights) != len(model.weights):
        raise ValueError("Model weights must have unique paths to be checkpointed.")
    return weights


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


def _has_key(path, prefix):
    """Whether the checkpoint ``path`` holds an object under the top-level key ``prefix``."""
    return any(name.split("/")[0] == prefix for name, _ in tf.train.list_variables(path))


class Checkpointer:
    """Owns ``model_dir/checkpoints/``: what is saved, and what a run starts from.

    A checkpoint holds the model (every weight, BN moving statistics included,
    also under ``weights/<variable path>``), the optimizer (its slots and
    step counter), the optimizers a task adds for weights of their own (under
    the task's keys) and, in float16, the loss scale. :meth:`resume` restores
    the newest *readable* checkpoint, falling back to older ones with a warning
    when the newest is corrupt or truncated; it is the one implementation of
    that fallback, used by training, ``--mode=eval`` and ``--mode=export``.

    Non-chief workers of a multi-worker run must save too (the save is a
    collective), into scratch space that :meth:`remove_worker_scratch`
    deletes; they resume from the chief's checkpoints.

    Args:
        model: the run's model (built).
        optimizer: its optimizer (built), or None.
        run_dir: a :class:`simclr_tf.runtime.run_dir.RunDir`.
        keep_max: checkpoints kept.
        task_id: None on the chief; the worker's task id otherwise.
        own_optimizers: the task's optimizers beyond the run's (built), as
            ``{checkpoint key: optimizer}`` (the task's ``own_optimizer_keys``).
        loss_scale: the float16 :class:`~simclr_tf.loss_scale.DynamicLossScale`, or None.
    """

    def __init__(self, model, optimizer, run_dir, keep_max=5, task_id=None,
                 own_optimizers=None, loss_scale=None):
        self._required = {"model": model, "weights": weights_by_path(model)}
        if optimizer is not None:
            self._required["optimizer"] = optimizer
        # Parts a checkpoint of another setting may lack: an own optimizer (a
        # run whose weights shared the run's optimizer then, e.g. written by
        # another version or setting) and the float16 loss scale (a run
        # resumed with another precision). See _read.
        own_optimizers = own_optimizers or {}
        self._own_keys = tuple(own_optimizers)
        self._optional = dict(own_optimizers)
        if loss_scale is not None:
            self._optional[_LOSS_SCALE] = loss_scale
        self.checkpoint = tf.train.Checkpoint(**self._required, **self._optional)
        self.model = model
        self.optimizer = optimizer
        self.directory = run_dir.checkpoints
        self.run_dir = run_dir
        self.task_id = task_id
        save_dir = self.directory if task_id is None else run_dir.worker_scratch(task_id)
        try:
            self.manager = tf.train.CheckpointManager(self.checkpoint, save_dir,
                                                      max_to_keep=keep_max)
        except (ValueError, tf.errors.OpError) as e:
            state = os.path.join(save_dir, "checkpoint")
            raise RunError(f"The checkpoint state file {state!r} is unreadable ({e}). "
                           "Delete that file to resume from the newest readable "
                           "checkpoint next to it.") from None
        self.restored = None  # prefix of the checkpoint resume() restored
        self._token = files.temp_token()

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy()) if self.optimizer is not None else 0

    @property
    def latest(self):
        return self.manager.latest_checkpoint

    # ------------------------------------------------------------ restoring
    def resume(self, mode="train"):
        """Restores the newest readable checkpoint of ``model_dir/checkpoints``.

        A corrupt, truncated or incomplete checkpoint is skipped with a
        warning (its files stay in place) and the previous one is tried; one
        that does not match the model raises :class:`RunError`, as does a
        directory whose checkpoints are all unreadable.

        Returns:
            A description (``"resumed from PATH at step N"``, plus the
            skipped checkpoints), or None when there is no checkpoint.
        """
        candidates = checkpoint_candidates(self.directory)
        unreadable = []
        for path in candidates:
            try:
                self._read(path)
            except (ValueError, AssertionError) as e:  # another model's checkpoint
                raise RunError(
                    f"The checkpoint {path!r} does not match the model of this config "
                    f"({short_tf_error(e)}). Use the settings of the run that wrote it "
                    f"(--config={self.run_dir.join('config.yaml')} --mode={mode}), or "
                    "a new --model_dir.") from None
            except (tf.errors.OpError, IndexError, OSError) as e:
                logging.warning("Checkpoint %s is unreadable (%s: %s); trying the "
                                "previous one.", path, type(e).__name__, short_tf_error(e))
                unreadable.append(os.path.basename(path))
                continue
            note = f" (skipped unreadable {', '.join(unreadable)})" if unreadable else ""
            self.restored = path
            return f"resumed from {path} at step {self.step}{note}"
        if unreadable:
            raise RunError(
                f"No readable checkpoint in {self.directory!r} (unreadable: "
                f"{', '.join(unreadable)}; see the warnings above). Restore them from a "
                "backup, or move the directory away to train from scratch.")
        return None

    def _read(self, path):
        """Restores ``path``; every object of this run must be in it but the optional parts.

        A checkpoint without an own optimizer (written while its weights
        shared the run's optimizer) restores everything else; that
        optimizer then starts with zero momentum at the checkpoint's step, so
        its schedule continues where the run is. One without the loss scale
        (written in float32 or bfloat16) leaves it at its initial value.
        """
        missing = [key for key in self._optional if not _has_key(path, key)]
        if not missing:
            self.checkpoint.read(path).expect_partial().assert_existing_objects_matched()
            return
        present = {k: v for k, v in self._optional.items() if k not in missing}
        tf.train.Checkpoint(**self._required, **present).read(
            path).expect_partial().assert_existing_objects_matched()
        for key in missing:
            if key in self._own_keys:
                self._optional[key].iterations.assign(self.optimizer.iterations)
        logging.info("%s holds no %s (written with other settings): %s at its initial "
                     "state from step %d.", path, " or ".join(missing),
                     "they start" if len(missing) > 1 else "it starts", self.step)

    def restore_finished(self, what):
        """Restores the newest readable checkpoint, or refuses: there is nothing to ``what``.

        For ``--mode=eval`` and ``--mode=export``, which must never report or
        export a randomly initialised model. Returns the restored prefix.
        """
        if not checkpoint_candidates(self.directory):
            raise RunError(
                f"Nothing to {what}: {self.directory!r} holds no checkpoint. Train first "
                "(--mode=train or train_then_eval) or point --model_dir at a finished run.")
        logging.info("%s", self.resume(mode=what))
        return self.restored

    def restore_for_training(self, pretrained=None):
        """Resumes this run, else loads ``pretrained`` (``--checkpoint``), else nothing.

        Returns a short description of what was restored.
        """
        resumed = self.resume()
        if resumed is not None:
            return resumed
        if pretrained:
            return self.load_pretrained(pretrained)
        return "started from random initialisation"

    def load_pretrained(self, path):
        """Loads encoder and projection-head weights from another run's checkpoint.

        ``path`` is a checkpoint prefix or a directory (a model_dir or its
        ``checkpoints/``); the heads and the optimizer start fresh.
        """
        given = path
        if tf.io.gfile.isdir(path):
            path = (tf.train.latest_checkpoint(path)
                    or tf.train.latest_checkpoint(os.path.join(path, "checkpoints")))
        if not path:
            raise RunError(f"--checkpoint={given!r} holds no checkpoint. Pass a checkpoint "
                           "prefix or a model_dir of a finished pretraining run.")
        backbone = tf.train.Checkpoint(weights={
            key: v for key, v in weights_by_path(self.model).items()
            if key.split("/")[1:2] in [[part] for part in _PRETRAINED_PARTS]})
        try:
            backbone.read(path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise RunError(f"Could not load encoder weights from {path!r}: it does "
                           "not match this model (resnet_depth, width_multiplier, "
                           f"sk_ratio and the projection head must agree). {e}") from None
        return f"loaded pretrained encoder and projection head from {path}"

    # --------------------------------------------------------------- saving
    def save(self, step):
        """Saves at ``step`` after checking that no weight diverged.

        Non-finite weights (BN statistics included) and trainable weights above
        :data:`MAX_WEIGHT` in magnitude stop the run instead.
        """
        trainable = {id(v) for v in self.model.trainable_variables}
        for v in self.model.weights:
            if not bool(tf.reduce_all(tf.math.is_finite(v))):
                what = "became non-finite"
            elif id(v) in trainable and float(tf.reduce_max(tf.abs(v))) > MAX_WEIGHT:
                what = f"diverged (|w| > {MAX_WEIGHT:g})"
            else:
                continue
            raise RunError(
                f"Weights {what} at step {step} (e.g. {v.path}), so no checkpoint was "
                "written. Training stopped; the last good checkpoint "
                f"({self.latest or 'none yet'}) is kept. Lower --learning_rate or check "
                "the input data.")
        # TensorFlow names its temporary files after the checkpoint, not the
        # process: this marker says whose save is in flight (see
        # remove_orphaned_temp).
        marker = os.path.join(self.manager.directory, _SAVING + self._token)
        kept = f"the previous checkpoint ({self.latest or 'none yet'}) is kept"
        with errors.writing(os.path.join(self.manager.directory, f"ckpt-{step}"),
                            "the checkpoint", kept):
            tf.io.gfile.makedirs(self.manager.directory)
            with tf.io.gfile.GFile(marker, "w") as f:
                f.write(str(step))
            try:
                return self.manager.save(checkpoint_number=step)
            finally:
                files.remove(marker)

    def remove_orphaned_temp(self):
        """Removes what a process killed while saving left in ``checkpoints/``.

        That is ``ckpt-N_temp/`` (the shards being written), ``checkpoint.tmp*``
        (the state file being replaced), and data files whose index was never
        written or already deleted, plus the atomic-write temporary files of
        dead processes in ``model_dir``. Nothing is removed while another live
        process is saving into the directory (its marker, written for every
        save, names its host and pid). Returns the paths removed.
        """
        removed = files.remove_dead_temp(self.run_dir.path)
        markers = tf.io.gfile.glob(os.path.join(self.directory, _SAVING + "*"))
        live = [m for m in markers if files.owner_alive(m) is not False]
        if live:
            logging.info("Leaving the temporary files in %s: %s is saving there.",
                         self.directory, os.path.basename(live[0]))
            return removed
        indexed = {p[:-len(".index")] for p in
                   tf.io.gfile.glob(os.path.join(self.directory, "*.index"))}
        for path in (tf.io.gfile.glob(os.path.join(self.directory, "*_temp"))
                     + tf.io.gfile.glob(os.path.join(self.directory, "checkpoint.tmp*"))
                     + [p for p in tf.io.gfile.glob(os.path.join(self.directory, "*.data-*"))
                        if p.rsplit(".data-", 1)[0] not in indexed]
                     + markers):
            logging.info("Removing %s, left by an interrupted save.", path)
            files.remove(path)
            removed.append(path)
        return removed

    def remove_worker_scratch(self):
        if self.task_id is None:
            return
        scratch = os.path.dirname(self.run_dir.worker_scratch(self.task_id))
        if tf.io.gfile.exists(scratch):
            tf.io.gfile.rmtree(scratch)
