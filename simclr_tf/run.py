"""Command-line entry point: ``python -m simclr_tf.run --mode=train_then_eval``.

Every field of :class:`simclr_tf.config.Config` is a flag of the same name.
Settings come from the built-in defaults, then ``--config=FILE.yaml``, then the
flags given on the command line. The config is validated before anything is
written; errors print one line naming the key and the fix and exit with
status 2.
"""

from simclr_tf import env

env.tune_for_cli()  # before TensorFlow is imported

import logging as py_logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, logging  # noqa: E402

from simclr_tf import distribute, runtime  # noqa: E402
from simclr_tf.config.flags import config_from_flags, define_flags  # noqa: E402
from simclr_tf.errors import ConfigError, Preempted, RunError, short_tf_error  # noqa: E402
from simclr_tf.runtime.run_dir import RunDir  # noqa: E402

def fail(message, program="simclr_tf.run"):
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)


class _OwnInfoOnly(py_logging.Filter):
    """Keeps our INFO lines and everyone's warnings; drops TF's INFO chatter."""

    def filter(self, record):
        return (record.levelno >= py_logging.WARNING
                or f"{os.sep}simclr_tf{os.sep}" in record.pathname)


def quiet_library_info_logs():
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)


def _result_line(result, model_dir):
    line = f"result: top1={result['top1']:.4f} top5={result['top5']:.4f}"
    if "feature_linear_eval" in result:
        line += f" feature_linear_eval_top1={result['feature_linear_eval']['top1']:.4f}"
    if "knn" in result:
        line += f" knn_top1={result['knn']['top1']:.4f}"
    return f"{line} global_step={result['global_step']} ({os.path.join(model_dir, 'result.json')})"


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}: every setting is a --flag=value.")
    try:
        cfg = config_from_flags()
    except ConfigError as e:
        fail(str(e))
    quiet_library_info_logs()
    run_dir = RunDir(cfg.model_dir)
    try:
        run_dir.check_writable()
        run_dir.check_compatible(cfg)
        keras.utils.set_random_seed(cfg.seed)
        exp = runtime.build(cfg)
        if cfg.mode in ("eval", "export"):  # never report or export a random model
            exp.checkpointer.restore_finished("evaluate" if cfg.mode == "eval" else "export")
    except (ConfigError, RunError, ValueError) as e:
        fail(str(e))

    try:
        run_dir.makedirs()  # also gs:// paths
        # Only training writes config.yaml: it records what the checkpoints were
        # trained with, and eval / export must not rewrite it with their flags.
        if exp.is_chief and cfg.mode in ("train", "train_then_eval"):
            run_dir.write_config(cfg)
    except (OSError, tf.errors.OpError) as e:
        fail(f"Cannot write to model_dir {cfg.model_dir!r} "
             f"({getattr(e, 'strerror', None) or e}). Pass a writable --model_dir.")
    try:
        if cfg.mode in ("train", "train_then_eval"):
            runtime.train(exp)
        if cfg.mode in ("eval", "train_then_eval"):
            print(_result_line(runtime.evaluate(exp), cfg.model_dir))
        if exp.is_chief and cfg.mode != "train":
            print("exported:", " ".join(runtime.export(exp).values()))
        distribute.sync_workers(exp.strategy)  # no worker exits while the chief still writes
    except Preempted as e:
        print(f"simclr_tf.run: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except RunError as e:
        fail(str(e))
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as e:
        if not exp.multi_worker:
            raise
        fail("Lost contact with another worker of the cluster "
             f"({short_tf_error(e)}). Restart every worker with the same "
             "command: training resumes from the last checkpoint in model_dir.")


def run():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
