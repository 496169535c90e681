"""The tf.distribute side of a run: the strategy, datasets and worker agreement.

Strategy order: TPU when ``use_tpu`` (``tpu_name="local"`` on a TPU VM such as Colab's);
``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one task;
``MirroredStrategy`` when more than one GPU is visible; otherwise the default
strategy (one device).
"""

import json
import os

import tensorflow as tf
from absl import logging

from simclr_tf import env
from simclr_tf.errors import ConfigError, RunError


def _multi_worker_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}); unset it or fix it.") from None
    cluster = tf_config.get("cluster", {})
    tasks = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    return tf_config if tasks > 1 else None


def get_strategy(use_tpu=False, tpu_name=None):
    """Returns the strategy for this process (see the module docstring)."""
    if use_tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_name or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        logging.info("TPU devices: %s", tf.config.list_logical_devices("TPU"))
        return tf.distribute.TPUStrategy(resolver)
    if _multi_worker_config() is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """True on the process that writes results and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and (
        "chief" not in resolver.cluster_spec().as_dict())


def num_workers(strategy):
    """Worker processes taking part in ``strategy`` (1 unless multi-worker)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return strategy.extended._num_workers  # no public accessor in TF 2.21
    return 1


def is_tpu(strategy):
    return isinstance(strategy, (tf.distribute.TPUStrategy,
                                 tf.distribute.experimental.TPUStrategy))


def resolve_jit_compile(setting, strategy):
    """Whether to XLA-compile the per-replica training step.

    ``"true"``/``"false"`` force it. ``"auto"`` turns it on for one GPU
    replica only: on CPU XLA measured slower than the oneDNN kernels (see
    BENCHMARKS.md), Keras 3 itself leaves it off under multi-replica
    strategies, and a TPU compiles the whole step with XLA anyway.
    """
    if setting in ("true", "false"):
        return setting == "true"
    if is_tpu(strategy):
        return False
    return bool(tf.config.list_logical_devices("GPU")) and (
        strategy.num_replicas_in_sync == 1)


def warn_slow_precision(precision, strategy):
    """Warns when a 16-bit precision runs where it is slower than float32.

    bfloat16 on a CPU without bfloat16 arithmetic; float16 on a CPU or TPU
    (it is for GPUs without bfloat16 tensor cores: T4, V100).
    """
    if precision == "float16" and not tf.config.list_logical_devices("GPU"):
        logging.warning(
            "--precision=float16 without a GPU: float16 pays on GPUs without bfloat16 "
            "(T4, V100); on %s use --precision=%s.",
            "a TPU" if is_tpu(strategy) else "a CPU",
            "bfloat16" if is_tpu(strategy) else "float32")
        return
    if precision != "bfloat16" or is_tpu(strategy) or tf.config.list_logical_devices("GPU"):
        return
    if not env.cpu_has_native_bf16():
        logging.warning(
            "--precision=bfloat16 on a CPU without AVX512-BF16 or AMX-BF16: the step "
            "is several times slower than float32 here (see BENCHMARKS.md). Use "
            "--precision=float32 on this machine.")


def distribute_dataset(strategy, make, global_batch, skip_steps=0):
    """Distributes ``make(batch, num_shards, shard_index, skip_batches) -> (ds, info)``.

    On one worker the dataset yields global batches that the strategy splits
    over the replicas, so every replica count sees the same data. On several
    workers each builds its own shard with per-replica batches (with several
    replicas per worker, epoch ends may then fall inside a step; resuming
    stays deterministic).
    """
    if num_workers(strategy) == 1:
        ds, _ = make(global_batch, 1, 0, skip_steps)
        return strategy.experimental_distribute_dataset(ds)

    def dataset_fn(ctx):
        local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        ds, _ = make(ctx.get_per_replica_batch_size(global_batch),
                     ctx.num_input_pipelines, ctx.input_pipeline_id,
                     skip_steps * local_replicas)
        return ds
    return strategy.distribute_datasets_from_function(dataset_fn)


def sum_over_replicas(strategy, values):
    """``values`` (floats) summed over all replicas: a collective on every worker."""

    def replica_fn():
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.constant(values, tf.float64))

    per_replica = tf.function(lambda: strategy.run(replica_fn))()
    return strategy.experimental_local_results(per_replica)[0].numpy()


def any_worker(strategy, flag):
    """Whether ``flag`` is true on any worker (a collective on several workers)."""
    if num_workers(strategy) == 1:
        return bool(flag)
    return sum_over_replicas(strategy, [1.0 if flag else 0.0])[0] > 0


def sync_workers(strategy):
    """Returns when every worker has called it (no-op on one worker)."""
    if num_workers(strategy) > 1:
        sum_over_replicas(strategy, [1.0])


def check_workers_agree(strategy, step):
    """Stops when workers restored different steps (an unshared model_dir)."""
    if num_workers(strategy) == 1:
        return
    total, total_sq, n = sum_over_replicas(strategy, [step, step * step, 1.0])
    if total * total != total_sq * n:  # exact for integer steps < 2**26
        raise RunError(
            f"The workers restored different steps (this worker: {step}, mean "
            f"{total / n:g}). All workers must read the chief's checkpoints: put "
            "model_dir on storage every machine sees (GCS, NFS) and pass the same "
            "--model_dir to all of them.")
