"""Command-line entry point: ``python -m simclr_tf.run --mode=train_then_eval``.

Every field of :class:`simclr_tf.config.Config` is a flag of the same name.
Settings come from the built-in defaults, then ``--config=FILE.yaml``, then the
flags given on the command line. The config is validated before anything is
written; errors print one line naming the key and the fix and exit with
status 2.
"""

import logging as py_logging
import os
import sys
import typing

from absl import app, flags, logging

from simclr_tf import config as config_lib

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("config", None, "YAML experiment file (see configs/); flags "
                        "given on the command line override its values.")
    for field in config_lib.FIELDS.values():
        meta = field.metadata
        base = field.type
        args = typing.get_args(base)
        if args:  # Optional[T]
            base = [t for t in args if t is not type(None)][0]
        help_text = f"{meta['help']} (default: {field.default})"
        if meta["choices"] is not None:
            flags.DEFINE_enum(field.name, None, [str(c) for c in meta["choices"]],
                              help_text)
        elif base is bool:
            flags.DEFINE_boolean(field.name, None, help_text)
        elif base is int:
            flags.DEFINE_integer(field.name, None, help_text)
        elif base is float:
            flags.DEFINE_float(field.name, None, help_text)
        else:
            flags.DEFINE_string(field.name, None, help_text)


_define_flags()


def _fail(message):
    print(f"simclr_tf.run: error: {message}", file=sys.stderr)
    sys.exit(2)


class _OwnInfoOnly(py_logging.Filter):
    """Keeps our INFO lines and everyone's warnings; drops TF's INFO chatter."""

    def filter(self, record):
        return (record.levelno >= py_logging.WARNING
                or f"{os.sep}simclr_tf{os.sep}" in record.pathname)


def _quiet_library_info_logs():
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}: every setting is a --flag=value.")
    overrides = {name: FLAGS[name].value for name in config_lib.FIELDS
                 if FLAGS[name].present}
    try:
        cfg = config_lib.resolve(FLAGS.config, overrides)
    except config_lib.ConfigError as e:
        _fail(str(e))

    if not cfg.use_tpu:
        # TF's BFC allocator for host tensors (read at the first TF op): the
        # default allocator hands large tensors back to the OS and faults them
        # in again every step, which cost ~14% of a CPU training step (see
        # BENCHMARKS.md). TF_CPU_ALLOCATOR_USE_BFC=false opts out.
        os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

    # Heavy imports only after the config is known to be valid.
    import keras

    _quiet_library_info_logs()

    from simclr_tf import trainer

    try:
        trainer.check_model_dir(cfg)
        keras.utils.set_random_seed(cfg.seed)
        session = trainer.Session(cfg)
    except (config_lib.ConfigError, trainer.RunError, ValueError) as e:
        _fail(str(e))

    try:
        import tensorflow as tf

        tf.io.gfile.makedirs(cfg.model_dir)  # also gs:// paths
        if session.is_chief and cfg.mode != "export":  # export keeps the run's config
            config_lib.save_yaml(cfg, os.path.join(cfg.model_dir, "config.yaml"))
    except (OSError, tf.errors.OpError) as e:
        _fail(f"Cannot write to model_dir {cfg.model_dir!r} "
              f"({getattr(e, 'strerror', None) or e}). Pass a writable --model_dir.")
    from simclr_tf import export

    try:
        if cfg.mode == "export":
            if session.is_chief:
                print("exported:", " ".join(export.export_run(session, restore=True).values()))
            return
        if cfg.mode in ("train", "train_then_eval"):
            session.train()
        if cfg.mode in ("eval", "train_then_eval"):
            if cfg.mode == "eval":
                logging.info("%s", session.restore())
            result = session.evaluate()
            line = f"result: top1={result['top1']:.4f} top5={result['top5']:.4f}"
            if "feature_linear_eval" in result:
                line += (" feature_linear_eval_top1="
                         f"{result['feature_linear_eval']['top1']:.4f}")
            print(f"{line} global_step={result['global_step']} "
                  f"({os.path.join(cfg.model_dir, 'result.json')})")
            if session.is_chief:
                print("exported:", " ".join(export.export_run(session).values()))
        session.sync_workers()  # no worker exits while the chief still writes
    except trainer.RunError as e:
        _fail(str(e))
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as e:
        if not session.multi_worker:
            raise
        _fail("Lost contact with another worker of the cluster "
              f"({trainer.short_tf_error(e)}). Restart every worker with the same "
              "command: training resumes from the last checkpoint in model_dir.")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
