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

# Keys whose change makes an existing checkpoint meaningless for a run.
MODEL_KEYS = ("train_mode", "resnet_depth", "width_multiplier", "sk_ratio",
              "proj_head_mode", "proj_out_dim", "num_proj_layers", "image_size",
              "dataset", "optimizer", "label_fraction", "label_subset_file",
              "teacher_checkpoint")


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
        return bool(tf.train.latest_checkpoint(self.checkpoints))

    def check_compatible(self, cfg):
        """Refuses to train on checkpoints that an incompatible config wrote. Reads only."""
        saved = self.join(CONFIG)
        if cfg.mode not in ("train", "train_then_eval") or not (
                files.exists(saved) and self.has_checkpoint()):
            return
        old = config_lib.load_yaml(saved)
        diffs = [f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in MODEL_KEYS
                 if k in old and old[k] != getattr(cfg, k)]
        if diffs:
            raise RunError(
                f"model_dir {self.path!r} holds checkpoints of a run with a different "
                f"config ({'; '.join(diffs)}). Use a new --model_dir, or rerun with the "
                "same settings to resume.")

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
