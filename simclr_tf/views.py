"""Command-line entry point: ``python -m simclr_tf.views --config=NAME --out=views.png``.

Writes a PNG of augmented view pairs (view 1 | view 2, one image per row) as
the pretraining pipeline of the config makes them: the first question of
anyone tuning augmentations. Every ``simclr_tf.run`` flag works here, e.g.
``--augmentations=crop,color --image_size=64``.
"""

from simclr_tf import env

env.tune_for_cli()  # before TensorFlow is imported

import sys  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from simclr_tf import tasks  # noqa: E402
from simclr_tf.config.flags import config_from_flags, define_flags  # noqa: E402
from simclr_tf.data import view_grid  # noqa: E402
from simclr_tf.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS


def write_views(cfg, path, num_pairs=8, scale=None):
    """Writes the PNG of ``num_pairs`` view pairs of ``cfg``'s pretraining stream; returns its shape."""
    task = tasks.PretrainTask(cfg.loss)
    views, _ = next(iter(view_grid.pairs_dataset(task, cfg, num_pairs)))
    scale = scale or max(1, 96 // cfg.image_size)
    picture = view_grid.grid(views, scale)
    directory = path.rpartition("/")[0]
    if directory:
        tf.io.gfile.makedirs(directory)
    tf.io.write_file(path, tf.io.encode_png(picture))
    return tuple(picture.shape)


def main(argv):
    if len(argv) > 1:
        print(f"simclr_tf.views: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    try:
        cfg = config_from_flags()
        shape = write_views(cfg, FLAGS.out, FLAGS.num_pairs)
    except (ConfigError, ValueError) as e:
        print(f"simclr_tf.views: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {FLAGS.out}: {FLAGS.num_pairs} pairs of {cfg.image_size} px views "
          f"({shape[1]}x{shape[0]} px)")


def run():
    define_flags()
    if "out" not in FLAGS:
        flags.DEFINE_string("out", "views.png", "The PNG to write.")
        flags.DEFINE_integer("num_pairs", 8, "How many images (rows of view pairs).")
    app.run(main)


if __name__ == "__main__":
    run()
