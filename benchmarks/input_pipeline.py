"""Augmented images/s of the ``tf.data`` pretraining pipeline alone.

Iterates :func:`simclr_tf.data.pipeline.build_train_dataset` on the built-in
``offline_shapes`` data (32x32 source images; at 224 px the crop is resized up
to 224, which costs what a 224-px ImageNet view costs after decoding, blur on).
Counts source images (each yields two augmented views).
"""

import time

from benchmarks import common
from simclr_tf.config import Config
from simclr_tf.data import pipeline

SIZES = {  # image_size: (batch size, timed batches) of the full and the smoke run
    32: ((256, 20), (64, 4)),
    224: ((64, 10), (8, 3)),
}


def run(sizes=(32, 224), smoke=False, warmup_batches=2, log=print):
    rows = []
    for size in sizes:
        full, small = SIZES[size]
        batch, batches = small if smoke else full
        cfg = Config(dataset="offline_shapes", train_split="train", image_size=size, seed=0)
        ds, _ = pipeline.build_train_dataset(cfg.data, cfg.augment, batch)
        iterator = iter(ds)
        start = time.perf_counter()
        for _ in range(warmup_batches):
            next(iterator)[1].numpy()
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)[1].numpy()
        elapsed = time.perf_counter() - start
        row = {"image_size": size, "batch_size": batch, "batches": batches,
               "images_per_s": batch * batches / elapsed,
               "views_per_s": 2 * batch * batches / elapsed,
               "warmup_s": first, "blur": size > 32, "load_average": common.load_average()}
        rows.append(row)
        log(f"  pipeline {size}px: {row['images_per_s']:.1f} images/s")
    return {"rows": rows}
