"""Helpers for tests that run ``python -m simclr_tf.run`` in child processes,
or in the test's own process (:func:`main_in_process`, for what needs no
process of its own: flag and model_dir errors, short runs).

Children write stdout/stderr to files (no pipe can fill up and block them),
every wait is bounded, and :func:`stop` kills what is still running; tests
call it in a ``finally`` block.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")


class Child:
    """One ``simclr_tf.run`` process and the files holding its output."""

    def __init__(self, flags, log_dir, name, env=None):
        os.makedirs(log_dir, exist_ok=True)
        self.name = name
        self.stdout_path = os.path.join(log_dir, f"{name}.out")
        self.stderr_path = os.path.join(log_dir, f"{name}.err")
        full_env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        full_env.pop("TF_CONFIG", None)
        full_env.update(env or {})
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "simclr_tf.run", *flags], stdout=out, stderr=err,
                env=full_env, cwd=REPO)

    @property
    def stdout(self):
        with open(self.stdout_path) as f:
            return f.read()

    @property
    def stderr(self):
        with open(self.stderr_path) as f:
            return f.read()

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not finish within {timeout} s\n"
                                 f"{self.stderr[-4000:]}") from None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=60)

    def describe(self):
        return (f"{self.name}: exit {self.proc.poll()}\nstdout:\n{self.stdout[-2000:]}\n"
                f"stderr:\n{self.stderr[-5000:]}")


def run(flags, log_dir, name, timeout=900, env=None, check=True):
    """Runs one child to the end; returns it (``.proc.returncode``, ``.stderr``)."""
    child = Child(flags, log_dir, name, env=env)
    child.wait(timeout)
    if check and child.proc.returncode != 0:
        raise AssertionError(child.describe())
    return child


def main_in_process(*flags):
    """Runs ``python -m simclr_tf.run FLAGS`` in this process; returns its exit code.

    Parsed as ``app.run`` parses (a flag error prints and exits 1), after the
    flags of any earlier call are reset. Output goes to this process's
    stdout/stderr (``capsys``). Saves a TensorFlow start per call.
    """
    from absl import app
    from absl import flags as absl_flags

    from simclr_tf import run
    from simclr_tf.config.flags import define_flags

    define_flags()
    absl_flags.FLAGS.unparse_flags()
    try:
        app.run(run.main, argv=["simclr_tf.run", *flags])
    except SystemExit as e:
        return 0 if e.code is None else e.code
    return 0


def stop(children):
    for child in children:
        child.kill()


def wait_until(predicate, timeout, children=(), interval=0.05):
    """Polls ``predicate()`` until true; fails early if a child exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for child in children:
            if child.proc.poll() is not None:
                raise AssertionError("exited before the condition held:\n" + child.describe())
        time.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout} s")


def logged_steps(model_dir):
    """Steps logged so far in ``model_dir/train_log.jsonl`` (partial lines skipped)."""
    return [entry["step"] for entry in read_log(model_dir)]


def read_log(model_dir):
    path = os.path.join(model_dir, "train_log.jsonl")
    if not os.path.exists(path):
        return []
    entries = []
    with open(path) as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except ValueError:
                pass
    return entries


def checkpoint_steps(model_dir):
    """Steps of the checkpoints in ``model_dir/checkpoints`` (from the index files)."""
    return sorted(int(name[len("ckpt-"):-len(".index")])
                  for name in os.listdir(os.path.join(model_dir, "checkpoints"))
                  if name.endswith(".index"))


def free_ports(n):
    """``n`` distinct TCP ports that were free a moment ago on localhost."""
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("localhost", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    """TF_CONFIG of worker ``index`` in a cluster of workers on ``ports``."""
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def unprivileged_user():
    """"" when not root (run as ourselves), else an unprivileged user's name, else None."""
    import pwd

    if os.geteuid() != 0:
        return ""
    for name in ("nobody", "nfsnobody", "daemon"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None
