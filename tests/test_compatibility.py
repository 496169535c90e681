"""Runs written by simclr_tf 0.2 still load, and training reproduces them.

tests/fixtures/legacy_0_2/ was written by the code before the "one objective,
one file" redesign (its README has the commands). Loading its checkpoint and
``.keras`` file must give its recorded outputs, and rerunning its two trainings
(probe on augmented views, probe on a clean view) must give the same metrics at
every step and the same weights: bit for bit on a CPU with the instruction sets
it was recorded on, to float32 round-off elsewhere (oneDNN picks kernels by ISA).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config as config_lib
from simclr_tf import runtime
from simclr_tf.export import reader

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "legacy_0_2")


def _recorded_outputs():
    with np.load(os.path.join(FIXTURE, "outputs.npz")) as data:
        return {k: data[k] for k in data.files}


def _same_machine():
    with open(os.path.join(FIXTURE, "machine.json")) as f:
        recorded = json.load(f)
    flags = model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    return recorded == {"cpu": model, "isa": isa}


def _assert_equal(actual, expected, exact, what):
    if exact:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=1e-6, err_msg=what)


def _legacy_config(model_dir, **changes):
    return config_lib.resolve(os.path.join(FIXTURE, "config.yaml"),
                              dict(model_dir=str(model_dir), **changes))


def test_keras_file_of_0_2_loads_with_its_outputs():
    recorded = _recorded_outputs()
    model = reader.load_keras_model(os.path.join(FIXTURE, "simclr.keras"))
    outputs = model(recorded["images"], training=False)
    assert set(outputs) == set(recorded) - {"images"}
    for key, value in outputs.items():
        np.testing.assert_allclose(np.asarray(value), recorded[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)


def test_checkpoint_of_0_2_restores_into_todays_model(tmp_path):
    recorded = _recorded_outputs()
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    exp = runtime.build(_legacy_config(run, mode="eval"))
    exp.checkpointer.restore_finished("evaluate")
    assert exp.step == 6
    outputs = exp.model(recorded["images"], training=False)
    for key in ("final_avg_pool", "proj_head_output", "logits_sup"):
        np.testing.assert_allclose(np.asarray(outputs[key]), recorded[key], rtol=1e-5,
                                   atol=1e-6, err_msg=key)


_RERUN = textwrap.dedent("""
    import sys
    import keras
    from simclr_tf import config, runtime
    for log_name, model_dir, extra in ((sys.argv[2], sys.argv[3], {}),
                                       (sys.argv[4], sys.argv[5], {"probe_view": "clean"})):
        cfg = config.resolve(sys.argv[1], dict(model_dir=model_dir, mode="train", **extra))
        keras.utils.set_random_seed(cfg.seed)
        runtime.train(runtime.build(cfg))
""")


@pytest.mark.slow
def test_training_reproduces_the_runs_of_0_2(tmp_path):
    runs = [tmp_path / "augmented", tmp_path / "clean"]
    subprocess.run([sys.executable, "-c", _RERUN, os.path.join(FIXTURE, "config.yaml"),
                    "train_log.jsonl", str(runs[0]), "train_log_clean.jsonl", str(runs[1])],
                   check=True, timeout=600, capture_output=True)
    exact = _same_machine()
    for run, log_name in zip(runs, ("train_log.jsonl", "train_log_clean.jsonl")):
        with open(os.path.join(FIXTURE, log_name)) as f:
            expected = [json.loads(line) for line in f]
        with open(run / "train_log.jsonl") as f:
            actual = [json.loads(line) for line in f]
        assert [e["step"] for e in actual] == [e["step"] for e in expected]
        for new, old in zip(actual, expected):
            assert set(new) == set(old), (sorted(new), sorted(old))
            for key in old:
                if key != "time":
                    _assert_equal(new[key], old[key], exact, f"{log_name} step {old['step']} {key}")
    # Every variable of the step-6 checkpoint (model, optimizer slots, probe optimizer).
    old = tf.train.load_checkpoint(os.path.join(FIXTURE, "checkpoints", "ckpt-6"))
    new = tf.train.load_checkpoint(str(runs[0] / "checkpoints" / "ckpt-6"))
    old_keys = set(old.get_variable_to_shape_map())
    assert set(new.get_variable_to_shape_map()) == old_keys
    for key in sorted(old_keys):
        if key.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            continue
        _assert_equal(new.get_tensor(key), old.get_tensor(key), exact, key)
