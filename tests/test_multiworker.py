"""MultiWorkerMirroredStrategy from TF_CONFIG: two worker processes on loopback.

One scenario, run once and checked by the tests below. Each TF process start
costs 10-20 s of CI time, so it launches six processes in three rounds:

1. Two workers pretrain (worker 0 is the chief; worker 1 gets its own, empty
   model_dir so that anything it writes would show). After the first
   checkpoint worker 1 is SIGKILLed; the chief then fails by itself with a
   one-line "lost contact" error.
2. Both are restarted with worker 1 reading the chief's checkpoints (a
   symlink, standing in for shared storage) and periodic checkpoints off:
   they resume from the last checkpoint, and once they have trained past it,
   worker 1 alone gets SIGTERM (its VM is preempted). Both save at the same
   step and exit with status 143, so any new checkpoint is the preemption's.
3. Both are restarted again: they resume at the preemption's step, finish,
   evaluate, and the chief exports.

The reference losses of the first steps come from this (pytest) process: one
device on the same global batches (both workers' shards concatenated). The
refusal of workers that restore different steps is checked without a cluster,
on the collective's result.
"""

import json
import os
import signal

import numpy as np
import pytest

import subprocs

pytestmark = pytest.mark.slow

TOTAL_STEPS = 10
OVERRIDES = dict(train_split="train[:64]", eval_split="test[:256]", train_batch_size=16,
                 train_steps=TOTAL_STEPS, checkpoint_steps=3, log_every_steps=1,
                 optimizer="momentum", learning_rate=4.0, seed=3,
                 feature_linear_eval=False)
FLAGS = [f"--config={subprocs.SMOKE}", "--mode=train_then_eval"] + [
    f"--{k}={v}" for k, v in OVERRIDES.items()]
TIMEOUT = 900


def _start_cluster(root, name, model_dirs, flags=()):
    ports = subprocs.free_ports(2)
    return [subprocs.Child(FLAGS + list(flags) + [f"--model_dir={model_dirs[i]}"], root,
                           f"{name}{i}", env={"TF_CONFIG": subprocs.tf_config(ports, i)})
            for i in range(2)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cluster"))
    chief_dir, worker_dir = os.path.join(root, "chief"), os.path.join(root, "worker1")
    out = {"chief_dir": chief_dir, "worker_dir": worker_dir}
    children = []
    try:
        # 1. Train; kill worker 1 once step 4 is logged (checkpoint 3 exists).
        children = _start_cluster(root, "first", [chief_dir, worker_dir])
        subprocs.wait_until(
            lambda: any(s >= 4 for s in subprocs.logged_steps(chief_dir)),
            timeout=TIMEOUT, children=children)
        children[1].kill()
        out["worker_dir_after_kill"] = sorted(os.listdir(worker_dir))
        out["first_chief_rc"] = children[0].wait(timeout=300)
        out["first_chief_stderr"] = children[0].stderr
        out["killed_log"] = subprocs.read_log(chief_dir)
        killed_at = out["killed_log"][-1]["step"]

        # 2. Restart with the checkpoints shared and no periodic checkpoint
        #    (checkpoint_steps may change on resume); SIGTERM to worker 1 once
        #    the cluster has trained past the step the kill reached.
        os.symlink(os.path.join(chief_dir, "checkpoints"),
                   os.path.join(worker_dir, "checkpoints"))
        out["saved_before_sigterm"] = subprocs.checkpoint_steps(chief_dir)
        children = _start_cluster(root, "terminated", [chief_dir, worker_dir],
                                  ["--checkpoint_steps=100"])
        subprocs.wait_until(
            lambda: any(s > killed_at for s in subprocs.logged_steps(chief_dir)),
            timeout=TIMEOUT, children=children)
        children[1].proc.send_signal(signal.SIGTERM)
        out["terminated"] = [(c.wait(300), c.stdout, c.stderr) for c in children]
        out["saved_after_sigterm"] = subprocs.checkpoint_steps(chief_dir)

        # 3. Restart: resume at the preemption's step and finish.
        children = _start_cluster(root, "resumed", [chief_dir, worker_dir])
        out["resumed"] = [(c.wait(TIMEOUT), c.stdout, c.stderr) for c in children]
        for rc, stdout, stderr in out["resumed"]:
            assert rc == 0, f"exit {rc}\n{stdout[-2000:]}\n{stderr[-5000:]}"
    finally:
        subprocs.stop(children)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Losses of the first two steps in this process, on one device, on the same
    global batches (replica 0 = worker 0's shard, replica 1 = worker 1's)."""
    import keras
    import tensorflow as tf

    from simclr_tf import config as config_lib
    from simclr_tf import runtime
    from simclr_tf.data import pipeline
    from simclr_tf.runtime import steps as steps_lib

    model_dir = str(tmp_path_factory.mktemp("reference") / "run")
    cfg = config_lib.resolve(subprocs.SMOKE, dict(OVERRIDES, model_dir=model_dir))
    keras.utils.set_random_seed(cfg.seed)  # as run.py does before building the model
    exp = runtime.build(cfg)
    assert exp.strategy.num_replicas_in_sync == 1
    shards = [iter(pipeline.build_train_dataset(
        cfg.data, cfg.augment,
        pipeline.Shard(cfg.train_batch_size // 2, num_shards=2, shard_index=i))[0])
        for i in range(2)]
    metrics = steps_lib.train_metrics(exp.task.metric_names(exp.model))
    step = tf.function(steps_lib.make_train_step(exp.model, exp.task, exp.updates, metrics,
                                                 weight_decay=exp.weight_decay))
    logs = []
    for _ in range(2):
        parts = [next(it) for it in shards]
        views = {name: tf.concat([p[0][name] for p in parts], 0) for name in parts[0][0]}
        batch = (views, tf.concat([p[1] for p in parts], 0))
        for m in metrics.values():
            m.reset_state()
        step(batch)
        logs.append({name: float(m.result()) for name, m in metrics.items()
                     if name in ("loss", "contrast_loss", "contrast_acc")})
    return logs


def test_two_workers_compute_the_single_process_global_batch_loss(cluster, reference):
    """Negatives from both workers, synchronized BN, summed gradients (step 2)."""
    logged = {e["step"]: e for e in cluster["killed_log"]}
    for step, ref in enumerate(reference, start=1):
        for key, value in ref.items():
            np.testing.assert_allclose(logged[step][key], value, rtol=1e-4,
                                       err_msg=f"step {step} {key}")


def test_a_killed_worker_stops_the_chief_with_a_clear_message(cluster):
    assert cluster["first_chief_rc"] == 2
    err = cluster["first_chief_stderr"]
    assert "Lost contact with another worker" in err and "Restart every worker" in err
    assert "Traceback" not in err


def test_workers_that_restore_different_steps_refuse_to_train(monkeypatch):
    """Each worker sums (step, step**2, 1) over all replicas; unequal steps
    (a model_dir that is not shared) stop every worker with a RunError, which
    run.py prints as one line with exit status 2."""
    from simclr_tf import distribute, errors

    def worker(other_step):
        """This worker in a two-worker cluster whose other worker restored ``other_step``."""
        other = np.array([other_step, other_step ** 2, 1.0])
        monkeypatch.setattr(distribute, "num_workers", lambda strategy: 2)
        monkeypatch.setattr(distribute, "sum_over_replicas",
                            lambda strategy, values: np.array(values, np.float64) + other)
        return None  # the strategy: unused by the patched collectives

    for own, other in ((3, 0), (0, 3)):  # the chief resumed at 3; worker 1 saw nothing
        with pytest.raises(errors.RunError, match=rf"workers restored different steps "
                                                   rf"\(this worker: {own}, mean 1.5\).*"
                                                   "same --model_dir"):
            distribute.check_workers_agree(worker(other), own)
    distribute.check_workers_agree(worker(3), 3)  # agreeing: no error


def test_restarted_workers_resume_from_the_last_checkpoint(cluster):
    killed_at = cluster["killed_log"][-1]["step"]
    resumed_steps = []
    for _, _, stderr in cluster["terminated"]:
        line = stderr.split("resumed from ")[1].splitlines()[0]
        resumed_steps.append(int(line.split(" at step ")[1].split()[0]))
    assert resumed_steps[0] == resumed_steps[1]
    resumed_at = resumed_steps[0]
    assert resumed_at % 3 == 0 and 3 <= resumed_at <= killed_at
    log = subprocs.read_log(cluster["chief_dir"])
    assert [e["step"] for e in log] == list(range(1, TOTAL_STEPS + 1))
    # Steps the killed run had already done are redone identically.
    before = {e["step"]: e for e in cluster["killed_log"]}
    for entry in log:
        if entry["step"] in before:
            np.testing.assert_allclose(entry["loss"], before[entry["step"]]["loss"],
                                       rtol=1e-6, err_msg=str(entry["step"]))
    with open(os.path.join(cluster["chief_dir"], "result.json")) as f:
        assert json.load(f)["global_step"] == TOTAL_STEPS
    # The learning rate ends where an uninterrupted run's schedule ends.
    peak = 4.0 * 16 / 256
    last = (TOTAL_STEPS - 1) / TOTAL_STEPS
    assert log[-1]["lr"] == pytest.approx(peak * (1 + np.cos(np.pi * last)) / 2, rel=1e-5)


def test_only_the_chief_writes_results_and_scratch_is_removed(cluster):
    chief_files = set(os.listdir(cluster["chief_dir"]))
    assert {"checkpoints", "config.yaml", "result.json", "train_log.jsonl", "train",
            "eval", "saved_model"} <= chief_files
    assert not [f for f in chief_files if f.startswith("worker_")]
    # Worker 1 wrote nothing but scratch checkpoints, removed when it finished.
    assert cluster["worker_dir_after_kill"] == ["worker_1_tmp"]  # killed: left behind
    assert os.listdir(cluster["worker_dir"]) == ["checkpoints"]  # just the symlink
    chief_out, worker_out = cluster["resumed"][0][1], cluster["resumed"][1][1]
    assert "exported:" in chief_out and "exported:" not in worker_out
    assert "result: top1=" in worker_out  # it took part in the evaluation


def test_sigterm_to_one_worker_saves_on_both_and_the_cluster_resumes_there(cluster):
    # Both workers stop at the same step, with exit status 143 (SIGTERM).
    terminated = cluster["terminated"]
    assert [rc for rc, _, _ in terminated] == [143, 143], terminated[0][2][-3000:]
    new = sorted(set(cluster["saved_after_sigterm"]) - set(cluster["saved_before_sigterm"]))
    assert len(new) == 1, (cluster["saved_before_sigterm"], cluster["saved_after_sigterm"])
    stopped_at = new[0]
    assert cluster["killed_log"][-1]["step"] < stopped_at < TOTAL_STEPS
    for _, _, stderr in terminated:
        assert f"Stopped by SIGTERM at step {stopped_at} of {TOTAL_STEPS}" in stderr
    for rc, _, stderr in cluster["resumed"]:
        assert f"ckpt-{stopped_at} at step {stopped_at}" in stderr
    log = subprocs.read_log(cluster["chief_dir"])
    assert [e["step"] for e in log] == list(range(1, TOTAL_STEPS + 1))
