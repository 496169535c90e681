"""NT-Xent forward+backward time and peak memory versus the global batch.

Each batch size runs in its own subprocess (``python -m benchmarks.loss_scaling
--batch=B``) so that the peak memory of one size is not hidden by another's.
The peak is the rise of TensorFlow's allocator peak over the memory in use
before the call (``tf.config.experimental.get_memory_info("CPU:0")``, which
works when the BFC allocator serves the CPU: ``TF_CPU_ALLOCATOR_USE_BFC=true``,
the benchmarks' and the CLI's default). With the system allocator TF has no
statistics for ``CPU:0``; the peak is then the rise of the process's
resident-set high-water mark (``VmHWM`` in ``/proc/self/status``, reset
through ``/proc/self/clear_refs`` just before the call) over the resident set
before it. The logits are ``[2B, 2B]`` float32, so the memory grows as
``B^2``.
"""

import argparse
import json
import os
import subprocess
import sys

BATCHES = (256, 512, 1024, 2048, 4096, 8192)
SMOKE_BATCHES = (256, 512)


def _status_kb(key):
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(batch, dim, repeats, temperature=0.1):
    """Runs in the worker process: returns the measurements of one size."""
    import tensorflow as tf

    from benchmarks import common
    from simclr_tf import losses

    z1 = tf.random.normal([batch, dim])
    z2 = z1 + 0.1 * tf.random.normal([batch, dim])

    @tf.function
    def fwd_bwd(z1, z2):
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            loss, _, _ = losses.nt_xent_loss(z1, z2, temperature)
        return loss, tape.gradient(loss, [z1, z2])

    fwd_bwd.get_concrete_function(z1, z2)  # trace before measuring memory
    method = "tf.config.experimental.get_memory_info"
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        common.sync(fwd_bwd(z1, z2))
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        peak_mb = (peak - before) / 2**20
    except (ValueError, tf.errors.OpError):
        method = "VmHWM - VmRSS (clear_refs reset)"
        rss = _status_kb("VmRSS")
        if not _reset_peak():
            method = "VmHWM - VmRSS (no reset: upper bound of the import peak)"
        common.sync(fwd_bwd(z1, z2))
        peak_mb = (_status_kb("VmHWM") - rss) / 1024
    stats = common.summary(*common.timed(lambda: common.sync(fwd_bwd(z1, z2)), repeats,
                                         warmup=0))
    logits_mb = (2 * batch) ** 2 * 4 / 2**20
    return {"batch_size": batch, "dim": dim, "fwd_bwd_s": stats["median_s"],
            "times_s": stats["times_s"], "cpu_s": stats["cpu_median_s"],
            "peak_mb": peak_mb, "logits_mb": logits_mb,
            "peak_over_logits": peak_mb / logits_mb, "memory_method": method,
            "load_average": common.load_average()}


def run(batches=BATCHES, dim=128, repeats=3, one_process=False, log=print):
    """Measures each batch size in a fresh subprocess (``one_process``: all in one)."""
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        TF_CPP_MIN_LOG_LEVEL="3")
    groups = [list(batches)] if one_process else [[b] for b in batches]
    for group in groups:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.loss_scaling",
             f"--batch={','.join(map(str, group))}", f"--dim={dim}",
             f"--repeats={repeats}"],
            capture_output=True, text=True, cwd=root, env=env, check=False)
        if proc.returncode != 0:
            rows.extend({"batch_size": b, "error": proc.stderr.strip()[-2000:]}
                        for b in group)
            log(f"  NT-Xent B={group}: failed")
            continue
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            rows.append(row)
            log(f"  NT-Xent B={row['batch_size']}: {row['fwd_bwd_s'] * 1e3:.1f} ms, "
                f"peak {row['peak_mb']:.0f} MB")
    return {"rows": rows}


def _main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", required=True, help="comma-separated sizes")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps([measure(int(b), args.dim, args.repeats)
                      for b in args.batch.split(",")]))


if __name__ == "__main__":
    _main()
