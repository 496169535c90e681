"""Inference images/s of the exported SavedModel ``serve`` endpoint.

Exports a model with :func:`simclr_tf.export.export_model`, loads the
SavedModel with ``tf.saved_model.load`` and compares its ``serve`` endpoint
(BN in inference mode, float32 outputs) with the same model called in
process (``model(images, training=False)`` in a ``tf.function``). Skipped
with a note when ``simclr_tf.export`` has no ``export_model``.
"""

import importlib
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf

from benchmarks import common
from simclr_tf import config as config_lib
from simclr_tf import tasks


def available():
    try:
        export = importlib.import_module("simclr_tf.export")
    except ImportError as e:
        return None, f"simclr_tf.export cannot be imported ({e})"
    if not hasattr(export, "export_model"):
        return None, "simclr_tf.export has no export_model yet"
    return export, None


def run(precisions=("float32", "bfloat16"), smoke=False, repeats=None, log=print):
    export, note = available()
    if export is None:
        log(f"  export: skipped ({note})")
        return {"skipped": note}
    repeats = repeats or (3 if smoke else 5)
    # The default config's model (ResNet-18 x0.5 at 32 px) or a tiny one.
    values = (dict(width_multiplier=0.125, image_size=16) if smoke else {})
    batch = 32 if smoke else 256
    rows = []
    for precision in precisions:
        cfg = config_lib.resolve(None, dict(values, precision=precision))
        keras.utils.set_random_seed(0)
        model = tasks.build_model(cfg, num_classes=10)
        size = cfg.image_size
        model(tf.zeros([1, size, size, 3]))
        images = tf.random.uniform([batch, size, size, 3])
        directory = tempfile.mkdtemp(prefix="simclr_export_bench_")
        try:
            start = time.perf_counter()
            paths = export.export_model(model, directory, size, keras_file=False)
            export_s = time.perf_counter() - start
            start = time.perf_counter()
            loaded = tf.saved_model.load(paths["saved_model"])
            load_s = time.perf_counter() - start
            serve = loaded.serve
            in_process = tf.function(lambda x: model(x, training=False))
            served = serve(images)
            local = in_process(images)
            max_diff = float(tf.reduce_max(tf.abs(
                served["final_avg_pool"] - tf.cast(local["final_avg_pool"], tf.float32))))
            t_serve = common.summary(*common.timed(
                lambda: common.sync(serve(images)), repeats, warmup=1))
            t_local = common.summary(*common.timed(
                lambda: common.sync(in_process(images)), repeats, warmup=1))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        row = {"precision": precision, "resnet_depth": cfg.resnet_depth,
               "width_multiplier": cfg.width_multiplier, "image_size": size,
               "batch_size": batch, "export_s": export_s, "load_s": load_s,
               "serve_images_per_s": batch / t_serve["median_s"],
               "in_process_images_per_s": batch / t_local["median_s"],
               "serve_images_per_cpu_s": batch / t_serve["cpu_median_s"],
               "in_process_images_per_cpu_s": batch / t_local["cpu_median_s"],
               "max_abs_diff_h": max_diff, "load_average": common.load_average()}
        row["serve_over_in_process"] = (row["serve_images_per_s"]
                                        / row["in_process_images_per_s"])
        rows.append(row)
        log(f"  export {precision}: serve {row['serve_images_per_s']:.0f} img/s, "
            f"in-process {row['in_process_images_per_s']:.0f} img/s "
            f"(export {export_s:.1f} s)")
    return {"rows": rows}
