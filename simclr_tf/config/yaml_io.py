"""Configs from YAML files and flags, back to YAML, and the README's flag table."""

import dataclasses
import difflib
import os
import pathlib
from importlib import resources

import yaml

from simclr_tf.config.choices import describe_range
from simclr_tf.config.schema import (AUGMENTATION_KEYS, FIELDS, NO_AUGMENTATION, RANGE_KEYS,
                                     Config, files)
from simclr_tf.errors import ConfigError

SHIPPED = "simclr_tf.configs"  # the package data holding the top-level configs/


def _coerce(name, value):
    """Converts a YAML/flag value to the field's type, or raises ConfigError."""
    field_type = FIELDS[name].type
    if value is None:
        return None
    base = field_type
    origin = getattr(base, "__args__", None)
    if origin:  # Optional[T]
        base = [t for t in origin if t is not type(None)][0]
    if name in AUGMENTATION_KEYS and isinstance(value, (list, tuple)):
        value = ",".join(map(str, value)) or NO_AUGMENTATION  # YAML list
    try:
        if base is str and isinstance(value, bool) and "true" in (
                FIELDS[name].metadata["choices"] or ()):
            return "true" if value else "false"  # YAML `jit_compile: true`
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Invalid value {value!r} for '{name}': expected {base.__name__}.") from None


def from_dict(values, base=None):
    """Returns ``base`` (default: the defaults) updated with ``values``.

    Raises ConfigError for unknown keys, naming the closest known key.
    """
    base = base or Config()
    changes = {}
    for key, value in (values or {}).items():
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown config key '{key}'.{hint} Known keys are "
                              "listed in the README's flag table.")
        changes[key] = _coerce(key, value)
    return dataclasses.replace(base, **changes)


def _shipped_dir():
    """The folder of the shipped configs: the installed package data, else the checkout's."""
    try:
        return resources.files(SHIPPED)
    except ModuleNotFoundError:  # a checkout, or a legacy editable install
        return pathlib.Path(__file__).resolve().parents[2] / "configs"


def shipped_configs():
    """Names of the configs installed with the package (``--config=NAME``)."""
    folder = _shipped_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[:-len(".yaml")] for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def find_config(name_or_path):
    """A config file's path: ``name_or_path`` itself, else the shipped config of that name.

    ``--config=cifar10_resnet18`` (or ``cifar10_resnet18.yaml``) finds the
    config installed with the package from any directory; an existing path
    wins over a shipped name.
    """
    if files().exists(name_or_path) or files().is_remote(name_or_path) or (
            os.sep in name_or_path):
        return name_or_path
    name = name_or_path[:-len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    shipped = _shipped_dir() / f"{name}.yaml"
    return str(shipped) if shipped.is_file() else name_or_path


def _read_config_text(path):
    """The text of the config file at ``path``, or ConfigError naming the file and the fix.

    A directory, a file that may not be read and one that is not UTF-8 text are
    refused in one line (``files.read_text`` raises TensorFlow's errors, or
    UnicodeDecodeError, for them).
    """
    if _remote_isdir(path) if files().is_remote(path) else os.path.isdir(path):
        raise ConfigError(f"--config={path!r} is a directory, not a config file. Pass "
                          "--config=PATH.yaml (e.g. a run's model_dir/config.yaml).")
    try:
        return files().read_text(path)
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"Config file {path!r} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} "
            f"at offset {e.start}). Save it as UTF-8, or pass another --config.") from None
    except Exception as e:  # noqa: BLE001  (OSError, or tf.errors.OpError from gfile)
        if not isinstance(e, OSError) and not _is_tf_error(e):
            raise
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        reason = reason.strip().removeprefix(f"{path}; ") or type(e).__name__
        raise ConfigError(
            f"Cannot read config file {path!r} ({reason.strip().splitlines()[0]}). Make it "
            "readable (e.g. chmod a+r), or pass another --config.") from None


def _remote_isdir(path):
    try:
        import tensorflow as tf  # remote paths only: files() has imported it already
        return tf.io.gfile.isdir(path)
    except Exception:  # noqa: BLE001  (the read then says what is wrong)
        return False


def _is_tf_error(error):
    return type(error).__module__.startswith("tensorflow")


def load_yaml(path):
    """Reads a YAML experiment file (a path or a shipped config's name) into a dict."""
    path = find_config(path)
    if not files().exists(path):
        hint = "" if files().is_remote(path) else (
            " Pass --config=PATH.yaml with an existing file, or the name of a shipped "
            f"config: {', '.join(shipped_configs())}.")
        raise ConfigError(f"Config file not found: {path!r}.{hint}")
    text = _read_config_text(path)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path!r} is not valid YAML: {e}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path!r} must hold a mapping of keys to "
                          f"values, not a {type(values).__name__}.")
    return values


def resolve(config_path=None, overrides=None):
    """Defaults < YAML file < ``overrides`` (the flags given), validated."""
    cfg = Config()
    if config_path:
        cfg = from_dict(load_yaml(config_path), cfg)
    cfg = from_dict(overrides or {}, cfg)
    return cfg.validate()


def save_yaml(cfg, path):
    """Writes the resolved config atomically (see simclr_tf.files.atomic_write)."""
    files().atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def flag_table():
    """Markdown table of every flag: name, default, allowed values, help."""
    rows = ["| flag | default | allowed | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Config):
        meta = f.metadata
        allowed = ", ".join(map(str, meta["choices"])) if meta["choices"] else ""
        if meta["minimum"] is not None or meta["maximum"] is not None:
            allowed = describe_range(**{k: meta[k] for k in RANGE_KEYS})
        rows.append(f"| `--{f.name}` | `{f.default}` | {allowed} | {meta['help']} |")
    rows.append("| `--config` | | path or name | YAML file of the keys above, or the name "
                "of a shipped config (`smoke`, `default`, `cifar10_resnet18`, ...); flags "
                "given on the command line override it. |")
    return "\n".join(rows)
