"""Command-line entry point: ``python -m simclr_tf.run --mode=train_then_eval``.

Every field of :class:`simclr_tf.config.Config` is a flag of the same name.
Settings come from the built-in defaults, then ``--config=FILE.yaml``, then the
flags given on the command line. The config is validated before anything is
written; errors print one line naming the key and the fix and exit with
status 2.
"""

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


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}: every setting is a --flag=value.")
    overrides = {name: FLAGS[name].value for name in config_lib.FIELDS
                 if FLAGS[name].present}
    try:
        cfg = config_lib.resolve(FLAGS.config, overrides)
    except config_lib.ConfigError as e:
        _fail(str(e))

    # Heavy imports only after the config is known to be valid.
    import logging as py_logging

    import keras

    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)

    from simclr_tf import trainer

    try:
        trainer.check_model_dir(cfg)
        keras.utils.set_random_seed(cfg.seed)
        session = trainer.Session(cfg)
    except (config_lib.ConfigError, trainer.RunError, ValueError) as e:
        _fail(str(e))

    os.makedirs(cfg.model_dir, exist_ok=True)
    if session.is_chief and cfg.mode != "export":  # export keeps the run's config
        config_lib.save_yaml(cfg, os.path.join(cfg.model_dir, "config.yaml"))
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
            print(f"result: top1={result['top1']:.4f} top5={result['top5']:.4f} "
                  f"global_step={result['global_step']} "
                  f"({os.path.join(cfg.model_dir, 'result.json')})")
            if session.is_chief:
                print("exported:", " ".join(export.export_run(session).values()))
    except trainer.RunError as e:
        _fail(str(e))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
