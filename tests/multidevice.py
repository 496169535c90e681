"""Run test code in a child process whose CPU is split into logical devices.

TensorFlow fixes its device list when it initialises, so a test that needs
``MirroredStrategy`` over two replicas on a CPU-only machine runs its body in a
child process that splits the CPU before anything else touches TF (forked by
``subprocs.start``: TensorFlow imported, not yet initialised). The body prints
one JSON document on its last stdout line; ``run_with_devices`` returns it.
"""

import json
import tempfile
import textwrap

import subprocs

_PRELUDE = """
import os
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range({n})])
"""


def run_with_devices(body, n_devices=2, timeout=900, env=None):
    """Runs ``body`` (Python source) with ``n_devices`` logical CPUs.

    Returns the JSON object the body printed on its last stdout line. Fails the
    calling test with the subprocess's stderr when it exits non-zero.
    """
    code = _PRELUDE.format(n=n_devices) + textwrap.dedent(body)
    with tempfile.TemporaryDirectory() as logs:
        child = subprocs.Child([], logs, "body", env=env, code=code)
        child.wait(timeout)  # fails the test, with the child's stderr, past the timeout
        if child.proc.returncode != 0:
            raise AssertionError(
                f"subprocess failed ({child.proc.returncode}):\n{child.stderr[-6000:]}")
        last = child.stdout.strip().splitlines()[-1]
    return json.loads(last)
