"""Run test code in a fresh Python process whose CPU is split into logical devices.

TensorFlow fixes its device list when it initialises, so a test that needs
``MirroredStrategy`` over two replicas on a CPU-only machine runs its body in a
subprocess that splits the CPU before anything else touches TF. The body prints
one JSON document on its last stdout line; ``run_with_devices`` returns it.
"""

import json
import os
import subprocess
import sys
import textwrap

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
    full_env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env["PYTHONPATH"] = repo + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        timeout=timeout, env=full_env)
    if proc.returncode != 0:
        raise AssertionError(
            f"subprocess failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)
