"""Crash consistency: SIGKILL at seeded random points of export, convert and checkpoint save.

After every kill the model_dir restores to the previous state or the new
one, never a mix (the SavedModel's and the .keras file's weights agree,
checkpoints restore with the weights they were saved with), no temporary
file of the dead process is left once the next process has run, and the
next command succeeds. The short version runs 16 kills; the slow one
``SIMCLR_TF_FAULT_KILLS`` (default 60) kills.

The operations run in children forked from a server (this file run as a
program), started once per test; it imports TensorFlow and simclr_tf (seconds on a
loaded machine), then reads one JSON command per line from stdin, forks a
child for each (which builds its model and runs the operation, dying at the
chosen point) and answers one JSON line: ``{"killed": bool, "exit": int,
"ops": int}``. Children write their output to ``log`` files, never to the
server's stdout.

Kill points: ``kill_at=N`` kills the child just before its N-th file-system
operation (rename, remove, rmtree, makedirs, copy, opening a file for
writing, through ``tf.io.gfile``, which every writer of simclr_tf uses);
``kill_after=S`` kills it S seconds after it is ready (checkpoint saves run
in TensorFlow's C++ code, out of reach of the hooks). ``nonatomic`` makes
every rename a copy then a delete, file by file for a directory (as on
``gs://``), and :func:`simclr_tf.files.renames_are_atomic` False, so the
object-store code paths run on the local disk.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")
IMAGE_SIZE = 8


def value(gen):
    """The value every weight of generation ``gen`` holds."""
    return np.float32(0.001 * gen)


def fill(model, gen):
    for w in model.weights:
        w.assign(np.full(w.shape, value(gen), w.dtype))


def tiny_network(gen):
    """A small Keras network with the outputs the export writer expects."""
    import keras
    inputs = keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3])
    x = keras.layers.BatchNormalization()(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, {"final_avg_pool": keras.layers.Dense(4)(x)})
    fill(model, gen)
    return model


def smoke_model(model_dir, gen=None):
    """The smoke config's SimCLR model, with an SGD optimizer (for checkpoints)."""
    import keras
    from simclr_tf import config as config_lib
    from simclr_tf import tasks
    cfg = config_lib.resolve(SMOKE, {"model_dir": model_dir})
    model = tasks.build_model(cfg, 10)
    model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]), training=False)
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    if gen is not None:
        fill(model, gen)
    return cfg, model, optimizer


# ------------------------------------------------------------- the hooks
class Hooks:
    """Counts ``tf.io.gfile`` writes; kills the process at the ``kill_at``-th."""

    def __init__(self, kill_at=None, nonatomic=False):
        from simclr_tf import files
        self.kill_at, self.ops = kill_at, 0
        self._saved = {}
        self._files = files
        real = {name: getattr(tf.io.gfile, name) for name in
                ("rename", "remove", "rmtree", "makedirs", "copy", "GFile")}
        self.real = real

        def counted(name):
            def call(*args, **kwargs):
                self.tick()
                return real[name](*args, **kwargs)
            return call

        def gfile(path, mode="r"):
            if any(c in mode for c in "wa"):
                self.tick()
            return real["GFile"](path, mode)

        patches = {name: counted(name) for name in ("remove", "rmtree", "makedirs", "copy")}
        patches["GFile"] = gfile
        patches["rename"] = self.copy_delete_rename if nonatomic else counted("rename")
        for name, fn in patches.items():
            self._saved[(tf.io.gfile, name)] = getattr(tf.io.gfile, name)
            setattr(tf.io.gfile, name, fn)
        if nonatomic:
            self._saved[(files, "renames_are_atomic")] = files.renames_are_atomic
            files.renames_are_atomic = lambda path: False

    def tick(self):
        self.ops += 1
        if self.kill_at is not None and self.ops >= self.kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def _copy_object(self, src, dst):
        # An object store's copy: the target appears whole or not at all.
        self.tick()
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        shutil.copyfile(src, dst + ".copying")
        os.replace(dst + ".copying", dst)

    def copy_delete_rename(self, src, dst, overwrite=False):
        """``rename`` as on gs://: each object copied, then deleted."""
        if not os.path.exists(src):
            raise tf.errors.NotFoundError(None, None, f"{src} not found")
        if os.path.exists(dst) and not overwrite and not os.path.isdir(src):
            raise tf.errors.AlreadyExistsError(None, None, f"{dst} exists")
        if not os.path.isdir(src):
            self._copy_object(src, dst)
            self.tick()
            os.remove(src)
            return
        objects = []
        for root, _, names in os.walk(src):
            objects += [os.path.join(root, n) for n in sorted(names)]
        for path in objects:
            self._copy_object(path, dst + path[len(src):])
        for path in objects:
            self.tick()
            os.remove(path)
        shutil.rmtree(src)  # the "directory" is gone with its last object

    def restore(self):
        for (owner, name), fn in self._saved.items():
            setattr(owner, name, fn)


# ------------------------------------------------------------ operations
def run_export(cmd):
    from simclr_tf.export import writer
    network = tiny_network(cmd["gen"])
    hooks = Hooks(cmd.get("kill_at"), cmd.get("nonatomic", False))
    writer.export_model(network, cmd["model_dir"], IMAGE_SIZE)
    return hooks.ops


def run_convert(cmd):
    from simclr_tf import convert
    from simclr_tf.export import writer
    cfg, model, _ = smoke_model(cmd["model_dir"], cmd["gen"])
    network = tiny_network(cmd["gen"])
    export = writer.export_model
    # The converted model's export, with the tiny network in its place: a real
    # SavedModel and .keras pair in a tenth of the time.
    convert.writer = type("W", (), {"export_model": staticmethod(
        lambda _model, path, _size: export(network, path, IMAGE_SIZE))})
    hooks = Hooks(cmd.get("kill_at"), cmd.get("nonatomic", False))
    convert.write_run_dir(cfg, model, cmd["model_dir"])
    return hooks.ops


def run_checkpoints(cmd, ready):
    from simclr_tf.runtime.checkpointer import Checkpointer
    from simclr_tf.runtime.run_dir import RunDir
    _, model, optimizer = smoke_model(cmd["model_dir"])
    ckpt = Checkpointer(model, optimizer, RunDir(cmd["model_dir"]), keep_max=2)
    ckpt.resume()
    ckpt.remove_orphaned_temp()
    step = ckpt.step
    os.write(ready, b"r")
    for _ in range(cmd.get("saves", 1000)):
        step += 1
        fill(model, step)
        optimizer.iterations.assign(step)
        ckpt.save(step)
        with open(cmd["progress"], "a") as f:
            f.write(f"{step}\n")
    return 0


def child(cmd, ready):
    if cmd["kind"] == "export":
        return run_export(cmd)
    if cmd["kind"] == "convert":
        return run_convert(cmd)
    return run_checkpoints(cmd, ready)


def serve():
    # Imported here, before any fork: the children start with them loaded.
    import keras  # noqa: F401
    from simclr_tf import convert  # noqa: F401
    from simclr_tf.export import writer  # noqa: F401
    from simclr_tf.runtime import checkpointer  # noqa: F401
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            log = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = 0
            try:
                ops = child(cmd, write_fd)
                with open(cmd["log"] + ".ops", "w") as f:
                    f.write(str(ops))
            except BaseException:  # noqa: BLE001 - reported through the log
                import traceback
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        os.close(write_fd)
        if cmd.get("kill_after") is not None:
            if os.read(read_fd, 1):  # the child is ready
                time.sleep(cmd["kill_after"])
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _, status = os.waitpid(pid, 0)
        os.close(read_fd)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        ops = None
        if os.path.exists(cmd["log"] + ".ops"):
            with open(cmd["log"] + ".ops") as f:
                ops = int(f.read())
            os.remove(cmd["log"] + ".ops")
        print(json.dumps({"killed": killed, "ops": ops,
                          "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1}),
              flush=True)


# ------------------------------------------------------------ the tests
# (run in the pytest process; everything above also runs in the server)
def _server_env():
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3",
                KERAS_BACKEND="tensorflow")


class Server:
    """The fork server (this file as a program), driven one JSON line at a time."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.count = 0
        self.err_path = os.path.join(tmp, "server.err")
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True, env=_server_env(), cwd=REPO)
        self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            with open(self.err_path) as f:
                raise AssertionError(f"the fork server died:\n{f.read()[-4000:]}")
        return json.loads(line)

    def run(self, **cmd):
        self.count += 1
        cmd["log"] = os.path.join(self.tmp, f"child{self.count}.log")
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        out["log"] = cmd["log"]
        if not out["killed"] and out["exit"] != 0:
            with open(cmd["log"]) as f:
                raise AssertionError(f"{cmd}: exit {out['exit']}\n{f.read()[-4000:]}")
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=60)


class _Recovery:
    """Runs the recovery as the next process would: on a non-atomic store, with its renames."""

    def __init__(self, nonatomic):
        self.nonatomic = nonatomic

    def __enter__(self):
        self.hooks = Hooks(None, nonatomic=True) if self.nonatomic else None

    def __exit__(self, *exc):
        if self.hooks is not None:
            self.hooks.restore()


def _values(arrays):
    out = set()
    for array in arrays:
        if np.issubdtype(array.dtype, np.floating):
            out.update(np.unique(array).tolist())
    return out


def _saved_model_values(path):
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    return _values(reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                   if name != "_CHECKPOINTABLE_OBJECT_GRAPH")


def _keras_values(path):
    import io
    import zipfile

    import h5py
    arrays = []
    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(data), "r") as h5:
        h5.visititems(lambda _, obj: arrays.append(obj[()])
                      if isinstance(obj, h5py.Dataset) else None)
    return _values(arrays)


def _generation(values, gens):
    """The generation whose weight value ``values`` holds (one value), else fails."""
    matches = [g for g in gens if values == {float(value(g))}]
    assert matches, f"weights {sorted(values)[:5]} are of none of the generations {gens}"
    return matches[0]


def _export_generation(model_dir, gens, extra=()):
    """The generation of model_dir's export pair; fails on a mix, a missing half or leftovers."""
    names = sorted(os.listdir(model_dir))
    assert names == sorted(["saved_model", "simclr.keras", *extra]), names
    sm = _generation(_saved_model_values(os.path.join(model_dir, "saved_model")), gens)
    keras_gen = _generation(_keras_values(os.path.join(model_dir, "simclr.keras")), gens)
    assert sm == keras_gen, f"saved_model/ of generation {sm}, simclr.keras of {keras_gen}"
    return sm


def _export_trials(server, root, rng, kills, nonatomic):
    from simclr_tf.errors import NotSimCLRExportError
    from simclr_tf.export import reader, writer
    model_dir = os.path.join(root, "export-" + ("fake-gcs" if nonatomic else "local"))
    gen = 1
    total = server.run(kind="export", model_dir=model_dir, gen=gen,
                       nonatomic=nonatomic)["ops"]
    current, survived = _export_generation(model_dir, [gen]), 0
    for _ in range(kills):
        gen += 1
        out = server.run(kind="export", model_dir=model_dir, gen=gen, nonatomic=nonatomic,
                         kill_at=rng.randint(1, total))
        assert out["killed"], out
        if writer.interrupted_export(model_dir):  # readers refuse a half-replaced pair
            with pytest.raises(NotSimCLRExportError, match="interrupted"):
                reader.find_saved_model(model_dir)
        with _Recovery(nonatomic):
            writer.recover(model_dir)
        current = _export_generation(model_dir, [current, gen])
        survived += 1
    # The next export succeeds, and both halves load.
    gen += 1
    server.run(kind="export", model_dir=model_dir, gen=gen, nonatomic=nonatomic)
    assert _export_generation(model_dir, [gen]) == gen
    import keras
    x = np.ones([1, IMAGE_SIZE, IMAGE_SIZE, 3], np.float32)
    saved_model = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
    served = saved_model.serve(x)
    loaded = keras.models.load_model(os.path.join(model_dir, "simclr.keras"))
    np.testing.assert_allclose(served["final_avg_pool"], loaded(x)["final_avg_pool"],
                               rtol=1e-6)
    return survived


def _converted_generation(model_dir):
    """The generation of a complete converted run dir (checkpoint and export agree)."""
    from simclr_tf import config as config_lib
    names = sorted(os.listdir(model_dir))
    assert names == ["checkpoints", "config.yaml", "saved_model", "simclr.keras"], names
    config_lib.load_yaml(os.path.join(model_dir, "config.yaml"))
    prefix = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(prefix)
    weights = _values(reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                      if name.startswith("weights/"))
    assert len(weights) == 1, weights
    gen = round(weights.pop() / float(value(1)))
    assert _export_generation(model_dir, [gen], ("checkpoints", "config.yaml")) == gen
    return gen


def _convert_trials(server, root, rng, kills, nonatomic):
    from simclr_tf import convert
    parent = os.path.join(root, "convert-" + ("fake-gcs" if nonatomic else "local"))
    os.makedirs(parent)
    runs, gen = 0, 1

    def model_dir():
        return os.path.join(parent, f"run{runs}")

    total = server.run(kind="convert", model_dir=model_dir(), gen=gen,
                       nonatomic=nonatomic)["ops"]
    assert _converted_generation(model_dir()) == gen
    runs += 1
    survived = 0
    for _ in range(kills):
        gen += 1
        out = server.run(kind="convert", model_dir=model_dir(), gen=gen,
                         nonatomic=nonatomic, kill_at=rng.randint(1, total))
        assert out["killed"], out
        with _Recovery(nonatomic):
            convert.recover(model_dir())
        assert not [n for n in os.listdir(parent) if "convert-tmp" in n], os.listdir(parent)
        if os.path.exists(model_dir()) and os.listdir(model_dir()):
            assert _converted_generation(model_dir()) == gen  # complete: the next reads it
            runs += 1
        # else: nothing was written; the next trial converts into the same model_dir
        survived += 1
    gen += 1
    server.run(kind="convert", model_dir=model_dir(), gen=gen, nonatomic=nonatomic)
    assert _converted_generation(model_dir()) == gen
    return survived


_CHECKPOINT_FILE = re.compile(r"checkpoint|ckpt-\d+\.(index|data-\d{5}-of-\d{5})")


def _checkpoint_trials(server, root, rng, kills):
    from simclr_tf.runtime.checkpointer import Checkpointer
    from simclr_tf.runtime.run_dir import RunDir
    model_dir = os.path.join(root, "checkpoints-run")
    progress = os.path.join(root, "saved_steps")
    _, model, optimizer = smoke_model(model_dir)

    def saved():
        if not os.path.exists(progress):
            return 0
        with open(progress) as f:
            return int(f.read().split()[-1])

    survived = 0
    for _ in range(kills):
        out = server.run(kind="checkpoint", model_dir=model_dir, progress=progress,
                         kill_after=rng.uniform(0.0, 1.5))
        assert out["killed"], out
        last = saved()
        ckpt = Checkpointer(model, optimizer, RunDir(model_dir), keep_max=2)
        ckpt.remove_orphaned_temp()  # what the next run does first
        directory = os.path.join(model_dir, "checkpoints")
        left = [n for n in os.listdir(directory) if not _CHECKPOINT_FILE.fullmatch(n)]
        assert not left, left
        ckpt.resume()
        assert ckpt.step in (last, last + 1), (ckpt.step, last)
        if ckpt.step:
            assert _values(w.numpy() for w in model.weights) == {float(value(ckpt.step))}
        survived += 1
    last = saved()
    server.run(kind="checkpoint", model_dir=model_dir, progress=progress, saves=2)
    assert saved() >= last + 2
    return survived


def _fault_injection(tmp_path, kills, seed):
    """Runs ``kills`` kills split over the operations; returns {operation: kills survived}."""
    rng = random.Random(seed)
    share = {"export-local": 0.2, "export-fake-gcs": 0.2, "convert-local": 0.15,
             "convert-fake-gcs": 0.15}
    plan = {k: max(1, round(kills * v)) for k, v in share.items()}
    plan["checkpoint"] = max(1, kills - sum(plan.values()))
    server = Server(str(tmp_path))
    try:
        survived = {
            "export-local": _export_trials(server, str(tmp_path), rng,
                                           plan["export-local"], False),
            "export-fake-gcs": _export_trials(server, str(tmp_path), rng,
                                              plan["export-fake-gcs"], True),
            "convert-local": _convert_trials(server, str(tmp_path), rng,
                                             plan["convert-local"], False),
            "convert-fake-gcs": _convert_trials(server, str(tmp_path), rng,
                                                plan["convert-fake-gcs"], True),
            "checkpoint": _checkpoint_trials(server, str(tmp_path), rng,
                                             plan["checkpoint"]),
        }
    finally:
        server.close()
    print(f"kills survived: {sum(survived.values())} {survived}")
    assert survived == plan
    return survived


@pytest.mark.slow
def test_sigkill_at_random_points_of_export_convert_and_checkpoint_save(tmp_path):
    _fault_injection(tmp_path, kills=16, seed=0)


@pytest.mark.slow
@pytest.mark.soak
def test_sigkill_many_times(tmp_path):
    kills = int(os.environ.get("SIMCLR_TF_FAULT_KILLS", "60"))
    _fault_injection(tmp_path, kills=kills, seed=int(os.environ.get("SIMCLR_TF_FAULT_SEED",
                                                                    "1")))


if __name__ == "__main__":
    serve()
