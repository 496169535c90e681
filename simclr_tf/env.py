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
"""

import os
import platform
import sys

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


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
    opts out. Both leave a variable the user already set alone.
    """
    prefer_onednn()
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
