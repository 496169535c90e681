"""The three things a run does: train, evaluate, export.

:func:`train` is the one training loop. It runs a chunk of steps inside one
``tf.function`` per call (``strategy.run`` of the task's step, see
:mod:`simclr_tf.runtime.steps`), rather than ``model.fit``: the same loop
then works under the default strategy, ``MirroredStrategy``, ``TPUStrategy``
and ``MultiWorkerMirroredStrategy`` (where Keras 3's ``fit`` has known
failures), it resumes at an exact step, and the host only synchronises at
log and checkpoint points.

Preemption (Cloud TPU and preemptible VMs, Kubernetes; about 30 s of notice):
a SIGTERM during :func:`train` ends the current chunk of steps after the step
running when it came (on several workers the flags are all-reduced before
each step, so all stop at the same one), skips
a due kNN / frozen-feature monitor pass (or abandons one under way), saves a
checkpoint at the step reached on every worker (they agree through a
collective, so all save the same step) and raises
:class:`~simclr_tf.errors.Preempted`; rerunning the same command resumes
there exactly, as from any checkpoint. A SIGTERM during :func:`evaluate`
abandons it (removing its temporary feature files) and raises ``Preempted``
too; nothing is written.
"""

import contextlib
import math
import os
import signal
import socket
import threading

import tensorflow as tf
from absl import logging

from simclr_tf import distribute, errors, linear_eval, tasks
from simclr_tf import knn as knn_lib
from simclr_tf.data import view_grid
from simclr_tf.errors import Preempted, RunError
from simclr_tf.progress import Progress
from simclr_tf.export import writer
from simclr_tf.runtime import steps as steps_lib
from simclr_tf.runtime.report import TrainReport
from simclr_tf.runtime.run_dir import EVAL_EVENTS


class _Interrupted(BaseException):
    """Raised by the SIGTERM handler inside :meth:`_Sigterm.interruptible` (a
    BaseException, as KeyboardInterrupt, so that no ``except Exception`` swallows it)."""


class _Sigterm:
    """What a SIGTERM has asked for while :func:`_on_sigterm`'s block runs.

    ``set`` turns true on SIGTERM. ``watch(variable)`` also sets that bool
    ``tf.Variable`` then, at once: the compiled chunk of steps reads it
    between steps, while the main thread is inside the chunk's call and its
    Python handler cannot run (CPython runs signal handlers in the main
    thread between bytecodes only). A helper thread does that, woken through
    :func:`signal.set_wakeup_fd`; it is the only one that touches TensorFlow
    (a handler could run in the middle of a trace and add the assignment to
    the graph being traced). Inside ``interruptible()`` the handler raises
    :class:`_Interrupted` (once), to abandon work such as an evaluation.
    """

    def __init__(self):
        self.set = False
        self._lock = threading.Lock()
        self._stop = None
        self._interruptible = False

    def handler(self, signum, frame):
        self.set = True
        if self._interruptible:
            self._interruptible = False
            raise _Interrupted()
        logging.warning("SIGTERM: stopping after the current step.")

    def noticed(self):  # the helper thread
        with self._lock:
            self.set = True
            if self._stop is not None:
                self._stop.assign(True)

    def watch(self, variable):
        with self._lock:
            self._stop = variable
            if self.set:
                variable.assign(True)

    @contextlib.contextmanager
    def interruptible(self):
        self._interruptible = True
        try:
            if self.set:
                raise _Interrupted()
            yield
        finally:
            self._interruptible = False


def _wake_on(sigterm, wakeup, previous_fd):
    """The helper thread of :class:`_Sigterm`: reads the signal numbers written to
    ``wakeup`` (0 ends it) and passes them on to the wakeup fd set before, if any
    (an event loop's)."""
    while True:
        try:
            data = wakeup.recv(64)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data or 0 in data:
            return
        if signal.SIGTERM in data:
            sigterm.noticed()
        if previous_fd >= 0:
            try:
                os.write(previous_fd, data)
            except OSError:
                pass


@contextlib.contextmanager
def _on_sigterm():
    """A :class:`_Sigterm` that SIGTERM sets while the block runs (main thread only;
    elsewhere it never turns true)."""
    sigterm = _Sigterm()
    if threading.current_thread() is not threading.main_thread():
        yield sigterm
        return
    read_end, write_end = socket.socketpair()
    write_end.setblocking(False)
    previous_fd = signal.set_wakeup_fd(write_end.fileno(), warn_on_full_buffer=False)
    previous = signal.signal(signal.SIGTERM, sigterm.handler)
    helper = threading.Thread(target=_wake_on, args=(sigterm, read_end, previous_fd), daemon=True,
                              name="simclr_tf-sigterm")
    helper.start()
    try:
        yield sigterm
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.set_wakeup_fd(previous_fd)
        try:
            write_end.send(b"\0")
        except OSError:
            pass
        helper.join(10)
        read_end.close()
        write_end.close()


def train(exp):
    """Trains ``exp`` (a :class:`~simclr_tf.runtime.experiment.Experiment`) to its last step."""
    with _on_sigterm() as sigterm:
        _train(exp, sigterm)


def _train(exp, sigterm):
    cfg, model, ckpt = exp.cfg, exp.model, exp.checkpointer
    # 1. Where to start: this run's newest checkpoint, else --checkpoint, else scratch.
    logging.info("%s", ckpt.restore_for_training(cfg.checkpoint))
    start, total = exp.step, exp.steps.total_steps
    distribute.check_workers_agree(exp.strategy, start)
    if exp.is_chief:
        ckpt.remove_orphaned_temp()
    if start >= total:
        logging.info("Training already finished (step %d of %d).", start, total)
        ckpt.remove_worker_scratch()
        return
    # 2. The compiled steps and the data stream, positioned at `start`.
    with exp.strategy.scope():  # metrics summed over every replica and worker when read
        policy = steps_lib.step_policy(cfg.nonfinite_policy, exp.loss_scale)
        metrics = steps_lib.train_metrics(exp.task.metric_names(model), policy)
    nonfinite_step = None
    if policy == "stop" and not distribute.is_tpu(exp.strategy):
        nonfinite_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    step_fn = steps_lib.make_train_step(model, exp.task, exp.updates, metrics, policy,
                                        exp.loss_scale, exp.weight_decay)
    # SIGTERM ends a chunk between steps; on several workers the flags are
    # all-reduced before each step, so every worker stops at the same one.
    with tf.device("CPU:0"):
        stop = tf.Variable(False, trainable=False)
    sigterm.watch(stop)
    train_steps = steps_lib.make_train_steps(step_fn, exp.strategy, exp.optimizer,
                                             exp.jit_compile, nonfinite_step, stop)
    iterator = iter(exp.train_dataset(start))
    views = (iter(view_grid.pairs_dataset(exp.task, cfg, num_pairs=4))
             if exp.is_chief and exp.task.learns_representation else None)
    report = TrainReport(exp.run_dir, total, start, metrics, exp.is_chief, views,
                         exp.files_gone_bad)
    # 3. Chunks of steps up to each log or checkpoint point.
    save_every = cfg.checkpoint_steps or cfg.checkpoint_epochs * exp.steps.steps_per_epoch
    # Monitors on frozen features h every N epochs (0: never): kNN, linear eval.
    monitor_every = {what: epochs * exp.steps.steps_per_epoch for what, epochs in
                     (("knn", cfg.knn_every_epochs),
                      ("linear", cfg.feature_eval_every_epochs)) if epochs > 0}
    step, saved = start, None
    if ckpt.latest and os.path.basename(ckpt.latest) == f"ckpt-{start}":
        saved = start, ckpt.latest  # resumed from it: a SIGTERM before a step saves nothing
    while step < total:
        chunk = min(cfg.log_every_steps - step % cfg.log_every_steps,
                    save_every - step % save_every, total - step,
                    *(every - step % every for every in monitor_every.values()))
        for m in metrics.values():
            m.reset_state()
        train_steps(iterator, tf.constant(chunk))
        first, step = step + 1, exp.step
        if step >= first:  # none when SIGTERM came before the chunk's first step
            saved = _report_and_save(exp, step, first, total, save_every, monitor_every,
                                     metrics, nonfinite_step, report, sigterm) or saved
        if step < total and distribute.any_worker(exp.strategy, sigterm.set):
            if saved is None or saved[0] != step:
                saved = step, ckpt.save(step)
            raise Preempted(f"Stopped by SIGTERM at step {step} of {total}; saved "
                            f"{saved[1]}. Rerun the same command to resume there.")
    report.close()
    ckpt.remove_worker_scratch()


def _report_and_save(exp, step, first, total, save_every, monitor_every, metrics,
                     nonfinite_step, report, sigterm):
    """After steps ``first..step``: the loss check, the due monitors, the log line and
    a due checkpoint; returns ``(step, path)`` of that checkpoint, else None."""
    ckpt = exp.checkpointer
    logs = {name: float(m.result()) for name, m in metrics.items()}
    logs["lr"] = float(exp.schedule(step - 1))
    if exp.loss_scale is not None:
        logs["loss_scale"] = float(exp.loss_scale.scale.numpy())
    if not math.isfinite(logs["loss"]):
        bad = int(nonfinite_step.numpy()) if nonfinite_step is not None else 0
        where = f"at step {bad}" if bad else f"in steps {first}-{step}"
        raise RunError(
            f"Loss became {logs['loss']} {where}. Training stopped; the last good "
            f"checkpoint ({ckpt.latest or 'none yet'}) is kept. Lower --learning_rate, "
            "check the input data, or pass --nonfinite_policy=skip to skip such steps.")
    due = {what: step % every == 0 for what, every in monitor_every.items()}
    if any(due.values()) and exp.is_chief:  # only the chief runs them: no collective
        logs.update(_monitor_logs(exp, due, sigterm))
    report.write(first, step, logs)
    if step % save_every == 0 or step == total:
        return step, ckpt.save(step)
    return None


def _monitor_logs(exp, due, sigterm):
    """The due monitors' accuracies; none when SIGTERM came before or during them."""
    try:
        with sigterm.interruptible():
            features = _monitor_features(exp, knn=due.get("knn", False),
                                         linear=due.get("linear", False))
    except _Interrupted:
        logging.warning("SIGTERM: monitor pass at step %d skipped.", exp.step)
        return {}
    return {key: features[part]["top1"] for part, key in
            (("knn", "knn_top1"), ("feature_linear_eval", "feature_linear_eval_top1"))
            if part in features}


def evaluate(exp):
    """Top-1/top-5 of the supervised head on eval_split; writes result.json.

    On the chief it also reports the evaluations on frozen features: the kNN
    accuracy (``knn``) and, after pretraining, the frozen-feature linear
    evaluation (``feature_linear_eval``, the paper's protocol).
    """
    with _on_sigterm() as sigterm:
        try:
            with sigterm.interruptible():
                result = _evaluate(exp)
        except _Interrupted:
            result = None
        if result is None or sigterm.set:  # set, not raised: e.g. inside a __del__
            raise Preempted(
                f"Stopped by SIGTERM during the evaluation of step {exp.step}: no result "
                "was written and its temporary files are removed. Rerun the same command "
                "to evaluate again.")
        _write_result(exp, result)
    return result


def _evaluate(exp):
    cfg, model, strategy = exp.cfg, exp.model, exp.strategy
    if model.supervised_head is None:
        raise RunError(
            f"Cannot evaluate: the training split {cfg.train_split!r} of "
            f"{cfg.dataset!r} has no labels, so there is no supervised head. "
            "Train one on a labelled split first (--train_mode="
            f"{' or '.join(tasks.SUPERVISED_MODES)}).")
    with strategy.scope():  # counts summed over every replica and worker when read
        metrics = steps_lib.eval_metrics()
    eval_step = steps_lib.make_eval_step(model, metrics)
    run_eval_step = tf.function(lambda batch: strategy.run(eval_step, args=(batch,)))
    progress = Progress(f"evaluation on {cfg.eval_split!r}", unit="batches")
    for batch in exp.eval_dataset():
        run_eval_step(batch)
        progress.update()
    progress.done()
    if float(tf.convert_to_tensor(metrics["top1"].count)) == 0:  # summed over replicas
        raise RunError(
            f"Cannot evaluate: the eval split {cfg.eval_split!r} of {cfg.dataset!r} "
            "has no labelled examples (labels are -1). Pass a labelled --eval_split.")
    result = {"top1": float(metrics["top1"].result()),
              "top5": float(metrics["top5"].result()),
              "global_step": exp.step,
              "eval_split": cfg.eval_split,
              "train_mode": cfg.train_mode,
              "num_labeled_examples": exp.num_labeled_examples}
    if exp.is_chief:
        result.update(_monitor_features(exp))
    gone_bad = exp.files_gone_bad()
    if gone_bad:  # unreadable since the scan, each replaced by a blank image
        result["files_gone_bad"] = gone_bad
    return result


def _write_result(exp, result):
    if exp.is_chief:
        with exp.run_dir.summary_writer(EVAL_EVENTS).as_default(step=exp.step):
            tf.summary.scalar("top1", result["top1"])
            tf.summary.scalar("top5", result["top5"])
            for part in ("feature_linear_eval", "knn"):
                for key, value in result.get(part, {}).items():
                    if key.startswith("top"):
                        tf.summary.scalar(f"{part}/{key}", value)
        exp.run_dir.write_result(result)


def _monitor_features(exp, knn=None, linear=None):
    """The evaluations on frozen features h: ``feature_linear_eval`` and ``knn``.

    One forward pass over both splits, through the run's strategy, serves
    both (features above 1 GiB a split are streamed from a temporary file; see
    :mod:`simclr_tf.linear_eval`). By default (at the end of a run) the
    logistic regression (the paper's protocol, l2 chosen on a held-out part
    of train_split) runs after pretraining when ``feature_linear_eval`` is on,
    and the kNN vote when ``knn_eval`` is on; during pretraining the loop asks
    for each explicitly.
    """
    cfg = exp.cfg
    if linear is None:
        linear = exp.task.learns_representation and cfg.feature_linear_eval
    if knn is None:
        knn = cfg.knn_eval
    if not (linear or knn):
        return {}
    subset = exp.label_subset.indices if exp.label_subset is not None else None
    try:
        features = linear_eval.frozen_features(exp.model.encoder, cfg.data, subset,
                                               strategy=exp.strategy)
    except ValueError:
        if linear:
            raise
        logging.info("No kNN accuracy: a split has no labels.")
        return {}
    out = {"knn": knn_lib.evaluate(features, exp.num_classes)} if knn else {}
    if linear:
        out["feature_linear_eval"] = linear_eval.fit_and_score(features, exp.num_classes,
                                                               seed=cfg.seed)
    return out


def export(exp, restore=False):
    """Exports ``exp``'s model into its model_dir (``saved_model/``, ``simclr.keras``).

    Args:
        exp: the run's Experiment.
        restore: first restore the newest readable checkpoint of model_dir
            (``--mode=export``); raises RunError if there is none.

    Returns:
        dict of the written paths (see :func:`simclr_tf.export.export_model`).
    """
    if restore:
        exp.checkpointer.restore_finished("export")
    try:
        with errors.writing(exp.run_dir.saved_model, "the export",
                            "any previous export there is unchanged"):
            return writer.export_model(exp.model, exp.run_dir.path, exp.cfg.image_size)
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise RunError(
            f"Export to {exp.run_dir.path!r} failed ({type(e).__name__}: {e}). "
            "Any previous export there is unchanged.") from e
