"""The layout of a run's ``model_dir``, and the files the runtime writes there.

::

    config.yaml          the resolved config of the run
    checkpoints/         tf.train.CheckpointManager checkpoints (model + optimizer)
    train/, eval/        TensorBoard event files
    train_log.jsonl      one JSON line of training metrics per log_every_steps
    result.json          {"top1", "top5", "global_step", ...} after an eval
    saved_model/         the export (simclr_tf.export), with simclr.keras
    worker_<i>_tmp/      scratch checkpoints of non-chief workers (removed at the end)

Every file that replaces an earlier one is written through
:func:`simclr_tf.files.atomic_write`.
"""

import json
import os
import time

import tensorflow as tf
from absl import logging

from simclr_tf import config as config_lib
from simclr_tf import files
from simclr_tf.errors import RunError
from simclr_tf.export.names import KERAS_FILENAME, SAVED_MODEL_SUBDIR

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
RESULT = "result.json"
TRAIN_EVENTS = "train"
EVAL_EVENTS = "eval"

# Resuming a run in progress with other settings. Every key not listed here
# is fixed for the life of a run: the model, the data and its order (dataset,
# split, seed, batch size, augmentations, label subset), the objective and the
# optimizer with its schedule. These may change on a resume: where the outputs
# go and how often, how the steps run on the hardware, and evaluation.
RESUME_FREE_KEYS = (
    "mode", "model_dir", "data_dir", "eval_split", "eval_batch_size", "cache_dataset",
    "checkpoint", "checkpoint_epochs", "checkpoint_steps", "keep_checkpoint_max",
    "log_every_steps", "nonfinite_policy", "deterministic", "use_tpu", "tpu_name",
    "precision", "jit_compile", "feature_linear_eval", "knn_eval", "knn_every_epochs",
    "feature_eval_every_epochs",
    # The probe never changes the encoder; a run of 0.2 (probe under the
    # pretraining optimizer) resumes with the probe's own optimizer.
    "probe_learning_rate")
# The run's length may grow (in the same unit); the schedule then decays over
# the new length from the step the run resumes at.
RESUME_LENGTH_KEYS = ("train_steps", "train_epochs")
_AUGMENT_KEYS = ("augmentations", "view1_augmentations", "view2_augmentations",
                 "shared_augmentations", "use_blur", "color_jitter_strength",
                 "color_jitter_impl")


class RunDir:
    """One run's ``model_dir``: where each output goes, and the checks before writing.

    Args:
        path: the model_dir (local or ``gs://``).
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    def join(self, *names):
        return os.path.join(self.path, *names)

    @property
    def checkpoints(self):
        return self.join(CHECKPOINTS)

    def worker_scratch(self, task_id):
        """Where a non-chief worker writes its (discarded) checkpoints."""
        return self.join(f"worker_{task_id}_tmp", CHECKPOINTS)

    @property
    def saved_model(self):
        return self.join(SAVED_MODEL_SUBDIR)

    @property
    def keras_file(self):
        return self.join(KERAS_FILENAME)

    # ------------------------------------------------------------ checks
    def check_writable(self):
        """Refuses a local model_dir that cannot be created or written."""
        if files.is_remote(self.path):
            return  # object stores: the first write reports any problem
        path = os.path.abspath(self.path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise RunError(f"model_dir {self.path!r} is a file, not a directory. Pass a "
                           "directory as --model_dir.")
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise RunError(f"Cannot create model_dir {self.path!r}: {parent!r} is a file. "
                           "Pass a directory path as --model_dir.")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"model_dir {self.path!r} is not writable (no write permission "
                           f"on {parent!r}). Pass a writable --model_dir.")

    def has_checkpoint(self):
        """Whether checkpoints/ holds a checkpoint (its index file; the state file may be lost)."""
        return bool(tf.io.gfile.glob(os.path.join(self.checkpoints, "*.index")))

    def check_compatible(self, cfg):
        """Refuses to continue a run in progress with settings it was not started with.

        Applies when ``model_dir`` holds a checkpoint and its ``config.yaml``
        and ``cfg`` trains. Keys of :data:`RESUME_FREE_KEYS` may change; the
        run's length (``train_steps`` / ``train_epochs``) may grow in the same
        unit, with a warning that the cosine schedule now ends later; any other
        change raises :class:`RunError` naming each key, its old and new value,
        and the way out. Reads only: nothing in model_dir is touched.
        """
        saved = self.join(CONFIG)
        if cfg.mode not in ("train", "train_then_eval") or not (
                files.exists(saved) and self.has_checkpoint()):
            return
        old_values = config_lib.load_yaml(saved)
        try:
            old = config_lib.from_dict(old_values)
        except config_lib.ConfigError:  # written by another version: compare raw values
            old = None
        diffs = []
        for key, value in old_values.items():
            if key in RESUME_FREE_KEYS or key in _AUGMENT_KEYS or key not in config_lib.FIELDS:
                continue
            new = getattr(cfg, key)
            if value == new or (key in RESUME_LENGTH_KEYS and self._lengthens(old_values, cfg)):
                continue
            diffs.append(f"{key}: {value!r} -> {new!r}")
        if old is not None and old.augment != cfg.augment:
            diffs.append(f"the views: {_views(old)} -> {_views(cfg)}")
        if diffs:
            raise RunError(
                f"model_dir {self.path!r} holds checkpoints of a run with other settings "
                f"({'; '.join(diffs)}). Resuming would continue that run with a different "
                "meaning. To resume, rerun with its settings "
                f"(--config={saved}); to start over, use a new --model_dir (with "
                f"--checkpoint={self.path} to start from its weights).")
        if any(old_values.get(k, getattr(cfg, k)) != getattr(cfg, k)
               for k in RESUME_LENGTH_KEYS):
            logging.warning(
                "Resuming %s with a longer run (train_steps %s -> %s, train_epochs %s -> "
                "%s): the warm-up + cosine schedule now decays to 0 at the new last step, "
                "so from the resumed step on the learning rate follows the longer schedule.",
                self.path, old_values.get("train_steps"), cfg.train_steps,
                old_values.get("train_epochs"), cfg.train_epochs)

    @staticmethod
    def _lengthens(old_values, cfg):
        """Whether ``cfg`` only makes the run longer, in the unit the old run used."""
        old_steps = old_values.get("train_steps", 0) or 0
        if old_steps > 0:
            return cfg.train_steps >= old_steps
        return cfg.train_steps == 0 and cfg.train_epochs >= old_values.get("train_epochs", 0)

    # ------------------------------------------------------------ writing
    def makedirs(self):
        tf.io.gfile.makedirs(self.path)

    def write_config(self, cfg):
        config_lib.save_yaml(cfg, self.join(CONFIG))

    def write_result(self, result):
        files.atomic_write_json(result, self.join(RESULT))

    def summary_writer(self, name, is_chief=True):
        if not is_chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(self.join(name))

    def train_log(self, resume_step):
        return TrainLog(self.join(TRAIN_LOG), resume_step)


def _views(cfg):
    augment = cfg.augment
    names = {k: ",".join(getattr(augment, k)) or "none" for k in ("shared", "view1", "view2")}
    return (" ".join(f"{k}={v}" for k, v in names.items()) + " "
            f"color_jitter_strength={cfg.resolved_color_jitter_strength} "
            f"color_jitter_impl={cfg.color_jitter_impl}")


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
        self._lines = []
        if not tf.io.gfile.exists(path):
            return
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
        files.atomic_write(self.path, "".join(line + "\n" for line in self._lines))

    def write(self, step, logs):
        line = json.dumps({"step": int(step), **logs, "time": round(time.time(), 3)})
        self._lines.append(line)
        if files.is_remote(self.path):  # object stores cannot append
            self._rewrite()
        else:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
