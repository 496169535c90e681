"""Helpers for tests that run ``python -m simclr_tf.run`` in child processes,
or in the test's own process (:func:`main_in_process`, for what needs no
process of its own: flag and model_dir errors, short runs).

Children write stdout/stderr to files (no pipe can fill up and block them),
every wait is bounded, and :func:`stop` kills what is still running; tests
call it in a ``finally`` block.

Children are forked from a server process that has imported TensorFlow and
``simclr_tf.run`` once (:func:`start`; ``multiprocessing``'s forkserver, one
per pytest process): each child then runs the console script's entry point
(``simclr_tf.run:run``, what ``python -m simclr_tf.run`` calls) with its own
argv, environment, working directory and output files, and exits with the
interpreter's status (``sys.exit`` codes, 1 on an uncaught exception,
``-signal`` when killed), but skips the ~4 s of CPU each fresh process spends
importing TensorFlow. The server never initialises TensorFlow (no device, no
thread pool), so a child still chooses its devices (``multidevice.py``) and
reads ``TF_CONFIG``. What a fork cannot show (the import itself: environment
variables TensorFlow reads when imported, a missing module of an installed
copy) is tested with ``fresh=True`` (a new interpreter), as is one run per
entry point (``tests/test_cli.py``'s shared run, the installed-package smoke
of ``.ci/run``).
"""

import atexit
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")


class Child:
    """One ``simclr_tf.run`` process and the files holding its output."""

    def __init__(self, flags, log_dir, name, env=None, fresh=False, code=None):
        """``code``: Python source to run instead of the entry point (as
        ``python -c code FLAGS``), e.g. one that patches a module first."""
        os.makedirs(log_dir, exist_ok=True)
        self.name = name
        self.stdout_path = os.path.join(log_dir, f"{name}.out")
        self.stderr_path = os.path.join(log_dir, f"{name}.err")
        full_env = child_env()
        full_env.pop("TF_CONFIG", None)
        full_env.update(env or {})
        if fresh:
            program = ["-c", code] if code else ["-m", "simclr_tf.run"]
            with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
                self.proc = subprocess.Popen([sys.executable, *program, *flags], stdout=out,
                                             stderr=err, env=full_env, cwd=REPO)
        else:
            what = ("code", code) if code else ("entry_point", None)
            self.proc = start(what, flags, full_env, REPO, self.stdout_path, self.stderr_path)

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


def run(flags, log_dir, name, timeout=900, env=None, check=True, fresh=False):
    """Runs one child to the end; returns it (``.proc.returncode``, ``.stderr``)."""
    child = Child(flags, log_dir, name, env=env, fresh=fresh)
    child.wait(timeout)
    if check and child.proc.returncode != 0:
        raise AssertionError(child.describe())
    return child


def child_env():
    """This process's environment for a child: the checkout importable, TF quiet."""
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")


# ------------------------------------------------------------ forked children
_PRELOAD = ("tensorflow", "simclr_tf.run")


class Forked:
    """A forked child, with the parts of ``subprocess.Popen`` the tests use."""

    def __init__(self, process, what):
        self._process = process
        self.args = what
        self.pid = process.pid

    @property
    def returncode(self):
        return self._process.exitcode

    def poll(self):
        return self._process.exitcode

    def wait(self, timeout=None):
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, sig):
        if self._process.exitcode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # exited a moment ago
                pass

    def kill(self):
        self.send_signal(signal.SIGKILL)


def start(what, argv, env, cwd, stdout_path, stderr_path):
    """Forks a child that runs ``what`` with ``argv``; returns its :class:`Forked`.

    ``what``: ``("entry_point", None)`` runs ``simclr_tf.run:run`` (as
    ``python -m simclr_tf.run``); ``("code", source)`` runs Python source as
    ``python -c`` would (``__name__ == "__main__"``). ``env`` replaces the
    child's whole environment.
    """
    for path in (stdout_path, stderr_path):  # there to read as soon as this returns
        open(path, "w").close()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(_PRELOAD))
    process = context.Process(target=_forked_main,
                              args=(what, list(argv), dict(env), cwd, stdout_path, stderr_path),
                              name=f"forked {what[0]}", daemon=True)
    process.start()
    return Forked(process, [what[0], *argv])


def _forked_main(what, argv, env, cwd, stdout_path, stderr_path):
    """In the forked child: become the process ``start`` describes, then run."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        target = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    tempfile.tempdir = None  # read TMPDIR of this environment
    kind, source = what
    try:
        if kind == "entry_point":
            sys.argv = ["simclr_tf.run", *argv]
            from simclr_tf import run as entry

            entry.run()
        else:
            sys.argv = ["-c", *argv]
            exec(compile(source, "<string>", "exec"), {"__name__": "__main__"})
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends children with os._exit
        sys.stdout.flush()
        sys.stderr.flush()


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
