"""The config as absl flags: one flag per config key, plus ``--config``.

Shared by the command-line entry points (``simclr_tf.run``, ``simclr_tf.study``).
"""

import typing

from absl import flags

from simclr_tf.config.schema import FIELDS
from simclr_tf.config.yaml_io import resolve

FLAGS = flags.FLAGS


def define_flags():
    """Defines ``--config`` and one flag per config key (once per process)."""
    if "config" in FLAGS:
        return
    flags.DEFINE_string("config", None, "YAML experiment file, or the name of a config "
                        "shipped with the package (smoke, default, cifar10_resnet18, "
                        "imagenet_resnet50_tpu, ...; see configs/); flags given on the "
                        "command line override its values.")
    for field in FIELDS.values():
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


def overrides_from_flags():
    """``{key: value}`` of the config flags given on the command line."""
    return {name: FLAGS[name].value for name in FIELDS if FLAGS[name].present}


def config_from_flags():
    """The resolved Config of ``--config`` and the flags given (ConfigError if invalid)."""
    return resolve(FLAGS.config, overrides_from_flags())
