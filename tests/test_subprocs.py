"""The forked children of tests/subprocs.py behave as new interpreters would.

Most process-starting tests fork their ``simclr_tf.run`` children from a
server that imported TensorFlow once; these checks hold that harness to what
``subprocess`` gives a fresh interpreter: the exit status, the environment,
the working directory and TMPDIR of the child, and an uninitialised
TensorFlow (the child still chooses its devices).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import subprocs

pytestmark = pytest.mark.slow

_STATUS = textwrap.dedent("""
    import json, os, sys, tempfile
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 3)  # fails once initialised
    print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "mark": os.environ.get("MARK"),
                      "home": os.environ.get("HOME"), "tmp": tempfile.gettempdir(),
                      "devices": len(tf.config.list_logical_devices("CPU"))}))
    sys.exit(int(sys.argv[1]))
""")


def _both(tmp_path, source, argv, env):
    """(forked, fresh): the same code run by subprocs.start and by a new interpreter."""
    out = {}
    for how in ("forked", "fresh"):
        stdout, stderr = tmp_path / f"{how}.out", tmp_path / f"{how}.err"
        if how == "forked":
            proc = subprocs.start(("code", source), argv, env, str(tmp_path), str(stdout),
                                  str(stderr))
        else:
            with open(stdout, "w") as o, open(stderr, "w") as e:
                proc = subprocess.Popen([sys.executable, "-c", source, *argv], stdout=o,
                                        stderr=e, env=env, cwd=str(tmp_path))
        code = proc.wait(300)
        out[how] = (code, stdout.read_text(), stderr.read_text())
    return out


def test_a_forked_child_has_its_own_argv_environment_directory_and_devices(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = dict(subprocs.child_env(), MARK="child", TMPDIR=str(scratch))
    env.pop("HOME", None)
    out = _both(tmp_path, _STATUS, ["3", "--flag=x"], env)
    for how, (code, stdout, stderr) in out.items():
        assert code == 3, (how, stderr[-3000:])
        printed = stdout.strip().splitlines()[-1]
        assert printed == out["fresh"][1].strip().splitlines()[-1], how
    status = json.loads(out["forked"][1].strip().splitlines()[-1])
    assert status == {"argv": ["3", "--flag=x"], "cwd": str(tmp_path), "mark": "child",
                      "home": None, "tmp": str(scratch), "devices": 3}


def test_exit_status_of_an_exception_a_message_and_a_kill(tmp_path):
    env = subprocs.child_env()
    raised = _both(tmp_path, "raise ValueError('boom')", [], env)
    for how, (code, _, stderr) in raised.items():
        assert code == 1, how
        assert "ValueError: boom" in stderr, (how, stderr)
    message = _both(tmp_path, "import sys; sys.exit('refused: why and the fix')", [], env)
    for how, (code, _, stderr) in message.items():
        assert code == 1 and stderr.strip().endswith("refused: why and the fix"), (how, stderr)
    proc = subprocs.start(("code", "import time; time.sleep(600)"), [], env, str(tmp_path),
                          str(tmp_path / "k.out"), str(tmp_path / "k.err"))
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert proc.returncode == -signal.SIGKILL


def test_the_entry_point_child_runs_the_command_line(tmp_path):
    """``Child`` runs ``simclr_tf.run``'s flags (a flag error: exit 1, absl's message)."""
    child = subprocs.run(["--train_batch_size=-4", f"--model_dir={tmp_path / 'run'}"],
                         str(tmp_path), "cli", check=False)
    assert child.proc.returncode != 0
    assert "train_batch_size" in child.stderr
    assert not (tmp_path / "run").exists()
    assert os.path.exists(child.stdout_path)
