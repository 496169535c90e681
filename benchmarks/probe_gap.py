"""Where the online probe's points go: its gap to the frozen-feature evaluation, in parts.

The linear probe trained during pretraining (``top1``) ends below the
frozen-feature linear evaluation (``feature_linear_eval.top1``) of the same
encoder. This script splits that gap on a finished run into what each
difference between the two costs, from the final encoder:

1. ``frozen``: the package's linear evaluation (clean training images,
   held-out l2, converged L-BFGS) - the reference.
2. ``augmented``: the same fit on h of *augmented* training views (two per
   image, the pretraining augmentation), scored on the clean test images.
   The difference to 1 is the cost of learning from augmented views.
3. ``sgd``: the probe's own optimizer (SGD, momentum 0.9, cosine from
   ``--probe_learning_rate`` over the run's steps, batches of 2 x the
   run's batch, parameter-free input standardisation) on those augmented
   features of the *final* encoder. The difference to 2 is the cost of a
   few hundred SGD steps instead of a converged fit.
4. ``probe``: the run's probe as trained. The difference to 3 is the cost of
   learning from an encoder that moved during training.

  python benchmarks/probe_gap.py --model_dir=runs/cifar10_cpu

Prints one JSON line; BENCHMARKS.md ("The online probe") has the results.
"""

import argparse
import json

import keras
import numpy as np

from simclr_tf import config as config_lib
from simclr_tf import linear_eval, tasks
from simclr_tf.linear_eval.solver import cross_entropy_sums
from simclr_tf.models import simclr_model  # noqa: F401  (registers the classes to load)
from simclr_tf.runtime import run_dir as run_dir_lib


def augmented_features(encoder, cfg, batch=250, seed=5):
    """h of both augmented views of every training image, and their labels."""
    task = tasks.build_task("pretrain", cfg.loss)
    ds, info = task.build_inputs(cfg.replace(seed=seed).data, cfg.augment, batch)
    feats, labels = [], []
    for views, y in ds.take(info.num_examples // batch):
        for k in ("view1", "view2"):
            feats.append(encoder(views[k], training=False).numpy())
            labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def sgd_probe(x, y, eval_x, eval_y, num_classes, steps, batch, learning_rate, seed=0):
    """Top-1 of the probe's SGD (momentum 0.9, cosine) on fixed features ``x``."""
    rng = np.random.default_rng(seed)
    x, eval_x = np.asarray(x, np.float32), np.asarray(eval_x, np.float32)
    mean, inv_std = x.mean(0), 1.0 / (x.std(0) + 1e-3)
    # linear_eval's cross-entropy gradient (summed over rows) serves here too.
    w = rng.normal(0.0, 0.01, (x.shape[1], num_classes)).astype(np.float32)
    b = np.zeros(num_classes, np.float32)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for t in range(steps):
        lr = learning_rate * 0.5 * (1 + np.cos(np.pi * t / steps))
        rows = rng.integers(0, len(x), batch)
        _, grad_w, grad_b = cross_entropy_sums(x[rows], y[rows], mean, inv_std, w, b)
        vw = 0.9 * vw + (grad_w / batch).astype(np.float32)
        vb = 0.9 * vb + (grad_b / batch).astype(np.float32)
        w -= lr * vw
        b -= lr * vb
    logits = ((eval_x - mean) * inv_std) @ w + b
    return float((logits.argmax(1) == eval_y).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="a finished pretraining run")
    parser.add_argument("--learning_rates", default="",
                        help="more probe learning rates for step 3, e.g. 0.3,1.0")
    args = parser.parse_args()
    run = run_dir_lib.RunDir(args.model_dir)
    cfg = config_lib.resolve(run.join(run_dir_lib.CONFIG))
    model = keras.saving.load_model(run.keras_file)
    with open(run.join(run_dir_lib.RESULT)) as f:
        result = json.load(f)

    def encoder(images, training=False):
        return model.encoder(images, training=False)

    train_x, train_y, eval_x, eval_y = linear_eval.frozen_features(encoder, cfg.data)
    num_classes = model.supervised_head.num_classes
    aug_x, aug_y = augmented_features(encoder, cfg)
    steps = int(result["global_step"])
    out = {
        "model_dir": args.model_dir,
        # The run's held-out split for the l2 choice (seeded by the run's seed).
        "frozen": linear_eval.fit_and_score((train_x, train_y, eval_x, eval_y),
                                            num_classes, seed=cfg.seed)["top1"],
        "augmented": linear_eval.fit_and_score((aug_x, aug_y, eval_x, eval_y),
                                               num_classes, seed=cfg.seed)["top1"],
        "probe": result["top1"],
    }
    rates = [("sgd", cfg.probe_learning_rate)] + [
        (f"sgd_lr{lr}", float(lr)) for lr in filter(None, args.learning_rates.split(","))]
    for key, lr in rates:
        out[key] = sgd_probe(aug_x, aug_y, eval_x, eval_y, num_classes, steps,
                             2 * cfg.train_batch_size, lr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
