"""The layout of a run's ``model_dir``, and the files the runtime writes there.

::

    config.yaml          the resolved config of the run
    checkpoints/         tf.train.CheckpointManager checkpoints (model + optimizer)
    train/, eval/        TensorBoard event files
    train_log.jsonl      one JSON line of training metrics per log_every_steps
    result.json          {"top1", "top5", "global_step", ...} after an eval
    saved_model/         the export (simclr_tf.export), with simclr.keras
    worker_<i>_tmp/      scratch checkpoints of non-chief workers (removed at the end)
    data.json            the training data's identity (dataset, split, size, fingerprint)
    .simclr_tf.lock      held by the run using the directory (host, pid, start time)

Every file that replaces an earlier one is written through
:func:`simclr_tf.files.atomic_write`.

A model_dir is the user's work. Before ``python -m simclr_tf.run`` writes
anything it checks, through this module, that the directory is new, empty or
a simclr_tf run (:meth:`RunDir.check_is_run_or_empty`), that no other run uses
it (:meth:`RunDir.lock`) and that a resumed run continues on the data and
settings it started with (:meth:`RunDir.check_compatible`,
:meth:`RunDir.check_data`).
"""

import datetime
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
import uuid

import tensorflow as tf
import yaml
from absl import logging

from simclr_tf import config as config_lib
from simclr_tf import files
from simclr_tf import errors
from simclr_tf import tasks
from simclr_tf.data.image_folder import IMAGE_EXTENSIONS
from simclr_tf.data.source import split_names
from simclr_tf.errors import RunError
from simclr_tf.export.names import KERAS_FILENAME, SAVED_MODEL_SUBDIR

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
RESULT = "result.json"
TRAIN_EVENTS = "train"
EVAL_EVENTS = "eval"
DATA = "data.json"
LOCK = ".simclr_tf.lock"
# How often a lock's holder refreshes the lock file's modification time, and
# after how long without a refresh a lock taken on another host counts as
# left behind by a run that is gone (the host's pids cannot be checked from
# here). Generous against clock skew between hosts.
LOCK_HEARTBEAT_SECONDS = 60
LOCK_STALE_SECONDS = 600
# Files an operating system or notebook leaves in a folder the user just made:
# they do not make a directory "hold files".
_IGNORED_ENTRIES = (".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints")
# A non-chief worker's scratch folder (worker_scratch): ours, but no run by itself.
_WORKER_SCRATCH = re.compile(r"worker_\d+_tmp")

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
    "feature_eval_every_epochs") + tasks.RESUME_FREE_KEYS  # and each objective's own
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

    def check_compatible(self, cfg, warn=True):
        """Refuses to continue, evaluate or export a run with settings it was not trained with.

        Applies when ``model_dir`` holds its ``config.yaml`` and, for training,
        a checkpoint. Keys of :data:`RESUME_FREE_KEYS` (where and how to
        evaluate, where outputs go, how steps run) may change. A resumed
        run's length (``train_steps`` / ``train_epochs``) may grow in the same
        unit, with a warning that the cosine schedule now ends later. Any
        other change raises :class:`RunError` naming each key, its old and new
        value, and the way out: an eval or export with another image size,
        model or data would report or export something the run never was.
        Reads only: nothing in model_dir is touched. ``warn=False`` leaves
        the longer-run warning to a later call (run.py checks twice).
        """
        saved = self.join(CONFIG)
        trains = cfg.mode in ("train", "train_then_eval")
        if not files.exists(saved) or (trains and not self.has_checkpoint()):
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
            if value == new or (trains and key in RESUME_LENGTH_KEYS
                                and self._lengthens(old_values, cfg)):
                continue
            diffs.append(f"{key}: {value!r} -> {new!r}")
        if old is not None and old.augment != cfg.augment:
            diffs.append(f"the views: {_views(old)} -> {_views(cfg)}")
        if diffs and not trains:
            raise RunError(
                f"model_dir {self.path!r} holds a run trained with other settings "
                f"({'; '.join(diffs)}); --mode={cfg.mode} reads the run as it was trained. "
                f"Rerun with its settings (--config={saved}); of the flags, only where and "
                "how to evaluate (eval_split, data_dir, eval_batch_size, feature_linear_eval, "
                "knn_eval, ...) may differ.")
        if diffs:
            raise RunError(
                f"model_dir {self.path!r} holds checkpoints of a run with other settings "
                f"({'; '.join(diffs)}). Resuming would continue that run with a different "
                "meaning. To resume, rerun with its settings "
                f"(--config={saved}); to start over, use a new --model_dir (with "
                f"--checkpoint={self.path} to start from its weights).")
        longer = [f"{k} {old_values[k]} -> {getattr(cfg, k)}" for k in RESUME_LENGTH_KEYS
                  if k in old_values and old_values[k] != getattr(cfg, k)]
        if trains and longer and warn:
            logging.warning(
                "Resuming %s with a longer run (%s): the warm-up + cosine schedule now "
                "decays to 0 at the new last step, so from the resumed step on the "
                "learning rate follows the longer schedule.", self.path, ", ".join(longer))

    @staticmethod
    def _lengthens(old_values, cfg):
        """Whether ``cfg`` only makes the run longer, in the unit the old run used."""
        old_steps = old_values.get("train_steps", 0) or 0
        if old_steps > 0:
            return cfg.train_steps >= old_steps
        return cfg.train_steps == 0 and cfg.train_epochs >= old_values.get("train_epochs", 0)

    def _entries(self):
        """Names in the model_dir (none when it does not exist or is a file)."""
        if not tf.io.gfile.isdir(self.path):
            return []
        return sorted(e.rstrip("/") for e in tf.io.gfile.listdir(self.path))

    def run_files(self):
        """Which of config.yaml, checkpoints/ and result.json hold a simclr_tf run's content.

        By content, not only by name: a ``config.yaml`` with the run's keys,
        a ``checkpoints/`` with ``ckpt-*`` files, a ``result.json`` with a
        ``global_step`` (another program's ``config.yaml`` is not ours).
        """
        found = []
        entries = set(self._entries())
        if CONFIG in entries and _is_run_config(self.join(CONFIG)):
            found.append(CONFIG)
        if CHECKPOINTS in entries and tf.io.gfile.isdir(self.checkpoints) and any(
                e == "checkpoint" or e.startswith("ckpt-")
                for e in tf.io.gfile.listdir(self.checkpoints)):
            found.append(CHECKPOINTS + "/")
        if RESULT in entries and _is_run_result(self.join(RESULT)):
            found.append(RESULT)
        return found

    def check_is_run_or_empty(self):
        """Refuses a model_dir that holds files but no simclr_tf run (reads only).

        A new or empty directory, or one of our runs (:meth:`run_files`), is
        fine. Anything else is the user's: a run there would replace files
        such as ``config.yaml`` or ``result.json`` and cut ``train_log.jsonl``.
        Our lock file, workers' scratch folders and what an OS or notebook
        leaves in a new folder (``.DS_Store``, ``.ipynb_checkpoints``) do not count.
        """
        others = [e for e in self._entries() if e not in _IGNORED_ENTRIES
                  and not e.startswith(LOCK) and not _WORKER_SCRATCH.fullmatch(e)]
        if not others or self.run_files():
            return
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4
                                          else "")
        raise RunError(
            f"model_dir {self.path!r} holds files but no simclr_tf run ({shown}); a run "
            "writes only into a new or empty directory or one of its own runs, so nothing "
            "there is replaced. Pass an empty or new --model_dir.")

    def lock(self, command=None):
        """Takes the model_dir's lock for this process; returns the held :class:`RunLock`.

        Creates the directory if needed. Raises RunError naming the holder when
        another live run holds it; takes over, with a warning, a lock left
        by a run that is gone (see :class:`RunLock`).
        """
        return RunLock(self, command).acquire()

    def check_data(self, identity):
        """Refuses to resume a run on other data than it started with (reads only).

        ``identity`` is :func:`data_identity` of this run's training data.
        Applies only when model_dir holds checkpoints: it is compared with
        ``data.json``, written when that run started. The dataset, split,
        number of examples and (image folders) the fingerprint of the file
        list must match; ``data_dir`` may differ, so a folder moved with the
        same files resumes. A run written before data.json existed resumes
        with a warning.
        """
        if not self.has_checkpoint():
            return
        saved = self.join(DATA)
        old = None
        if files.exists(saved):
            try:
                old = json.loads(files.read_text(saved))
            except (ValueError, UnicodeDecodeError, tf.errors.OpError, OSError):
                old = None
        if not isinstance(old, dict):
            logging.warning(
                "model_dir %s holds a run whose training data was not recorded (no readable "
                "%s: a run started before simclr_tf recorded it): resuming without checking "
                "that the data is the same; recording %s now.",
                self.path, DATA, _describe_data(identity))
            return
        changes = [f"{key} {old.get(key)!r} -> {identity[key]!r}"
                   for key in ("dataset", "split") if old.get(key) != identity[key]]
        if old.get("version") and identity.get("version") and (
                old["version"] != identity["version"]):
            changes.append(f"TFDS version {old['version']} -> {identity['version']}")
        if old.get("num_examples") != identity["num_examples"]:
            changes.append(f"{old.get('num_examples')} -> {identity['num_examples']} examples")
        if (not changes and old.get("fingerprint") and identity.get("fingerprint")
                and old.get("fingerprint_of") == identity.get("fingerprint_of")
                and old["fingerprint"] != identity["fingerprint"]):
            changes.append(f"the same number of images, but other file names or sizes "
                           f"(fingerprint {old['fingerprint']} -> {identity['fingerprint']})")
        if changes:
            raise RunError(
                f"model_dir {self.path!r} holds checkpoints of a run trained on other data "
                f"({'; '.join(changes)}; it started on {_describe_data(old)}). Resuming "
                "would continue that run on different images. To resume, rerun with the "
                "original data; to train on this data, use a new --model_dir with "
                f"--checkpoint={self.path} to start from its weights.")

    # ------------------------------------------------------------ writing
    def write_data(self, identity):
        """Records the training data's identity in ``data.json`` (see :meth:`check_data`)."""
        with errors.writing(self.join(DATA), DATA, "nothing was trained yet"):
            files.atomic_write_json(identity, self.join(DATA))

    def makedirs(self):
        tf.io.gfile.makedirs(self.path)

    def write_config(self, cfg):
        with errors.writing(self.join(CONFIG), CONFIG, "nothing was trained yet"):
            config_lib.save_yaml(cfg, self.join(CONFIG))

    def write_result(self, result):
        with errors.writing(self.join(RESULT), RESULT, "the previous result.json is kept"):
            files.atomic_write_json(result, self.join(RESULT))

    def summary_writer(self, name, is_chief=True):
        if not is_chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(self.join(name))

    def train_log(self, resume_step):
        return TrainLog(self.join(TRAIN_LOG), resume_step)


def _is_run_config(path):
    try:
        values = yaml.safe_load(files.read_text(path))
    except Exception:  # noqa: BLE001  (unreadable, not YAML, not text: not ours)
        return False
    return isinstance(values, dict) and {"train_mode", "model_dir"} <= set(values)


def _is_run_result(path):
    try:
        values = json.loads(files.read_text(path))
    except Exception:  # noqa: BLE001
        return False
    return isinstance(values, dict) and "global_step" in values


# ---------------------------------------------------------------- data identity
def data_identity(dataset, split, data_dir, num_examples, version=None):
    """What ``data.json`` records of a run's training data.

    ``dataset``, ``split``, ``data_dir``, ``num_examples`` (the examples
    the run trains on) and, for TFDS, the dataset's ``version`` (a new
    version may hold other images); for an image folder also ``fingerprint``, a hash of
    the sorted paths (relative to ``data_dir``) and sizes of the image files
    in the split folders (names only on remote paths such as ``gs://``, where
    a size costs a request per file; ``fingerprint_of`` says which), and
    ``files``, how many were listed. TFDS and built-in datasets are
    identified by name, split and size alone.
    """
    identity = {"dataset": dataset, "split": split, "data_dir": data_dir,
                "num_examples": int(num_examples), "version": version, "fingerprint": None,
                "fingerprint_of": None, "files": None,
                "recorded_at": datetime.datetime.now().isoformat(timespec="seconds")}
    if dataset.strip().lower() == "image_folder" and data_dir:
        identity.update(_folder_fingerprint(str(data_dir), split))
    return identity


def _folder_fingerprint(root, split):

    remote = files.is_remote(root)
    rows = []
    for name in dict.fromkeys(split_names(split)):
        split_dir = os.path.join(root, name)
        if remote:
            walk = tf.io.gfile.walk(split_dir)
        else:
            walk = os.walk(split_dir, followlinks=True)
        visited = set()
        for dirpath, dirnames, filenames in walk:
            if not remote:
                real = os.path.realpath(dirpath)
                if real in visited:  # a link loop: each real folder once
                    dirnames[:] = []
                    continue
                visited.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if dirpath.rstrip("/") == split_dir.rstrip("/"):
                continue  # images sit in class folders; the split folder's own files are unused
            for f in filenames:
                if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root) if not remote else path[len(root):].lstrip("/")
                size = ""
                if not remote:
                    try:
                        size = os.stat(path).st_size
                    except OSError:  # dangling link: the scan skips it too
                        continue
                rows.append(f"{rel.replace(os.sep, '/')}\0{size}\n")
    digest = hashlib.sha256("".join(sorted(rows)).encode("utf-8", "surrogateescape"))
    return {"fingerprint": digest.hexdigest()[:16], "files": len(rows),
            "fingerprint_of": "paths" if remote else "paths and sizes"}


def _describe_data(identity):
    version = f" {identity['version']}" if identity.get("version") else ""
    text = (f"{identity.get('dataset')}{version} split {identity.get('split')!r}, "
            f"{identity.get('num_examples')} examples")
    if identity.get("data_dir"):
        text += f", data_dir {identity['data_dir']!r}"
    return text


# ---------------------------------------------------------------- the lock
def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid):
    """When process ``pid`` started, in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class RunLock:
    """The exclusive lock of a model_dir: the file ``.simclr_tf.lock``.

    The file holds its holder's host, pid and start time (JSON). Locally it
    is created atomically (``O_CREAT | O_EXCL``), so of two runs starting at
    once exactly one gets it. The holder refreshes the file's modification
    time every :data:`LOCK_HEARTBEAT_SECONDS` from a background thread and
    removes it when the run ends (:meth:`release`, called in a ``finally``:
    on success, errors, and the exception a SIGTERM raises).

    A lock found in place is left behind by a run that is gone, and taken
    over with a warning, when its holder ran on this host and its process no
    longer exists (or the pid now belongs to a process started later, or the
    host has rebooted), or when it was taken on another host and not
    refreshed for :data:`LOCK_STALE_SECONDS` (that host's processes cannot be
    checked from here). Otherwise the run is refused with one line naming
    the holder.

    On remote paths (``gs://``) there is no atomic create: the lock is taken
    best effort (written when absent, then read back), so two runs started
    within a second of each other may both proceed.
    """

    def __init__(self, run_dir, command=None):
        self.run_dir = run_dir
        self.path = run_dir.join(LOCK)
        self.remote = files.is_remote(self.path)
        self.record = {
            "host": socket.gethostname(), "pid": os.getpid(), "boot_id": _boot_id(),
            "pid_start": _start_ticks(os.getpid()), "started": round(time.time(), 3),
            "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(command if command is not None else sys.argv)[:500]}
        self.text = json.dumps(self.record)
        self.held = False
        self._created_dir = False
        self._stop = threading.Event()
        self._thread = None

    # -------------------------------------------------------------- taking
    def acquire(self):
        if not tf.io.gfile.isdir(self.run_dir.path):
            self.run_dir.makedirs()
            self._created_dir = True
        try:
            for _ in range(10):
                if self._create():
                    self.held = True
                    self._start_heartbeat()
                    return self
                raw, holder, age = self._read()
                if raw is None:
                    continue  # released meanwhile: try again
                reason = self._left_behind(holder, age)
                if reason is None:
                    raise RunError(self._in_use_message(holder))
                logging.warning("Taking over the lock of model_dir %s: %s.", self.run_dir.path,
                                reason)
                self._remove_left_behind(raw)
            raise RunError(f"Could not take the lock of model_dir {self.run_dir.path!r}: "
                           "other runs keep taking it. Use one run per --model_dir.")
        except BaseException:
            self._remove_created_dir()
            raise

    def _create(self):
        if self.remote:
            if tf.io.gfile.exists(self.path):
                return False
            with tf.io.gfile.GFile(self.path, "w") as f:
                f.write(self.text)
            return self._read()[0] == self.text  # another run wrote after us: theirs
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _read(self):
        """(text, holder dict or None, seconds since last refreshed); text None: no lock."""
        try:
            if self.remote:
                age = time.time() - tf.io.gfile.stat(self.path).mtime_nsec / 1e9
                raw = files.read_text(self.path)
            else:
                age = time.time() - os.stat(self.path).st_mtime
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    raw = f.read()
        except (FileNotFoundError, tf.errors.NotFoundError):
            return None, None, 0.0
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = None
        if not isinstance(holder, dict):
            holder = None
        return raw, holder, age

    def _left_behind(self, holder, age):
        """Why the lock's holder is gone, or None when it may be alive."""
        if holder is None:  # empty or damaged: a run killed while writing it, or one writing it now
            return (f"its lock file is unreadable and {age:.0f} s old" if age > 60 else None)
        pid = holder.get("pid")
        if holder.get("host") != self.record["host"]:
            if age > LOCK_STALE_SECONDS:
                return (f"its holder, pid {pid} on host {holder.get('host')}, has not "
                        f"refreshed it for {age / 60:.0f} minutes")
            return None
        if pid == os.getpid():
            return f"it names this process's pid ({pid}), so its holder is gone"
        if holder.get("boot_id") and self.record["boot_id"] and (
                holder["boot_id"] != self.record["boot_id"]):
            return f"its holder, pid {pid}, ran before this host last restarted"
        if not files.pid_alive(pid):
            return f"its holder, pid {pid} on this host, is gone"
        start = _start_ticks(pid)
        if holder.get("pid_start") is not None and start is not None and (
                start != holder["pid_start"]):
            return f"its holder, pid {pid} on this host, is gone (the pid now names another process)"
        return None

    def _in_use_message(self, holder):
        if holder is None:
            return (f"model_dir {self.run_dir.path!r} is being taken by another simclr_tf run "
                    f"right now (lock file {self.path!r}). Wait for it to end, or pass "
                    "another --model_dir.")
        text = (f"model_dir {self.run_dir.path!r} is in use by another simclr_tf run (pid "
                f"{holder.get('pid')} on host {holder.get('host')}, since "
                f"{holder.get('started_at')}; lock file {self.path!r}). Wait for it to end, "
                "or pass another --model_dir")
        if holder.get("host") != self.record["host"]:
            text += ("; if that run is gone, delete the lock file (it is taken over by itself "
                     f"{LOCK_STALE_SECONDS // 60} minutes after its holder stops refreshing it)")
        return text + "."

    def _remove_left_behind(self, raw):
        """Removes the lock judged left behind, unless another run replaced it meanwhile."""
        if self.remote:
            files.remove(self.path)
            return
        aside = f"{self.path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside, encoding="utf-8", errors="replace") as f:
                moved = f.read()
            if moved != raw:  # another run took it over first: give its lock back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
        finally:
            os.remove(aside)

    # -------------------------------------------------------------- holding
    def _start_heartbeat(self):
        self._thread = threading.Thread(target=self._heartbeat, name="simclr_tf-lock",
                                        daemon=True)
        self._thread.start()

    def _heartbeat(self):
        while not self._stop.wait(LOCK_HEARTBEAT_SECONDS):
            try:
                if self._read()[0] != self.text:
                    logging.warning("The lock file %s no longer names this run.", self.path)
                    return
                if self.remote:
                    with tf.io.gfile.GFile(self.path, "w") as f:
                        f.write(self.text)
                else:
                    os.utime(self.path)
            except (OSError, tf.errors.OpError):
                continue  # a transient error: try again next time

    def release(self):
        """Removes the lock if this run still holds it; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self.held:
            return
        self.held = False
        try:
            if self._read()[0] == self.text:
                files.remove(self.path)
        except (OSError, tf.errors.OpError) as e:
            logging.warning("Could not remove the lock file %s (%s); the next run takes it "
                            "over.", self.path, e)
        self._remove_created_dir()

    def _remove_created_dir(self):
        """Removes the model_dir this lock created if nothing else was written there."""
        if self._created_dir and not self.remote:
            try:
                os.rmdir(self.run_dir.path)
            except OSError:  # not empty: the run wrote there
                pass
        self._created_dir = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _views(cfg):
    augment = cfg.augment
    names = {k: ",".join(getattr(augment, k)) or "none" for k in ("shared", "view1", "view2")}
    return (" ".join(f"{k}={v}" for k, v in names.items()) + " "
            f"color_jitter_strength={augment.color_jitter_strength} "
            f"color_jitter_impl={augment.color_jitter_impl}")


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
        with errors.writing(self.path, TRAIN_LOG, "the previous log is kept"):
            files.atomic_write(self.path, "".join(line + "\n" for line in self._lines))

    def write(self, step, logs):
        line = json.dumps({"step": int(step), **logs, "time": round(time.time(), 3)})
        self._lines.append(line)
        if files.is_remote(self.path):  # object stores cannot append
            self._rewrite()
        else:
            with errors.writing(self.path, TRAIN_LOG, "its earlier lines are kept"), \
                    open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
