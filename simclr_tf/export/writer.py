"""Writes a SimCLR model as a SavedModel and a ``.keras`` file (see simclr_tf.export)."""

import contextlib
import json
import logging
import os

import keras
import tensorflow as tf
from absl import logging as absl_logging

from simclr_tf import __version__, files
from simclr_tf.data import augment
from simclr_tf.export.names import (INFO_FILE, KERAS_FILENAME, REPRESENTATION,
                                    SAVED_MODEL_SUBDIR, SERVE, SERVE_TRAINING, SERVE_UINT8)

# --------------------------------------------------------------------- export
def _without_sync_bn(config):
    """``config`` with cross-replica (synchronized) BatchNorm turned off."""
    if isinstance(config, dict):
        return {k: (False if k in ("global_bn", "synchronized") and v is True
                    else _without_sync_bn(v)) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return type(config)(_without_sync_bn(v) for v in config)
    return config


def _copy_model(model, image_size, for_saved_model):
    """A copy of ``model`` built outside any distribution strategy.

    Call it outside ``strategy.scope()``. On a TPU host the copy's variables
    live on the host CPU. ``for_saved_model``: every layer trainable (frozen
    layers would run BN in inference mode in ``serve_training``) and no
    synchronized BN (identical on one device; its cross-replica sum would
    otherwise leave unsaved custom gradients in the SavedModel).
    """
    config = model.get_config()
    if for_saved_model:
        config = _without_sync_bn(config)
    device = "/cpu:0" if tf.config.list_logical_devices("TPU") else None
    with tf.device(device):
        copy = model.__class__.from_config(config)
        if for_saved_model:
            # Before the copy is built and traced. Assigning the value an
            # attribute already has is a no-op for tracked objects, so toggle
            # to reach every sublayer.
            copy.trainable = False
            copy.trainable = True
        copy(tf.zeros([1, image_size, image_size, 3]), training=False)
    weights = model.get_weights()
    if len(weights) != len(copy.weights):
        raise ValueError(f"Cannot copy the model for export: it has {len(weights)} "
                         f"weights but its rebuilt copy has {len(copy.weights)}.")
    copy.set_weights(weights)
    for v in copy.weights:
        if v.dtype != "float32":
            raise ValueError(f"Export expects float32 variables; {v.path} is {v.dtype}.")
    return copy


def _float_outputs(outputs):
    return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}


def _write_saved_model(model, path, image_size):
    """Writes the SavedModel with its three endpoints to ``path``."""
    size = int(image_size)
    float_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
    uint8_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        return _float_outputs(model(images, training=False))

    def serve_training(images):
        return _float_outputs(model(images, training=True))

    serve_fn = archive.add_endpoint(SERVE, serve, [float_spec])
    archive.add_endpoint(SERVE_TRAINING, serve_training, [float_spec])

    def serve_uint8(images):
        # One H, W per batch (tf.function signatures cannot take ragged
        # batches); each image is preprocessed exactly as evaluation does.
        floats = tf.map_fn(
            lambda image: augment.preprocess_for_eval(image, size), images,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return serve_fn(floats)

    archive.add_endpoint(SERVE_UINT8, serve_uint8, [uint8_spec])
    with _quiet_absl():
        archive.write_out(path, verbose=False)
    outputs = sorted(serve_fn.get_concrete_function().structured_outputs)
    info = {"image_size": size, "input_range": [0.0, 1.0], "outputs": outputs,
            "endpoints": [SERVE, SERVE_TRAINING, SERVE_UINT8],
            "representation": REPRESENTATION}
    info["simclr_tf_version"] = __version__
    tf.io.gfile.makedirs(os.path.join(path, os.path.dirname(INFO_FILE)))
    with tf.io.gfile.GFile(os.path.join(path, INFO_FILE), "w") as f:
        f.write(json.dumps(info, indent=2))


@contextlib.contextmanager
def _quiet_absl():
    """Hides the SavedModel writer's INFO lines (absl and TF loggers) while it runs."""
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(min(verbosity, absl_logging.WARNING))  # absl: lower = quieter
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)
        tf_logger.setLevel(level)


def _write_keras(model, path):
    model.save(path)


# ------------------------------------------------- the export as one unit
# An export replaces saved_model/ and simclr.keras together. Both are written
# into a stage, model_dir/.export~<host>~<pid>~<random>/new/; then the stage's
# JOURNAL file commits it ("aside": the old pair moves to the stage's old/;
# "in": the new pair moves into model_dir). A process killed before the
# commit leaves the old pair and a stage the next export deletes; killed
# after it, the next export finishes the move (recover). Each step of the
# move can be repeated, also where renames copy file by file (gs://).
_UNIT = (SAVED_MODEL_SUBDIR, KERAS_FILENAME)
_STAGE_PREFIX = ".export"
_JOURNAL = "JOURNAL"
_ASIDE, _IN = "aside", "in"


def _phase(stage):
    try:
        return files.read_text(os.path.join(stage, _JOURNAL)).strip()
    except tf.errors.OpError:  # no journal: the stage was never committed
        return None


def _finish(model_dir, stage):
    """Moves a committed stage's pair into ``model_dir``; safe to repeat after a crash."""
    if _phase(stage) == _ASIDE:
        for name in _UNIT:
            files.move(os.path.join(model_dir, name), os.path.join(stage, "old", name))
        files.atomic_write(os.path.join(stage, _JOURNAL), _IN)
    for name in _UNIT:
        files.move(os.path.join(stage, "new", name), os.path.join(model_dir, name))
    files.remove(os.path.join(stage, "old"))
    files.remove(stage)


def _stages(model_dir):
    return sorted(tf.io.gfile.glob(os.path.join(model_dir, f"{_STAGE_PREFIX}~*")))


def interrupted_export(model_dir):
    """The committed stage of an export into ``model_dir`` that has not finished, or None.

    While one exists, ``saved_model/`` and ``simclr.keras`` may be missing or
    from different exports; the next export (``--mode=export``) finishes it.
    """
    for stage in _stages(model_dir):
        if _phase(stage) in (_ASIDE, _IN):
            return stage
    return None


def recover(model_dir):
    """Finishes or removes what exports killed part-way left in ``model_dir``.

    Only stages of processes that are gone (dead on this host) are touched: a
    committed one is moved in, an uncommitted one deleted. Also removes the
    temporary files of dead processes' atomic writes, and what exports of
    earlier versions left (``.saved_model.old-*``, ``.saved_model.tmp-*``).
    Returns the paths finished or removed.
    """
    done = []
    for stage in _stages(model_dir):
        if files.owner_alive(stage) is not False:
            continue
        if _phase(stage) in (_ASIDE, _IN):
            absl_logging.warning("Finishing the export into %s that a killed process "
                                 "left part-way (%s).", model_dir, stage)
            _finish(model_dir, stage)
        else:
            files.remove(stage)
        done.append(stage)
    target = os.path.join(model_dir, SAVED_MODEL_SUBDIR)
    olds = [p for p in sorted(tf.io.gfile.glob(
        os.path.join(model_dir, f".{SAVED_MODEL_SUBDIR}.old-*"))) if files.owner_alive(p) is False]
    if olds and not tf.io.gfile.exists(target):
        tf.io.gfile.rename(olds.pop(), target)
    stale = tf.io.gfile.glob(os.path.join(model_dir, f".{SAVED_MODEL_SUBDIR}.tmp-*"))
    stale += tf.io.gfile.glob(os.path.join(model_dir, f".{KERAS_FILENAME}.tmp-*"))
    for path in olds + [p for p in stale if files.owner_alive(p) is False]:
        files.remove(path)
        done.append(path)
    return done + files.remove_dead_temp(model_dir)


def export_model(model, model_dir, image_size, *, keras_file=True):
    """Exports ``model`` to ``model_dir/saved_model/`` and ``model_dir/simclr.keras``.

    Args:
        model: a built :class:`~simclr_tf.models.simclr_model.SimCLRModel`
            (possibly created under a distribution strategy).
        model_dir: directory to write into (local path or any ``tf.io.gfile``
            URL such as ``gs://``; renames there are not atomic).
        image_size: side of the images the ``serve`` endpoint takes.
        keras_file: also write ``simclr.keras``.

    Returns:
        dict with the paths written: ``saved_model`` and (if written) ``keras``.

    The pair is one unit: both are written into a hidden stage in
    ``model_dir`` and replace the previous pair (both files, also the
    ``simclr.keras`` of an earlier export when ``keras_file`` is False) only
    once complete. An error before that leaves the previous export as it
    was; a process killed at any point leaves the previous pair or the new
    one, after :func:`recover` (which every export runs first).
    """
    tf.io.gfile.makedirs(model_dir)
    recover(model_dir)
    stage = os.path.join(model_dir, _STAGE_PREFIX + files.temp_token())
    new = os.path.join(stage, "new")
    committed = False
    try:
        _write_saved_model(_copy_model(model, image_size, True),
                           os.path.join(new, SAVED_MODEL_SUBDIR), image_size)
        if keras_file:
            _write_keras(_copy_model(model, image_size, False),
                         os.path.join(new, KERAS_FILENAME))
        files.atomic_write(os.path.join(stage, _JOURNAL), _ASIDE)  # the commit
        committed = True
    finally:
        if not committed:
            files.remove(stage)
    _finish(model_dir, stage)
    paths = {"saved_model": os.path.join(model_dir, SAVED_MODEL_SUBDIR)}
    if keras_file:
        paths["keras"] = os.path.join(model_dir, KERAS_FILENAME)
    return paths
