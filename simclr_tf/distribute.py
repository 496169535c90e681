"""Picks the tf.distribute strategy for a run.

Order: TPU when ``use_tpu`` (``tpu_name="local"`` on a TPU VM such as Colab's);
``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one task;
``MirroredStrategy`` when more than one GPU is visible; otherwise the default
strategy (one device).
"""

import json
import os

import tensorflow as tf
from absl import logging


def _multi_worker_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}); unset it or fix it.") from None
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
