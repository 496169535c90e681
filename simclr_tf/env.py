"""Process settings for the command-line entry points, chosen before TensorFlow loads.

Importing ``simclr_tf`` changes nothing in the environment: a library must
not. The entry points (``python -m simclr_tf.run``, ``simclr_tf.convert``,
``simclr_tf.study``, ``simclr_tf.views``) call :func:`tune_for_cli` first,
before they import anything that imports TensorFlow.

oneDNN CPU kernels: TF 2.21 turns its oneDNN kernels on only for the CPUs it
selects (on the 2-core AMD EPYC with AVX2 of BENCHMARKS.md it left them off).
Without them, TF's own convolution input gradient ran 6x slower than the
forward convolution on ResNet-18's 4x4x512 feature maps, and the whole
float32 pretraining step needed 1.47x the CPU time it needs with oneDNN. So on
x86-64 Linux CPUs with AVX2 and FMA this module sets
``TF_ENABLE_ONEDNN_OPTS=1`` unless the variable is already set (set it to 0
to opt out) and TensorFlow has not been imported yet. On CPUs that TF already
enables oneDNN for, this changes nothing.

bfloat16 on such CPUs: without native bfloat16 instructions (AVX512-BF16 or
AMX-BF16) a bfloat16 step is many times slower than float32 (with or without
oneDNN); :func:`cpu_has_native_bf16` lets the trainer warn about it.

TensorFlow's start-up noise: importing TensorFlow prints 3-6 lines from its
C++ logging (``oneDNN custom operations are on``, ``Could not find cuda
drivers``, ``cpu_feature_guard``) and the first device use on a machine
without a GPU one more (``failed call to cuInit``), before every one-line
error of the command-line tools. :func:`quiet_tensorflow_start` sets
``TF_CPP_MIN_LOG_LEVEL=3`` (TF's C++ INFO, WARNING and ERROR log lines off;
Python exceptions, Python warnings and the absl/Python logging of our modules
are unaffected) unless the user set the variable, and imports TensorFlow with
the process's stderr held back, to drop the lines TensorFlow prints before
that setting takes effect. Whatever else the import prints is passed on. Set
``TF_CPP_MIN_LOG_LEVEL=0`` to see everything again.
"""

import os
import platform
import re
import sys
import tempfile

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
# A line of absl's C++ log: severity letter, date, time (before absl::InitializeLog
# 00:00:<epoch seconds>), thread id, file:line].
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d+:\d+:\d+\.\d+\s+\d+ [^\s\]]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# The second line of cpu_feature_guard's start-up message.
_CONTINUATIONS = ("To enable the following instructions:",)


def cpu_flags():
    """The flag set of the first CPU in /proc/cpuinfo (empty when unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16():
    """Whether the CPU has bfloat16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def prefer_onednn():
    """Sets TF_ENABLE_ONEDNN_OPTS=1 on x86-64 Linux with AVX2+FMA (see above).

    Returns True when it set the variable.
    """
    if ONEDNN_ENV in os.environ or "tensorflow" in sys.modules:
        return False
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    if not {"avx2", "fma"} <= cpu_flags():
        return False
    os.environ[ONEDNN_ENV] = "1"
    return True


def tune_for_cli():
    """What an entry point sets before TensorFlow is imported.

    oneDNN on AVX2 CPUs (:func:`prefer_onednn`), and TF's BFC allocator for
    host tensors (read at the first TF op): the default allocator hands large
    tensors back to the OS and faults them in again every step, which cost
    ~14% of a CPU training step (BENCHMARKS.md). ``TF_CPU_ALLOCATOR_USE_BFC=false``
    opts out. Then TensorFlow is imported without its start-up noise
    (:func:`quiet_tensorflow_start`). Each leaves a variable the user already set alone.
    """
    prefer_onednn()
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    quiet_tensorflow_start()


def drop_start_up_lines(text, min_level=3):
    """``text`` (what importing TensorFlow printed) without its C++ log lines below ``min_level``.

    ``min_level`` as ``TF_CPP_MIN_LOG_LEVEL``: 1 drops INFO, 2 also WARNING,
    3 also ERROR (FATAL lines are kept). absl's "before InitializeLog"
    preamble and the known continuation of a dropped line go with them;
    everything else (Python warnings, tracebacks, other programs' text) stays.
    """
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        match = _ABSL_LINE.match(line)
        if match:
            dropping = "IWEF".index(match.group(1)) < min_level
        elif line.startswith(_ABSL_PREAMBLE):
            dropping = min_level > 0
        else:
            dropping = dropping and line.startswith(_CONTINUATIONS)
        if not dropping:
            kept.append(line)
    return "".join(kept)


def quiet_tensorflow_start():
    """Sets ``TF_CPP_MIN_LOG_LEVEL=3`` and imports TensorFlow without its start-up lines.

    Does nothing when the user set ``TF_CPP_MIN_LOG_LEVEL`` (they asked for
    those lines) or TensorFlow is imported already. Returns True when it
    imported TensorFlow. During the import, file descriptor 2 points at a
    temporary file (the C++ lines bypass ``sys.stderr``); what the import
    printed besides the start-up lines is written to stderr afterwards, also
    when the import fails.
    """
    if LOG_LEVEL_ENV in os.environ or "tensorflow" in sys.modules:
        return False
    os.environ[LOG_LEVEL_ENV] = "3"
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: import as it is
        import tensorflow  # noqa: F401
        return True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            held.seek(0)
            rest = drop_start_up_lines(held.read().decode("utf-8", "replace"))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()
    return True
