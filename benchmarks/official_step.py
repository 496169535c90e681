"""Our training step's network against the official SimCLR TF2 network, on this CPU (issue 32, item 5).

The official TF2 code cannot be fetched here (no network), but the SavedModels it
writes can be read: ``../shared/fixtures/official_tf2/`` holds one of a ResNet-18
(CIFAR stem, width 1, 2-layer projection head, 10-class supervised head). Its
``loaded(x, trainable=True)`` is the official model's own training-mode graph
(its sync BN, padding and blocks), and ``tf.GradientTape`` differentiates it. The
same architecture of ours is built from the config. Both run, in one process
under the same TensorFlow settings, the network part of a training step: the
forward pass in training mode (batch statistics, moving averages updated) and the
gradients of every trainable weight, of the same scalar of the outputs, in a
``tf.function``, fp32. Not in it: the loss (a [2B, 2B] matmul), the optimizer
update and the input pipeline, small next to the ResNet at this size. Runs
alternate (ours, official, ours, ...) so that a change of load hits both::

    python -m benchmarks.official_step --fixtures=../shared/fixtures/official_tf2 \\
        [--batch_size=128] [--rounds=5] [--steps=5]

Prints one JSON line: seconds per step of each (median over rounds) and the ratio
official / ours (above 1: ours is faster). ``--cpu_settings=tensorflow_defaults``
runs both without the package's CPU settings (what the official code gets):
ours as a user runs it against the official code as its users run it is the
ratio of ours in the first run to the official network in the second.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time

from simclr_tf import env

# The package's CPU settings (oneDNN, TF's BFC allocator for host tensors) apply to
# both networks, unless --cpu_settings=tensorflow_defaults (read before TF loads).
DEFAULTS = "--cpu_settings=tensorflow_defaults" in sys.argv
if not DEFAULTS:
    env.tune_for_cli()

import tensorflow as tf  # noqa: E402

from benchmarks import official_fixture  # noqa: E402
from benchmarks.common import load_average  # noqa: E402
from benchmarks.machine import cpu_info  # noqa: E402
from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf.models import simclr_model  # noqa: E402

NAME = "r18_cifar"


def _official(fixtures, scratch):
    _, loaded = official_fixture.load_filled(fixtures, NAME, scratch)
    variables = [v for part in official_fixture.parts(loaded) for v in part.variables
                 if v.trainable]
    return (lambda x: loaded(x, trainable=True)), variables


def _ours():
    cfg = config_lib.resolve(None, dict(resnet_depth=18, width_multiplier=1, image_size=32,
                                        num_proj_layers=2, sk_ratio=0.0))
    model = simclr_model.build_model(cfg.model, 10)
    model(tf.zeros([1, 32, 32, 3]), training=False)
    return (lambda x: model(x, training=True)), model.trainable_variables


def _step(forward, variables):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            out = forward(x)
            scalar = (tf.reduce_sum(tf.square(tf.cast(out["proj_head_output"], tf.float32)))
                      + tf.reduce_sum(tf.cast(out["logits_sup"], tf.float32)))
        return scalar, tape.gradient(scalar, variables)
    return step


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.official_step",
                                description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", required=True, help="../shared/fixtures/official_tf2")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--cpu_settings", choices=("package", "tensorflow_defaults"),
                   default="package", help="TensorFlow as the package's commands set it "
                   "up, or TensorFlow's own defaults (what the official code runs with)")
    args = p.parse_args(argv)
    x = tf.random.uniform([args.batch_size, 32, 32, 3], seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        steps = {"official": _step(*_official(args.fixtures, scratch)), "ours": _step(*_ours())}
        counts = {}
        for name, step in steps.items():  # trace, warm up; both differentiate every weight
            _, grads = step(x)
            counts[name] = sum(g is not None for g in grads)
            step(x)
        load_before = load_average()
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name in ("ours", "official"):
                start = time.perf_counter()
                for _ in range(args.steps):
                    scalar, _ = steps[name](x)
                float(scalar)
                times[name].append((time.perf_counter() - start) / args.steps)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({
        "machine": cpu_info(), "cpu_settings": args.cpu_settings,
        "batch_size": args.batch_size, "image_size": 32,
        "model": "ResNet-18 x1, CIFAR stem, 2-layer head, 10-class head, fp32",
        "trainable_weights_with_gradients": counts,
        "load_average": {"before": load_before, "after": load_average()},
        "seconds_per_step": {k: round(v, 4) for k, v in median.items()},
        "rounds": {k: [round(s, 4) for s in v] for k, v in times.items()},
        "official_over_ours": round(median["official"] / median["ours"], 3)}))


if __name__ == "__main__":
    main()
