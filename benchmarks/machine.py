"""The machine: CPU model and flags, TF version, measured matmul/conv GFLOP/s.

The conv and matmul rates are the denominators of the train step's fraction
of peak: they are what TensorFlow (oneDNN on x86) reaches on this machine for
dense float32/bfloat16 work, measured in the same process as the step.
"""

import os
import platform

import keras
import tensorflow as tf

from benchmarks import common

FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                     "amx_tile", "amx_bf16", "amx_int8")
PRECISIONS = {"float32": tf.float32, "bfloat16": tf.bfloat16}


def cpu_info():
    info = {"model": platform.processor() or "unknown", "flags": {}, "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            info["model"] = value.strip()
        elif key == "flags":
            flags = set(value.split())
            info["flags"] = {name: name in flags for name in FLAGS_OF_INTEREST}
            break
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def _onednn_active():
    """Whether TF runs its oneDNN kernels (TF_ENABLE_ONEDNN_OPTS or TF's CPU check)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def _rate(fn, flops, repeats):
    stats = common.summary(*common.timed(fn, repeats, warmup=2))
    per_cpu_s = flops / stats["cpu_min_s"] / 1e9
    return {"gflops_best": flops / stats["min_s"] / 1e9,
            "gflops_median": flops / stats["median_s"] / 1e9,
            "gflops_per_cpu_s": per_cpu_s,
            "gflops_idle_estimate": per_cpu_s * common.cores(), **stats}


def matmul_rate(n, dtype, repeats):
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    f = tf.function(lambda: tf.matmul(a, b))
    return _rate(lambda: f().numpy(), 2 * n**3, repeats)


def conv_rate(batch, size, channels, dtype, repeats):
    x = tf.cast(tf.random.normal([batch, size, size, channels]), dtype)
    w = tf.cast(tf.random.normal([3, 3, channels, channels]) * 0.05, dtype)
    f = tf.function(lambda: tf.nn.conv2d(x, w, 1, "SAME"))
    flops = 2 * batch * size * size * 9 * channels * channels
    return _rate(lambda: f().numpy(), flops, repeats)


def run(smoke=False, precisions=("float32", "bfloat16"), repeats=None):
    repeats = repeats or (3 if smoke else 7)
    n = 256 if smoke else 2048
    # 3x3 convolutions of ResNet-18 (CIFAR stem) block groups 1-3, batch 2x64 views.
    shapes = [(16, 16, 32)] if smoke else [(128, 32, 64), (128, 16, 128), (128, 8, 256)]
    result = {
        "cpu": cpu_info(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "onednn_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"),
        "onednn_active": _onednn_active(),
        "cpu_allocator_bfc": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "unset"),
        "cores_used": common.cores(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "matmul": {}, "conv3x3": {},
    }
    for name in precisions:
        dtype = PRECISIONS[name]
        mm = matmul_rate(n, dtype, repeats)
        result["matmul"][name] = {"n": n, **mm}
        convs = []
        for batch, size, channels in shapes:
            convs.append({"batch": batch, "size": size, "channels": channels,
                          **conv_rate(batch, size, channels, dtype, repeats)})
        best = max(convs, key=lambda c: c["gflops_best"])
        result["conv3x3"][name] = {
            "gflops_best": best["gflops_best"],
            "gflops_median": max(c["gflops_median"] for c in convs),
            "gflops_per_cpu_s": max(c["gflops_per_cpu_s"] for c in convs),
            "gflops_idle_estimate": max(c["gflops_idle_estimate"] for c in convs),
            "shapes": convs}
    if "float32" in result["conv3x3"] and "bfloat16" in result["conv3x3"]:
        result["bf16_over_fp32"] = {
            "conv3x3": result["conv3x3"]["bfloat16"]["gflops_best"]
            / result["conv3x3"]["float32"]["gflops_best"],
            "matmul": result["matmul"]["bfloat16"]["gflops_best"]
            / result["matmul"]["float32"]["gflops_best"]}
    return result


def peak(machine, precision, key="gflops_best"):
    """Measured conv3x3 rate for ``precision`` (``key``: wall or per CPU-s), or None."""
    try:
        return machine["conv3x3"][precision][key]
    except (KeyError, TypeError):
        return None
