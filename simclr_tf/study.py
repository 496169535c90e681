"""Command-line entry point: ``python -m simclr_tf.study --study=NAME``.

The runner is :mod:`simclr_tf.experiments.study`; the grids and plots live
beside it in :mod:`simclr_tf.experiments`.
"""

from simclr_tf import env

env.tune_for_cli()  # before TensorFlow is imported

from absl import app  # noqa: E402

from simclr_tf.experiments import study  # noqa: E402


def run():
    study.define_flags()
    app.run(study.main)


if __name__ == "__main__":
    run()
