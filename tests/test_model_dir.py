"""A model_dir is the user's work: commands other than training leave its config alone."""

import os
import subprocess
import sys

import pytest

SMOKE = ["--config=smoke", "--train_steps=2", "--checkpoint_steps=2", "--feature_linear_eval=false",
         "--knn_eval=false"]


@pytest.mark.slow
def test_eval_and_export_read_the_run_as_trained(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert _main("--mode=train", f"--model_dir={run}", *SMOKE) == 0
    # Training does not export; a first export with the run's settings does.
    assert _main("--mode=export", f"--model_dir={run}", *SMOKE) == 0
    capsys.readouterr()
    before = _snapshot(run)
    # Settings the run was not trained with: refused in one line, nothing written
    # (was: exit 0, config.yaml rewritten; then an export at 24 px replaced the run's).
    for mode, flags, named in (
            ("eval", ("--temperature=0.9", "--learning_rate=0.05"),
             ("learning_rate: 2.0 -> 0.05", "temperature: 0.2 -> 0.9")),
            ("export", ("--image_size=24",), ("image_size: 16 -> 24",))):
        code = _main(f"--mode={mode}", f"--model_dir={run}", *SMOKE, *flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert all(n in err[0] for n in named), err[0]
        assert f"--config={os.path.join(run, 'config.yaml')}" in err[0]
        assert _snapshot(run) == before
    # Where and how to evaluate may differ.
    assert _main("--mode=eval", f"--model_dir={run}", *SMOKE, "--eval_split=test[:64]",
                 "--eval_batch_size=32") == 0
    with open(os.path.join(run, "result.json")) as f:
        assert json.load(f)["eval_split"] == "test[:64]"
    with open(os.path.join(run, "config.yaml")) as f:
        saved = f.read()
    assert "temperature: 0.2" in saved and "mode: train\n" in saved and "eval_split: test[:500]" in saved
    # The original training command still resumes (here: finds the run finished).
    assert _main("--mode=train", f"--model_dir={run}", *SMOKE) == 0


import errno  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import subprocs  # noqa: E402
from simclr_tf.errors import Preempted, RunError  # noqa: E402
from simclr_tf.runtime import run_dir as run_dir_lib  # noqa: E402
from simclr_tf.runtime.run_dir import LOCK, RunDir, data_identity  # noqa: E402

FOLDER = ["--dataset=image_folder", "--train_split=train", "--eval_split=train", "--image_size=8",
          "--train_batch_size=4", "--eval_batch_size=8", "--proj_out_dim=8", "--warmup_epochs=0",
          "--train_steps=2", "--checkpoint_steps=2", "--log_every_steps=1",
          "--feature_linear_eval=false", "--knn_eval=false"]


_main = subprocs.main_in_process


def _folder(root, n=6, extra=0):
    for c, cls in enumerate(("cats", "dogs")):
        d = root / "train" / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n + (extra if c == 0 else 0)):
            pixels = np.random.default_rng(10 * c + i).integers(0, 256, (12, 12, 3), np.uint8)
            Image.fromarray(pixels).save(d / f"img{i}.png")
    return root


def _snapshot(root):
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = fh.read()
    return out


def _fake_run(path, identity=None):
    """A model_dir holding what a run leaves: config.yaml, a checkpoint, maybe data.json."""
    os.makedirs(os.path.join(path, "checkpoints"))
    with open(os.path.join(path, "config.yaml"), "w") as f:
        f.write(f"mode: train\ntrain_mode: pretrain\nmodel_dir: {path}\n")
    open(os.path.join(path, "checkpoints", "ckpt-2.index"), "w").close()
    if identity is not None:
        with open(os.path.join(path, "data.json"), "w") as f:
            json.dump(identity, f)
    return RunDir(path)


def _write_lock(path, **holder):
    record = {"host": socket.gethostname(), "pid": 0, "started_at": "2026-01-01T00:00:00"}
    record.update(holder)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, LOCK), "w") as f:
        json.dump(record, f)
    return os.path.join(path, LOCK)


# ------------------------------------------------------------------- the lock

def test_the_lock_names_its_holder_and_goes_when_released(tmp_path):
    path = str(tmp_path / "new" / "run")
    lock = RunDir(path).lock(command=["simclr_tf.run", "--mode=train"])
    with open(os.path.join(path, LOCK)) as f:
        holder = json.load(f)
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert holder["started_at"] and holder["command"] == "simclr_tf.run --mode=train"
    lock.release()
    lock.release()  # idempotent
    assert not os.path.exists(path)  # the directory it made, empty: removed again


def test_a_live_holder_on_this_host_refuses_a_second_run(tmp_path, caplog):
    path = str(tmp_path / "run")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(path, pid=sleeper.pid, pid_start=run_dir_lib._start_ticks(sleeper.pid),
                    boot_id=run_dir_lib._boot_id())
        before = _snapshot(path)
        with pytest.raises(RunError, match=rf"in use by another simclr_tf run \(pid "
                                           rf"{sleeper.pid} on host .*Wait for it to end"):
            RunDir(path).lock()
        assert _snapshot(path) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    with caplog.at_level(logging.WARNING):  # its holder is gone: taken over
        lock = RunDir(path).lock()
    assert f"pid {sleeper.pid} on this host, is gone" in caplog.text
    with open(os.path.join(path, LOCK)) as f:
        assert json.load(f)["pid"] == os.getpid()
    lock.release()
    assert os.listdir(path) == []


def test_a_reused_pid_or_a_reboot_does_not_keep_a_lock(tmp_path):
    path = str(tmp_path / "run")
    parent = os.getppid()  # alive, but started before the lock's recorded start
    _write_lock(path, pid=parent, pid_start=-1)
    RunDir(path).lock().release()
    _write_lock(path, pid=parent, boot_id="another-boot")
    RunDir(path).lock().release()
    _write_lock(path, pid=os.getpid())  # e.g. a restarted container's PID 1
    RunDir(path).lock().release()
    assert not os.path.exists(os.path.join(path, LOCK))


def test_a_lock_from_another_host_is_taken_over_only_when_not_refreshed(tmp_path):
    path = str(tmp_path / "run")
    lock_file = _write_lock(path, host="elsewhere", pid=4242)
    with pytest.raises(RunError, match=r"pid 4242 on host elsewhere.*if that run is gone, "
                                       r"delete the lock file"):
        RunDir(path).lock()
    old = time.time() - run_dir_lib.LOCK_STALE_SECONDS - 60
    os.utime(lock_file, (old, old))
    RunDir(path).lock().release()


def test_a_damaged_lock_file_is_refused_while_fresh_and_taken_over_when_old(tmp_path):
    path = str(tmp_path / "run")
    os.makedirs(path)
    lock_file = os.path.join(path, LOCK)
    open(lock_file, "w").close()  # a run killed while writing it, or writing it now
    with pytest.raises(RunError, match="being taken by another simclr_tf run right now"):
        RunDir(path).lock()
    os.utime(lock_file, (time.time() - 120,) * 2)
    RunDir(path).lock().release()


def test_the_holder_refreshes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(run_dir_lib, "LOCK_HEARTBEAT_SECONDS", 0.05)
    path = str(tmp_path / "run")
    lock = RunDir(path).lock()
    try:
        old = time.time() - 3600
        os.utime(os.path.join(path, LOCK), (old, old))
        deadline = time.time() + 10
        while os.stat(os.path.join(path, LOCK)).st_mtime < old + 60 and time.time() < deadline:
            time.sleep(0.05)
        assert os.stat(os.path.join(path, LOCK)).st_mtime > time.time() - 60
    finally:
        lock.release()


def _holding(path, seen, then=None):
    """A stand-in for a training or evaluation step that records the lock while it runs."""
    def step(exp):
        with open(os.path.join(path, LOCK)) as f:
            seen.append(json.load(f)["pid"])
        if then is not None:
            then()
        return {"top1": 0.0, "top5": 0.0, "global_step": 0}
    return step


@pytest.mark.parametrize("stop", ["preempted", "error", "sigterm_in_eval"])
def test_the_run_holds_the_lock_and_releases_it_however_it_ends(tmp_path, monkeypatch, stop):
    from simclr_tf import runtime

    path = str(tmp_path / "run")
    seen = []

    def preempted():
        raise Preempted("Stopped by SIGTERM at step 1 of 2; saved ckpt-1.")

    def error():
        raise RunError("Weights diverged.")

    if stop == "sigterm_in_eval":  # outside the loop's own handler
        monkeypatch.setattr(runtime, "train", lambda exp: None)
        monkeypatch.setattr(runtime, "evaluate", _holding(
            path, seen, lambda: os.kill(os.getpid(), signal.SIGTERM)))
        expected = 143
    else:
        monkeypatch.setattr(runtime, "train", _holding(
            path, seen, preempted if stop == "preempted" else error))
        expected = 143 if stop == "preempted" else 2
    previous = signal.getsignal(signal.SIGTERM)
    code = _main("--config=smoke", "--mode=train_then_eval", f"--model_dir={path}")
    assert code == expected and seen == [os.getpid()]
    assert not os.path.exists(os.path.join(path, LOCK))
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_run_on_a_model_dir_in_use_is_refused_in_one_line(tmp_path, capsys):
    path = str(tmp_path / "run")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(path, pid=sleeper.pid, pid_start=run_dir_lib._start_ticks(sleeper.pid))
        code = _main("--config=smoke", "--mode=train", f"--model_dir={path}")
    finally:
        sleeper.kill()
        sleeper.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"pid {sleeper.pid}" in err[0]
    assert os.listdir(path) == [LOCK]  # no config.yaml, nothing else


# ------------------------------------------------------- a directory of the user's

def test_a_directory_of_other_files_is_refused_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    (path / "config.yaml").write_text("learning_rate: 3\n")  # another tool's
    (path / "train_log.jsonl").write_text('{"mine": 1}\n')
    before = _snapshot(path)
    code = _main("--config=smoke", "--mode=train", f"--model_dir={path}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "holds files but no simclr_tf run (config.yaml, notes.txt, train_log.jsonl)" in err[0]
    assert "Pass an empty or new --model_dir." in err[0] and "--overwrite" in err[0]
    assert _snapshot(path) == before


@pytest.mark.slow
def test_overwrite_writes_into_a_directory_of_other_files_and_leaves_the_others(tmp_path):
    path = tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    (path / "config.yaml").write_text("learning_rate: 3\n")  # another tool's
    assert _main("--mode=train", f"--model_dir={path}", *SMOKE, "--overwrite") == 0
    assert (path / "notes.txt").read_text() == "precious"
    assert "temperature: 0.2" in (path / "config.yaml").read_text()  # replaced by the run's
    assert RunDir(str(path)).has_checkpoint()
    # Now it is a run: the same command resumes it without --overwrite.
    assert _main("--mode=train", f"--model_dir={path}", *SMOKE) == 0


def test_new_empty_and_own_directories_are_accepted(tmp_path):
    RunDir(str(tmp_path / "new")).check_is_run_or_empty()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("")
    (tmp_path / "empty" / LOCK).write_text("")
    (tmp_path / "empty" / "worker_1_tmp").mkdir()
    RunDir(str(tmp_path / "empty")).check_is_run_or_empty()
    run = _fake_run(str(tmp_path / "run"))
    (tmp_path / "run" / "notes.txt").write_text("mine, beside the run")
    run.check_is_run_or_empty()
    assert run.run_files() == ["config.yaml", "checkpoints/"]
    (tmp_path / "result_only").mkdir()
    (tmp_path / "result_only" / "result.json").write_text('{"top1": 0.5, "global_step": 3}')
    RunDir(str(tmp_path / "result_only")).check_is_run_or_empty()


# ------------------------------------------------------------ the data's identity

def test_the_fingerprint_follows_the_files_not_the_folder(tmp_path):
    a = _folder(tmp_path / "a")
    shutil.copytree(a, tmp_path / "moved")
    first = data_identity("image_folder", "train", str(a), 12)
    moved = data_identity("image_folder", "train", str(tmp_path / "moved"), 12)
    assert first["fingerprint"] == moved["fingerprint"] and first["files"] == 12
    assert first["fingerprint_of"] == "paths and sizes"
    (tmp_path / "moved" / "train" / "dogs" / "img0.png").write_bytes(b"\0" * 10)
    changed = data_identity("image_folder", "train", str(tmp_path / "moved"), 12)
    assert changed["fingerprint"] != first["fingerprint"]
    os.rename(tmp_path / "a" / "train" / "cats" / "img0.png",
              tmp_path / "a" / "train" / "cats" / "renamed.png")
    assert data_identity("image_folder", "train", str(a), 12)["fingerprint"] != (
        first["fingerprint"])
    tfds_like = data_identity("cifar10", "train", None, 50000)
    assert tfds_like["fingerprint"] is None and tfds_like["num_examples"] == 50000


def test_a_resume_on_other_data_is_refused_with_the_way_out(tmp_path):
    a = _folder(tmp_path / "a")
    old = data_identity("image_folder", "train", str(a), 12)
    run = _fake_run(str(tmp_path / "run"), old)
    run.check_data(data_identity("image_folder", "train", str(a), 12))
    shutil.copytree(a, tmp_path / "moved")  # moved, same files: resumes
    run.check_data(data_identity("image_folder", "train", str(tmp_path / "moved"), 12))
    _folder(tmp_path / "b", extra=1)
    with pytest.raises(RunError, match=r"trained on other data \(12 -> 13 examples; it started "
                                       r"on image_folder split 'train', 12 examples, data_dir "
                                       r".*rerun with the original data.*new --model_dir with "
                                       r"--checkpoint="):
        run.check_data(data_identity("image_folder", "train", str(tmp_path / "b"), 13))
    (tmp_path / "moved" / "train" / "dogs" / "img0.png").write_bytes(b"\0" * 10)
    with pytest.raises(RunError, match="same number of images, but other file names or sizes"):
        run.check_data(data_identity("image_folder", "train", str(tmp_path / "moved"), 12))
    with pytest.raises(RunError, match=r"split 'train' -> 'train\[:50%\]'"):
        run.check_data(data_identity("image_folder", "train[:50%]", str(a), 12))


def test_a_resume_on_another_tfds_version_is_refused(tmp_path):
    old = data_identity("cifar10", "train", None, 50000, version="3.0.2")
    assert old["version"] == "3.0.2"
    run = _fake_run(str(tmp_path / "run"), old)
    run.check_data(data_identity("cifar10", "train", "/elsewhere", 50000, version="3.0.2"))
    with pytest.raises(RunError, match=r"other data \(TFDS version 3.0.2 -> 4.0.0; it started "
                                       r"on cifar10 3.0.2 split 'train', 50000 examples"):
        run.check_data(data_identity("cifar10", "train", None, 50000, version="4.0.0"))


def test_a_run_from_before_data_json_resumes_with_a_warning(tmp_path, caplog):
    run = _fake_run(str(tmp_path / "run"))  # no data.json
    with caplog.at_level(logging.WARNING):
        run.check_data(data_identity("offline_shapes", "train", None, 10000))
    assert "training data was not recorded" in caplog.text
    new = RunDir(str(tmp_path / "new"))  # no checkpoint: nothing to compare
    new.check_data(data_identity("offline_shapes", "train", None, 10000))


@pytest.mark.slow
def test_training_records_the_data_and_refuses_to_resume_on_other_images(tmp_path, capsys):
    a = _folder(tmp_path / "a")
    run = str(tmp_path / "run")
    assert _main(*FOLDER, f"--data_dir={a}", "--mode=train", f"--model_dir={run}") == 0
    with open(os.path.join(run, "data.json")) as f:
        recorded = json.load(f)
    assert recorded["num_examples"] == 12 and recorded["data_dir"] == str(a)
    assert recorded["fingerprint"] == data_identity("image_folder", "train", str(a), 12)[
        "fingerprint"]
    assert not os.path.exists(os.path.join(run, LOCK))
    before = _snapshot(run)
    b = _folder(tmp_path / "b", extra=1)
    capsys.readouterr()
    code = _main(*FOLDER, f"--data_dir={b}", "--mode=train", "--train_steps=4",
                 f"--model_dir={run}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "12 -> 13 examples" in err[0], err
    assert _snapshot(run) == before
    shutil.move(str(a), str(tmp_path / "moved"))  # the same files elsewhere: resumes
    assert _main(*FOLDER, f"--data_dir={tmp_path / 'moved'}", "--mode=train",
                 "--train_steps=4", f"--model_dir={run}") == 0
    with open(os.path.join(run, "data.json")) as f:
        assert json.load(f)["data_dir"] == str(tmp_path / "moved")
    assert sorted(os.path.basename(p) for p in os.listdir(os.path.join(run, "checkpoints"))
                  if p.endswith(".index")) == ["ckpt-2.index", "ckpt-4.index"]


@pytest.mark.slow
def test_two_processes_on_one_model_dir(tmp_path):
    """A second real process is refused while the first trains; SIGTERM releases the lock."""
    import subprocs

    run = str(tmp_path / "run")
    lock_file = os.path.join(run, LOCK)
    first = subprocs.Child([f"--config={subprocs.SMOKE}", "--mode=train", "--train_steps=400",
                            "--checkpoint_steps=400", f"--model_dir={run}"], str(tmp_path), "first")
    try:
        subprocs.wait_until(lambda: os.path.exists(os.path.join(run, "config.yaml")), 300, [first])
        with open(lock_file) as f:
            assert json.load(f)["pid"] == first.proc.pid
        second = subprocs.run([f"--config={subprocs.SMOKE}", "--mode=train",
                               f"--model_dir={run}"], str(tmp_path), "second", timeout=300,
                              check=False)
        lines = second.stderr.strip().splitlines()
        assert second.proc.returncode == 2, second.describe()
        assert f"in use by another simclr_tf run (pid {first.proc.pid}" in lines[-1]
        assert "Traceback" not in second.stderr
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait(300) == 143, first.describe()
        assert not os.path.exists(lock_file)
    finally:
        subprocs.stop([first])


# ------------------------------------------------------------------ a full disk

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("what", ["result.json", "config.yaml", "data.json", "train_log"])
def test_a_full_disk_while_writing_the_runs_files_is_one_line(tmp_path, monkeypatch, what):
    from simclr_tf import config as config_lib

    run = RunDir(str(tmp_path / "run"))
    run.makedirs()
    monkeypatch.setattr(run_dir_lib.files, "atomic_write", _no_space)
    monkeypatch.setattr(config_lib, "save_yaml", _no_space)
    monkeypatch.setattr(run_dir_lib, "open", _no_space, raising=False)
    write = {"result.json": lambda: run.write_result({"top1": 0.5}),
             "config.yaml": lambda: run.write_config(None),
             "data.json": lambda: run.write_data({"dataset": "offline_shapes"}),
             "train_log": lambda: run.train_log(0).write(1, {"loss": 1.0})}[what]
    with pytest.raises(RunError, match=r"Could not write .*no space left on device; .*Free "
                                       r"disk space"):
        write()


def test_a_full_disk_during_an_export_is_one_line(tmp_path, monkeypatch):
    """Was: 'Export to ... failed (OSError: [Errno 28] ...)', without the fix."""
    import types

    from simclr_tf.runtime import loop

    monkeypatch.setattr(loop.writer, "export_model", _no_space)
    exp = types.SimpleNamespace(model=None, run_dir=RunDir(str(tmp_path / "run")),
                                cfg=types.SimpleNamespace(image_size=16))
    with pytest.raises(RunError, match=r"Could not write the export .*saved_model.*no space "
                                       r"left on device; any previous export there is "
                                       r"unchanged\. Free disk space"):
        loop.export(exp)


@pytest.mark.slow
def test_a_full_disk_when_taking_the_lock_is_one_line(tmp_path, monkeypatch, capsys):
    """The lock is the first write of a run (was: 'Pass a writable --model_dir')."""
    monkeypatch.setattr(RunDir, "lock", _no_space)
    path = tmp_path / "run"
    code = _main("--config=smoke", "--mode=train", f"--model_dir={path}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "no space left on device; nothing of the run was written. Free disk space" in err[0]
    assert not path.exists() or os.listdir(path) == []


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_last(tmp_path,
                                                                             monkeypatch):
    import keras
    import tensorflow as tf

    from simclr_tf.runtime.checkpointer import Checkpointer

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    run = RunDir(str(tmp_path / "run"))
    run.makedirs()
    ckpt = Checkpointer(model, optimizer, run)
    first = ckpt.save(1)

    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(RunError, match=r"Could not write the checkpoint .*ckpt-2.*previous "
                                       r"checkpoint .*ckpt-1.* is kept"):
        ckpt.save(2)
    assert ckpt.latest == first
    assert sorted(os.listdir(run.checkpoints)) == sorted(
        ["checkpoint", "ckpt-1.index", "ckpt-1.data-00000-of-00001"])
