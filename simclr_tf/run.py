"""Command-line entry point: ``python -m simclr_tf.run --mode=train_then_eval``.

Every field of :class:`simclr_tf.config.Config` is a flag of the same name.
Settings come from the built-in defaults, then ``--config=FILE.yaml``, then the
flags given on the command line. The config is validated before anything is
written; errors print one line naming the key and the fix and exit with
status 2.
"""

from simclr_tf import env

env.tune_for_cli()  # before TensorFlow is imported

import contextlib  # noqa: E402
import logging as py_logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from simclr_tf import distribute, errors, runtime  # noqa: E402
from simclr_tf.config.flags import config_from_flags, define_flags  # noqa: E402
from simclr_tf.errors import ConfigError, Preempted, RunError, short_tf_error  # noqa: E402
from simclr_tf.runtime.run_dir import RunDir, data_identity  # noqa: E402

# Not a setting of the experiment (config.yaml does not record it): a
# permission for this command only.
flags.DEFINE_boolean(
    "overwrite", False, "Write into a model_dir that holds files but no simclr_tf run: "
    "the run's own files (config.yaml, data.json, result.json, train_log.jsonl, "
    "checkpoints/, saved_model/, simclr.keras, eval/, train/) replace any of the same "
    "name; other files are left as they are. Without it such a directory is refused.")


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


TRAIN_MODES = ("train", "train_then_eval")


@contextlib.contextmanager
def _sigterm_exits():
    """Turns a SIGTERM outside the training loop into an exit that runs the finally blocks.

    The training loop installs its own handler (it saves a checkpoint and
    raises Preempted); elsewhere (building, evaluating, exporting) a SIGTERM
    would end the process at once and leave model_dir's lock behind.
    """
    def handler(signum, frame):
        print("simclr_tf.run: Stopped by SIGTERM; model_dir keeps what was saved before. "
              "Rerun the same command to continue.", file=sys.stderr)
        raise SystemExit(143)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        run_dir.check_compatible(cfg, warn=False)  # warned under the lock, below
        keras.utils.set_random_seed(cfg.seed)
        exp = runtime.build(cfg)
        if cfg.mode in ("eval", "export"):  # never report or export a random model
            exp.checkpointer.restore_finished("evaluate" if cfg.mode == "eval" else "export")
        _check_is_run_or_empty(run_dir)
    except (ConfigError, RunError, ValueError) as e:
        fail(str(e))

    lock = identity = None
    try:
        with _sigterm_exits():
            if exp.is_chief:  # workers share the chief's model_dir and its lock
                try:
                    lock = run_dir.lock()
                    # Checked again under the lock: another run may have written
                    # there while this one was being built.
                    _check_is_run_or_empty(run_dir)
                    run_dir.check_compatible(cfg)
                    if cfg.mode in TRAIN_MODES:
                        identity = data_identity(cfg.dataset, cfg.train_split, cfg.data_dir,
                                                 exp.train_info.num_examples,
                                                 exp.train_info.version)
                        run_dir.check_data(identity)
                except (ConfigError, RunError) as e:
                    fail(str(e))
                except (OSError, tf.errors.OpError) as e:
                    _cannot_write(cfg, e)
            _run(cfg, exp, run_dir, identity)
    finally:
        if lock is not None:
            lock.release()


def _cannot_write(cfg, error):
    if errors.is_disk_full(error):  # e.g. the lock file on a full disk
        fail(str(errors.disk_full_error(cfg.model_dir, "to model_dir",
                                        "nothing of the run was written")))
    fail(f"Cannot write to model_dir {cfg.model_dir!r} "
         f"({getattr(error, 'strerror', None) or error}). Pass a writable --model_dir.")


def _check_is_run_or_empty(run_dir):
    if flags.FLAGS.overwrite:
        return
    try:
        run_dir.check_is_run_or_empty()
    except RunError as e:
        raise RunError(f"{e} Or pass --overwrite to write there anyway (the run's own "
                       "files replace those of the same name; others are left).") from None


def _run(cfg, exp, run_dir, identity):
    try:
        run_dir.makedirs()  # also gs:// paths
        # Only training writes config.yaml: it records what the checkpoints were
        # trained with, and eval / export must not rewrite it with their flags.
        if identity is not None:
            run_dir.write_config(cfg)
            run_dir.write_data(identity)
    except RunError as e:  # a full disk
        fail(str(e))
    except (OSError, tf.errors.OpError) as e:
        _cannot_write(cfg, e)
    try:
        if cfg.mode in TRAIN_MODES:
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
