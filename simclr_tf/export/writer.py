"""Writes a SimCLR model as a SavedModel and a ``.keras`` file (see simclr_tf.export)."""

import contextlib
import json
import logging
import os
import uuid

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


def _token():
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _recover(model_dir):
    """Cleans up after an export that was killed part-way.

    A previous export left aside by an interrupted swap is put back; partial
    temporaries are removed (one process exports into a model_dir at a time:
    the chief).
    """
    target = os.path.join(model_dir, SAVED_MODEL_SUBDIR)
    olds = sorted(tf.io.gfile.glob(os.path.join(model_dir, f".{SAVED_MODEL_SUBDIR}.old-*")))
    if olds and not tf.io.gfile.exists(target):
        tf.io.gfile.rename(olds.pop(), target)
    stale = tf.io.gfile.glob(os.path.join(model_dir, f".{SAVED_MODEL_SUBDIR}.tmp-*"))
    stale += tf.io.gfile.glob(os.path.join(model_dir, f".{KERAS_FILENAME}.tmp-*"))
    for path in olds + stale:
        files.remove(path)


def _swap_dir(tmp, target):
    """Moves directory ``tmp`` to ``target``, replacing it only once ``tmp`` is there."""
    parent, base = os.path.split(target)
    old = None
    if tf.io.gfile.exists(target):
        old = os.path.join(parent, f".{base}.old-{_token()}")
        tf.io.gfile.rename(target, old)
    try:
        tf.io.gfile.rename(tmp, target)
    except Exception:
        if old is not None:
            tf.io.gfile.rename(old, target)
        raise
    if old is not None:
        files.remove(old)


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

    The new artifacts are first written to hidden temporary paths in
    ``model_dir``; the previous export is replaced only after both are
    complete. On any error the previous export is left as it was and the
    temporary files are removed.
    """
    tf.io.gfile.makedirs(model_dir)
    sm_target = os.path.join(model_dir, SAVED_MODEL_SUBDIR)
    keras_target = os.path.join(model_dir, KERAS_FILENAME)
    _recover(model_dir)
    token = _token()
    sm_tmp = os.path.join(model_dir, f".{SAVED_MODEL_SUBDIR}.tmp-{token}")
    keras_tmp = os.path.join(model_dir, f".{KERAS_FILENAME}.tmp-{token}.keras")
    try:
        _write_saved_model(_copy_model(model, image_size, True), sm_tmp, image_size)
        if keras_file:
            _write_keras(_copy_model(model, image_size, False), keras_tmp)
        _swap_dir(sm_tmp, sm_target)
        if keras_file:
            tf.io.gfile.rename(keras_tmp, keras_target, overwrite=True)
    finally:
        files.remove(sm_tmp)
        files.remove(keras_tmp)
    paths = {"saved_model": sm_target}
    if keras_file:
        paths["keras"] = keras_target
    return paths
