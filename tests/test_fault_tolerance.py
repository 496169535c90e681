"""Fault tolerance: SIGKILL and resume, corrupt checkpoints, divergence, determinism.

The CLI tests share one uninterrupted run (``--deterministic``) and compare
against it exactly. The interrupted run is one model_dir stopped twice (each
TF process start costs CI 10-20 s): SIGKILLed mid-epoch after its first
checkpoint, rerun with the same command (plus ``--checkpoint_steps=100``, a
setting a resume may change, so that the only new checkpoint can be the
preemption's) until it has passed the step the kill reached, stopped there by
SIGTERM, and rerun to the end. It must log the same losses step for step, end
at the same step and learning rate and write the same final weights; and the
killed run's own first steps must be bit-identical to the uninterrupted
run's (determinism).
"""

import json
import os
import signal
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

import subprocs
from multidevice import run_with_devices
from simclr_tf import config as config_lib
from simclr_tf import errors, runtime
from simclr_tf.runtime import checkpointer
from simclr_tf.runtime import run_dir as run_dir_lib

TOTAL_STEPS = 12
RUN_FLAGS = [
    f"--config={subprocs.SMOKE}", "--mode=train_then_eval", "--deterministic",
    "--seed=3", "--train_split=train[:64]", "--eval_split=test[:256]",
    "--train_batch_size=16", f"--train_steps={TOTAL_STEPS}", "--checkpoint_steps=3",
    "--log_every_steps=1", "--feature_linear_eval=false",
]  # 4 steps per epoch: checkpoints at steps 3, 6, 9 fall inside epochs


def _checkpoint_tensors(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k not in _SKIP_KEYS}


def _result(model_dir):
    with open(os.path.join(model_dir, "result.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("uninterrupted"))
    model_dir = os.path.join(root, "run")
    child = subprocs.run(RUN_FLAGS + [f"--model_dir={model_dir}"], root, "run")
    return model_dir, child


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """One run SIGKILLed, rerun and SIGTERMed, then rerun to the end (module docstring)."""
    root = str(tmp_path_factory.mktemp("interrupted"))
    model_dir = os.path.join(root, "run")
    flags = RUN_FLAGS + [f"--model_dir={model_dir}"]
    out = dict(model_dir=model_dir)
    children = []
    try:
        # 1. SIGKILL once step 4 is logged (after checkpoint 3, inside epoch 2).
        children = [subprocs.Child(flags, root, "killed")]
        subprocs.wait_until(lambda: any(s >= 4 for s in subprocs.logged_steps(model_dir)),
                            timeout=600, children=children)
        children[0].kill()
        out["killed"] = children[0]
        out["killed_log"] = subprocs.read_log(model_dir)
        out["files_after_kill"] = sorted(os.listdir(model_dir))
        killed_at = out["killed_log"][-1]["step"]

        # 2. Rerun; SIGTERM once it has trained past the step the kill reached.
        out["saved_before_sigterm"] = subprocs.checkpoint_steps(model_dir)
        children = [subprocs.Child(flags + ["--checkpoint_steps=100"], root, "terminated")]
        subprocs.wait_until(lambda: any(s > killed_at for s in subprocs.logged_steps(model_dir)),
                            timeout=600, children=children)
        children[0].proc.send_signal(signal.SIGTERM)
        children[0].wait(300)
        out["terminated"] = children[0]
        out["saved_after_sigterm"] = subprocs.checkpoint_steps(model_dir)
    finally:
        subprocs.stop(children)
    # 3. Rerun with the first command to the end.
    out["resumed"] = subprocs.run(flags, root, "resumed")
    return out


def _assert_matches_the_uninterrupted_run(ref_dir, model_dir):
    """Same final step, learning rate, losses (step by step), weights and result."""
    ref_log, got_log = subprocs.read_log(ref_dir), subprocs.read_log(model_dir)
    assert [e["step"] for e in got_log] == list(range(1, TOTAL_STEPS + 1))
    assert [e["step"] for e in ref_log] == list(range(1, TOTAL_STEPS + 1))
    assert got_log[-1]["lr"] == ref_log[-1]["lr"]
    for ref, got in zip(ref_log, got_log):
        assert got["loss"] == ref["loss"], (ref["step"], ref["loss"], got["loss"])
        assert got["lr"] == ref["lr"]
    assert _result(model_dir) == _result(ref_dir)
    assert _result(model_dir)["global_step"] == TOTAL_STEPS
    ref_ckpt, got_ckpt = _checkpoint_tensors(ref_dir), _checkpoint_tensors(model_dir)
    assert ref_ckpt.keys() == got_ckpt.keys()
    assert any("moving_variance" in k for k in got_ckpt)  # BN statistics are saved
    for key in ref_ckpt:
        np.testing.assert_array_equal(got_ckpt[key], ref_ckpt[key], err_msg=key)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_matches_an_uninterrupted_run(uninterrupted,
                                                                   interrupted):
    assert interrupted["killed"].proc.returncode == -9
    assert "result.json" not in interrupted["files_after_kill"]
    killed_at = interrupted["killed_log"][-1]["step"]
    assert 4 <= killed_at < TOTAL_STEPS

    log = interrupted["terminated"].stderr  # the rerun after the kill
    resumed_at = int(log.split("resumed from ")[1].split(" at step ")[1].split()[0])
    assert resumed_at % 3 == 0 and 3 <= resumed_at <= killed_at
    assert f"ckpt-{resumed_at} at step {resumed_at}" in log
    _assert_matches_the_uninterrupted_run(uninterrupted[0], interrupted["model_dir"])


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_rerun_continues_exactly(uninterrupted,
                                                                        interrupted):
    """Preemption loses nothing: the checkpoint is at the step SIGTERM reached (no
    periodic checkpoint was due), and the rerun matches a run never stopped."""
    first = interrupted["terminated"]
    assert first.proc.returncode == 143, first.describe()
    new = sorted(set(interrupted["saved_after_sigterm"]) -
                 set(interrupted["saved_before_sigterm"]))
    assert len(new) == 1, (interrupted["saved_before_sigterm"],
                           interrupted["saved_after_sigterm"])
    stopped_at = new[0]
    assert interrupted["killed_log"][-1]["step"] < stopped_at < TOTAL_STEPS
    assert f"Stopped by SIGTERM at step {stopped_at} of {TOTAL_STEPS}" in first.stderr
    assert "Traceback" not in first.stderr
    assert f"ckpt-{stopped_at} at step {stopped_at}" in interrupted["resumed"].stderr
    _assert_matches_the_uninterrupted_run(uninterrupted[0], interrupted["model_dir"])


@pytest.mark.slow
def test_deterministic_runs_log_bit_identical_losses(uninterrupted, interrupted):
    """Two runs of the same command (the second one killed) agree exactly."""
    ref_dir, ref_child = uninterrupted
    assert "op determinism enabled" in ref_child.stderr
    ref = {e["step"]: e for e in subprocs.read_log(ref_dir)}
    killed_log = interrupted["killed_log"]
    assert len(killed_log) >= 4
    for entry in killed_log:
        for key in ("loss", "contrast_loss", "contrast_acc", "sup_loss", "lr"):
            assert entry[key] == ref[entry["step"]][key], (entry["step"], key)


@pytest.mark.slow
def test_divergence_stops_with_the_step_and_keeps_good_checkpoints(tmp_path):
    model_dir = str(tmp_path / "run")
    child = subprocs.run(
        [f"--config={subprocs.SMOKE}", "--mode=train_then_eval", "--optimizer=momentum",
         "--learning_rate=1e30", "--train_steps=6", "--checkpoint_steps=1",
         "--log_every_steps=3", "--feature_linear_eval=false",
         f"--model_dir={model_dir}"], str(tmp_path), "diverge", check=False)
    err = child.stderr
    assert child.proc.returncode == 2, child.describe()
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if "simclr_tf.run: error:" in line]
    assert len(message) == 1 and "at step " in message[0], err[-3000:]
    assert "last good checkpoint" in message[0]
    bad_step = int(message[0].split("at step ")[1].split()[0].rstrip(".,"))
    assert 1 <= bad_step <= 6
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    paths = list(state.all_model_checkpoint_paths) if state is not None else []
    saved = [int(p.rsplit("-", 1)[1]) for p in paths]
    assert saved == list(range(1, bad_step))  # every step before the bad one, no later
    for path in paths:  # no checkpoint of diverged weights: finite and of sane size
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            value = np.asarray(reader.get_tensor(key))
            if np.issubdtype(value.dtype, np.floating):
                assert np.all(np.isfinite(value)), (path, key)
                assert np.max(np.abs(value), initial=0) < checkpointer.MAX_WEIGHT, (path, key)
    assert not os.path.exists(os.path.join(model_dir, "result.json"))


# Preemption grace: SIGTERM is noticed between steps, not only between chunks.
# With no log, checkpoint or monitor point before the last step the first chunk
# is the whole run: a loop that waits for the chunk runs all of it (at 0.05-0.1 s
# a step of the smoke model on two loaded cores, hours). The bound holds with
# room on a loaded 2-core machine: the step under way, the checkpoint save and
# the process exit (measured 5-7 s, once 23 s, at a load average of 8).
# Cloud preemption notices give ~30 s; measured here 2-7 s on a loaded 2-core machine.
SIGTERM_BOUND_S = 20
LONG_RUN_FLAGS = [
    f"--config={subprocs.SMOKE}", "--mode=train", "--train_steps=100000",
    "--log_every_steps=100000", "--checkpoint_steps=100000", "--feature_linear_eval=false",
]


def _sigterm_and_time(child, started, settle_s):
    """Waits for ``started()`` (+ ``settle_s``), sends SIGTERM; returns seconds to exit."""
    subprocs.wait_until(started, timeout=600, children=[child])
    time.sleep(settle_s)
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    child.wait(SIGTERM_BOUND_S)  # kills it and fails past the bound
    return time.monotonic() - sent


@pytest.mark.slow
def test_sigterm_mid_chunk_saves_the_step_reached_within_the_bound(tmp_path):
    model_dir = str(tmp_path / "run")
    flags = LONG_RUN_FLAGS + [f"--model_dir={model_dir}"]
    children = []
    try:
        first = subprocs.Child(flags, str(tmp_path), "first")
        children = [first]
        # 10 s after the start: past the trace of the chunk (5-25 s) and into its
        # steps, or still tracing: a SIGTERM during the trace ends the chunk before
        # its first step (step 0). Both must end within the bound.
        took = _sigterm_and_time(first, lambda: "started from" in first.stderr, 10)
        print(f"SIGTERM to exit, mid-chunk: {took:.1f} s")
        assert first.proc.returncode == errors.Preempted.exit_code, first.describe()
        assert "Traceback" not in first.stderr
        stopped = [line for line in first.stderr.splitlines()
                   if "Stopped by SIGTERM at step " in line]
        assert len(stopped) == 1, first.describe()
        step = int(stopped[0].split("Stopped by SIGTERM at step ")[1].split()[0])
        assert 0 <= step < 100000
        assert subprocs.checkpoint_steps(model_dir) == [step]

        # The rerun restores that checkpoint and resumes there; SIGTERM it again at once.
        index = os.path.join(model_dir, "checkpoints", f"ckpt-{step}.index")
        written = os.stat(index).st_mtime_ns
        second = subprocs.Child(flags, str(tmp_path), "second")
        children = [second]
        took = _sigterm_and_time(
            second, lambda: f"ckpt-{step} at step {step}" in second.stderr, 0)
        print(f"SIGTERM to exit, before the first step of the rerun: {took:.1f} s")
        assert second.proc.returncode == errors.Preempted.exit_code, second.describe()
        assert "Traceback" not in second.stderr
        assert "Stopped by SIGTERM at step " in second.stderr
        assert subprocs.checkpoint_steps(model_dir)[0] == step
        if f"Stopped by SIGTERM at step {step} " in second.stderr:  # before its first step
            assert os.stat(index).st_mtime_ns == written  # not saved again
    finally:
        subprocs.stop(children)


# An evaluation stopped by SIGTERM: its frozen-feature file (spilled to TMPDIR
# here by a zero memory limit) is removed and the run exits 143 with one line.
_LOW_MEMORY_RUN = ("from simclr_tf.linear_eval import features\n"
                   "features.MEMORY_LIMIT_BYTES = 0\n"
                   "from simclr_tf import run\n"
                   "run.run()\n")


def _feature_files(folder):
    return [name for name in os.listdir(folder) if name.startswith("simclr_tf")]


@pytest.mark.slow
def test_sigterm_during_the_evaluation_removes_its_feature_files_and_exits_143(tmp_path):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    model_dir = str(tmp_path / "run")
    child = subprocs.Child(
        [f"--config={subprocs.SMOKE}", "--mode=train_then_eval", "--train_steps=1",
         "--train_split=train[:8000]", f"--model_dir={model_dir}"],
        str(tmp_path), "eval", env={"TMPDIR": str(scratch)}, code=_LOW_MEMORY_RUN)
    try:
        subprocs.wait_until(lambda: _feature_files(scratch), timeout=600, children=[child])
        sent = time.monotonic()
        child.proc.send_signal(signal.SIGTERM)
        child.wait(SIGTERM_BOUND_S)
        print(f"SIGTERM to exit, during the frozen-feature extraction: "
              f"{time.monotonic() - sent:.1f} s")
    finally:
        subprocs.stop([child])
    assert child.proc.returncode == errors.Preempted.exit_code, child.describe()
    assert "Traceback" not in child.stderr
    assert "Stopped by SIGTERM during the evaluation of step 1" in child.stderr
    assert _feature_files(scratch) == []
    assert not os.path.exists(os.path.join(model_dir, "result.json"))


@pytest.mark.slow
def test_sigterm_during_a_due_monitor_pass_abandons_it_and_saves(tmp_path, monkeypatch,
                                                                 caplog):
    """The kNN pass due at step 2 is abandoned (not finished) and step 2 is saved."""
    from simclr_tf.runtime import loop

    ran = []

    def monitor_until_killed(exp, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as a preemption notice mid-pass
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a long pass; the handler ends it
            time.sleep(0.01)
        ran.append(exp.step)
        return {}

    monkeypatch.setattr(loop, "_monitor_features", monitor_until_killed)
    records = []
    monkeypatch.setattr(loop.logging, "warning", lambda msg, *a: records.append(msg % a))
    model_dir = str(tmp_path / "run")
    started = time.monotonic()
    code = subprocs.main_in_process(
        f"--config={subprocs.SMOKE}", "--mode=train", "--train_split=train[:64]",
        "--knn_eval=true", "--knn_every_epochs=1", "--train_steps=6", "--checkpoint_steps=6",
        "--log_every_steps=6", "--feature_linear_eval=false", f"--model_dir={model_dir}")
    assert code == errors.Preempted.exit_code
    assert ran == []  # abandoned, not run to its end
    assert time.monotonic() - started < 60
    assert "SIGTERM: monitor pass at step 2 skipped." in records, records
    assert subprocs.checkpoint_steps(model_dir) == [2]


# --------------------------------------------------------------------- in-process

def _cfg(tmp_path, **overrides):
    values = dict(dataset="offline_shapes", train_split="train[:64]",
                  eval_split="test[:64]", image_size=16, resnet_depth=18,
                  width_multiplier=0.25, train_batch_size=16, eval_batch_size=32,
                  train_steps=3, warmup_epochs=0.0, proj_out_dim=16, checkpoint_steps=1,
                  log_every_steps=1, feature_linear_eval=False,
                  model_dir=str(tmp_path / "run"))
    values.update(overrides)
    return config_lib.resolve(None, values)


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    """A model_dir with checkpoints at steps 1, 2 and 3, and the tensors of each."""
    cfg = _cfg(tmp_path_factory.mktemp("ckpts"))
    os.makedirs(cfg.model_dir)
    runtime.train(runtime.build(cfg))
    directory = os.path.join(cfg.model_dir, "checkpoints")
    tensors = {}
    for step in (1, 2, 3):
        reader = tf.train.load_checkpoint(os.path.join(directory, f"ckpt-{step}"))
        tensors[step] = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
    return cfg, tensors


def _copy_run(three_checkpoints, tmp_path):
    cfg, tensors = three_checkpoints
    model_dir = str(tmp_path / "copy")
    shutil.copytree(cfg.model_dir, model_dir)
    return cfg.replace(model_dir=model_dir), os.path.join(model_dir, "checkpoints"), tensors


_SKIP_KEYS = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")


def _assert_session_holds(exp, expected, tmp_path):
    """The exp's state equals the checkpoint tensors ``expected``."""
    reader = tf.train.load_checkpoint(exp.checkpointer.checkpoint.write(str(tmp_path / "now")))
    keys = [k for k in reader.get_variable_to_shape_map() if k not in _SKIP_KEYS]
    assert sorted(keys) == sorted(k for k in expected if k not in _SKIP_KEYS)
    for key in keys:
        np.testing.assert_array_equal(reader.get_tensor(key), expected[key], err_msg=key)


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_with_a_warning(three_checkpoints, tmp_path,
                                                                caplog):
    cfg, directory, tensors = _copy_run(three_checkpoints, tmp_path)
    data = os.path.join(directory, "ckpt-3.data-00000-of-00001")
    with open(data, "rb") as f:
        content = f.read()
    with open(data, "wb") as f:
        f.write(content[: len(content) // 2])
    before = sorted(os.listdir(directory))
    exp = runtime.build(cfg)
    with caplog.at_level("WARNING"):
        message = exp.checkpointer.restore_for_training(exp.cfg.checkpoint)
    assert exp.step == 2
    assert "ckpt-2 at step 2" in message and "skipped unreadable ckpt-3" in message
    assert any("ckpt-3 is unreadable" in r.getMessage() for r in caplog.records)
    _assert_session_holds(exp, tensors[2], tmp_path)
    assert sorted(os.listdir(directory)) == before  # nothing deleted or rewritten


@pytest.mark.slow
def test_corrupt_bytes_and_missing_files_fall_back_too(three_checkpoints, tmp_path):
    cfg, directory, tensors = _copy_run(three_checkpoints, tmp_path)
    data3 = os.path.join(directory, "ckpt-3.data-00000-of-00001")
    with open(data3, "rb") as f:
        content = bytearray(f.read())
    content[len(content) // 2] ^= 0xFF  # a flipped bit: the CRC check catches it
    with open(data3, "wb") as f:
        f.write(bytes(content))
    os.remove(os.path.join(directory, "ckpt-2.data-00000-of-00001"))
    exp = runtime.build(cfg)
    message = exp.checkpointer.restore_for_training(exp.cfg.checkpoint)
    assert exp.step == 1 and "skipped unreadable ckpt-3, ckpt-2" in message
    _assert_session_holds(exp, tensors[1], tmp_path)


@pytest.mark.slow
def test_no_readable_checkpoint_is_a_clear_error(three_checkpoints, tmp_path):
    cfg, directory, _ = _copy_run(three_checkpoints, tmp_path)
    for step in (1, 2, 3):
        with open(os.path.join(directory, f"ckpt-{step}.index"), "wb") as f:
            f.write(b"")
    exp = runtime.build(cfg)
    with pytest.raises(errors.RunError, match="No readable checkpoint.*unreadable: "
                                               "ckpt-3, ckpt-2, ckpt-1.*move the directory"):
        exp.checkpointer.restore_for_training(exp.cfg.checkpoint)


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused_not_skipped(three_checkpoints, tmp_path):
    """Eval with other model settings: a clear error, no fallback, files untouched."""
    cfg, directory, _ = _copy_run(three_checkpoints, tmp_path)
    before = {f: os.path.getmtime(os.path.join(directory, f)) for f in os.listdir(directory)}
    exp = runtime.build(cfg.replace(mode="eval", width_multiplier=0.5))
    with pytest.raises(errors.RunError, match=r"ckpt-3' does not match the model.*"
                                               r"incompatible tensor.*config\.yaml"):
        exp.checkpointer.restore_for_training(exp.cfg.checkpoint)
    assert before == {f: os.path.getmtime(os.path.join(directory, f))
                      for f in os.listdir(directory)}


@pytest.mark.slow
def test_truncated_state_file_still_finds_the_checkpoints(three_checkpoints, tmp_path):
    cfg, directory, tensors = _copy_run(three_checkpoints, tmp_path)
    state = os.path.join(directory, "checkpoint")
    with open(state) as f:
        text = f.read()
    with open(state, "w") as f:
        f.write(text[: text.index("all_model_checkpoint_timestamps") + 10])  # cut mid-key
    assert tf.train.latest_checkpoint(directory) is None
    exp = runtime.build(cfg)
    assert "at step 3" in exp.checkpointer.restore_for_training(exp.cfg.checkpoint)
    _assert_session_holds(exp, tensors[3], tmp_path)


@pytest.mark.slow
def test_interrupted_save_leaves_the_previous_checkpoint_usable(three_checkpoints, tmp_path):
    """TF writes ckpt-N_temp/, renames the data to ckpt-N.data-*, writes ckpt-N.index
    and only then rewrites the state file atomically: a crash at any point leaves the
    previous checkpoint readable (a half-written index is tried and skipped)."""
    cfg, directory, tensors = _copy_run(three_checkpoints, tmp_path)
    temp = os.path.join(directory, "ckpt-4_temp")
    os.makedirs(temp)
    with open(os.path.join(temp, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(b"\0" * 100)  # killed while writing the shard
    with open(os.path.join(directory, "ckpt-5.data-00000-of-00001"), "wb") as f:
        f.write(b"\0" * 100)  # killed after renaming the data ...
    with open(os.path.join(directory, "ckpt-5.index"), "wb") as f:
        f.write(b"\0" * 10)  # ... while writing the index
    exp = runtime.build(cfg.replace(train_steps=4))
    assert "at step 3 (skipped unreadable ckpt-5)" in exp.checkpointer.restore_for_training(exp.cfg.checkpoint)
    runtime.train(exp)
    assert exp.step == 4
    assert not os.path.exists(temp)  # the orphaned temp dir is cleaned up
    state = tf.train.get_checkpoint_state(directory)
    assert os.path.basename(state.model_checkpoint_path) == "ckpt-4"


# ------------------------------------------------------------- nonfinite_policy=skip

def _nan_batches(exp, nan_at):
    """A training stream whose batch number ``nan_at`` (1-based) holds a NaN pixel."""
    cfg = exp.cfg
    from simclr_tf.data import pipeline
    ds, _ = pipeline.build_train_dataset(cfg.data, cfg.augment, cfg.train_batch_size)

    def poison(i, batch):
        views, labels = batch
        view1 = views["view1"]
        bad = tf.tensor_scatter_nd_update(view1, [[0, 3, 3, 0]], [float("nan")])
        return dict(views, view1=tf.where(i == nan_at - 1, bad, view1)), labels

    ds = ds.enumerate().map(poison)
    return lambda start: exp.strategy.experimental_distribute_dataset(ds)


@pytest.mark.slow
def test_skip_policy_skips_the_bad_step_and_counts_it(tmp_path):
    cfg = _cfg(tmp_path, nonfinite_policy="skip", train_steps=3, checkpoint_steps=3)
    os.makedirs(cfg.model_dir)
    exp = runtime.build(cfg)
    exp.train_dataset = _nan_batches(exp, nan_at=2)
    runtime.train(exp)
    log = run_dir_lib.read_train_log(cfg.model_dir)
    assert [e["step"] for e in log] == [1, 2, 3]
    assert [e["skipped_steps"] for e in log] == [0, 1, 0]
    assert np.isfinite(log[1]["loss"]) and log[1]["loss"] == 0.0  # nothing to average
    assert exp.step == 3
    for v in exp.model.weights:
        assert np.all(np.isfinite(np.asarray(v))), v.path


@pytest.mark.slow
def test_stop_policy_names_the_first_bad_step(tmp_path):
    cfg = _cfg(tmp_path, train_steps=4, checkpoint_steps=4, log_every_steps=4)
    os.makedirs(cfg.model_dir)
    exp = runtime.build(cfg)
    exp.train_dataset = _nan_batches(exp, nan_at=2)
    with pytest.raises(errors.RunError, match=r"Loss became nan at step 2\. .*none yet"):
        runtime.train(exp)
    assert not os.path.exists(os.path.join(cfg.model_dir, "checkpoints", "checkpoint"))


_SKIP_BODY = """
import json
import numpy as np
import keras
from simclr_tf import config as config_lib, optimizers, tasks
from simclr_tf.runtime import TaskModel

strategy = (tf.distribute.MirroredStrategy() if len(tf.config.list_logical_devices("CPU")) > 1
            else tf.distribute.get_strategy())
cfg = config_lib.resolve(None, dict(image_size=16, width_multiplier=0.25, proj_out_dim=16,
                                    nonfinite_policy="skip"))
keras.utils.set_random_seed(0)
with strategy.scope():
    model = TaskModel(tasks.build_model(cfg, 10), tasks.build_task("pretrain", cfg.loss),
                      nonfinite_policy="skip")
    opt = optimizers.build_optimizer("lars", 0.5, momentum=0.9, weight_decay=1e-4)
    model.compile(optimizer=opt)
    model(tf.zeros([1, 16, 16, 3]))
    opt.build(model.trainable_variables)

@tf.function
def step(batch):
    strategy.run(model.train_step, args=(batch,))

rng = np.random.default_rng(0)
x = rng.uniform(size=(8, 16, 16, 6)).astype("float32")
y = np.arange(8) % 10
x_bad = x.copy()
x_bad[7, 3, 3, 0] = np.nan  # on the last replica only (in its view 1)

def run(images):
    for m in model.metrics:
        m.reset_state()
    views = {"view1": images[..., :3], "view2": images[..., 3:]}
    ds = tf.data.Dataset.from_tensors((views, y))
    for batch in strategy.experimental_distribute_dataset(ds):
        step(batch)
    return {m.name: float(m.result()) for m in model.metrics if m.name in ("loss", "skipped_steps")}

def state():
    return [np.array(v.numpy()) for v in model.weights] + [
        np.array(v.numpy()) for v in opt.variables if "iteration" not in v.path]

first = run(x)
before = state()
skipped = run(x_bad)
after = state()
unchanged = all(np.array_equal(a, b) for a, b in zip(before, after))
second = run(x)
changed = not all(np.array_equal(a, b) for a, b in zip(after, state()))
print(json.dumps(dict(first=first, skipped=skipped, second=second, unchanged=unchanged,
                      changed=changed, iterations=int(opt.iterations.numpy()),
                      replicas=strategy.num_replicas_in_sync)))
"""


@pytest.mark.slow
def test_skip_policy_leaves_every_weight_unchanged_on_two_replicas():
    """One replica with a NaN input: every replica skips (weights, slots, BN stats).

    Two replicas take the cross-replica (merge_call) branch of the skip; the
    single-device branch runs in the Session tests above.
    """
    out = run_with_devices(_SKIP_BODY, n_devices=2)
    assert out["replicas"] == 2
    assert out["unchanged"] and out["changed"]
    assert out["iterations"] == 3  # a skipped step still consumes its batch
    assert out["skipped"] == {"loss": 0.0, "skipped_steps": 1.0}
    assert out["first"]["skipped_steps"] == 0.0 and np.isfinite(out["first"]["loss"])
    assert out["second"]["skipped_steps"] == 0.0
