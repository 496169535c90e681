"""Reads simclr_tf exports: the encoder as a Keras layer, the whole model (see simclr_tf.export)."""

import json
import os
import zipfile

import keras
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from simclr_tf.errors import NotSimCLRExportError
from simclr_tf.export import writer
from simclr_tf.export.names import (INFO_FILE, KERAS_FILENAME, REPRESENTATION,
                                    SAVED_MODEL_SUBDIR, SERVE, SERVE_TRAINING)
# Registers every Keras class of a SimCLRModel, so that keras.models.load_model
# works on simclr.keras once this module is imported.
from simclr_tf.models import heads, resnet, simclr_model  # noqa: F401

# -------------------------------------------------------------------- loading
_EXPORT_HELP = ("Expected a model_dir written by simclr_tf (holding saved_model/ and "
                "simclr.keras) or its saved_model/ directory; export one with "
                "`python -m simclr_tf.run --mode=export --model_dir=...`.")
# What an export made before the marker file existed must offer.
_REQUIRED_SIGNATURES = {SERVE: REPRESENTATION, SERVE_TRAINING: REPRESENTATION}


def _require_exists(path):
    if not tf.io.gfile.exists(path):
        _require_finished_parent(path)
        raise FileNotFoundError(f"{path!r} does not exist. {_EXPORT_HELP}")


def _require_finished(model_dir):
    """Refuses a model_dir whose export pair is being replaced (or was, by a killed process)."""
    if model_dir and tf.io.gfile.isdir(model_dir) and writer.interrupted_export(model_dir):
        raise NotSimCLRExportError(
            f"An export into {model_dir!r} is in progress or was interrupted, so "
            f"{SAVED_MODEL_SUBDIR}/ and {KERAS_FILENAME} may be missing or from different "
            "exports. The next export finishes it: `python -m simclr_tf.run "
            f"--mode=export --model_dir={model_dir}` (or wait for the running one).")


def _require_finished_parent(path):
    """:func:`_require_finished` on the model_dir of ``.../saved_model`` or ``.../simclr.keras``."""
    parent, base = os.path.split(os.fspath(path).rstrip("/"))
    if base in (SAVED_MODEL_SUBDIR, KERAS_FILENAME):
        _require_finished(parent)


def read_export_info(saved_model_path):
    """The ``assets.extra/simclr_tf.json`` marker of an export, or None.

    It records ``simclr_tf_version``, ``image_size``, ``outputs``,
    ``endpoints`` and ``representation``; exports older than the marker
    have none.
    """
    marker = os.path.join(saved_model_path, INFO_FILE)
    try:
        with tf.io.gfile.GFile(marker) as f:
            info = json.loads(f.read())
    except (ValueError, tf.errors.OpError):
        return None
    if not isinstance(info, dict) or not {"simclr_tf_version", "outputs"} <= set(info):
        return None
    return info


def _signature_outputs(saved_model_path):
    """``{signature name: set of output keys}`` read from ``saved_model.pb``.

    Parses the protocol buffer only: no variables, no functions are loaded.
    """
    proto = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(os.path.join(saved_model_path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
    except (DecodeError, OSError, tf.errors.OpError):  # unreadable: not ours
        return {}
    signatures = {}
    for meta_graph in proto.meta_graphs:
        for name, signature in meta_graph.signature_def.items():
            signatures[name] = set(signature.outputs)
    return signatures


def _check_simclr_saved_model(path):
    """Raises NotSimCLRExportError unless ``path`` is a SavedModel written by simclr_tf.

    Our exports carry the marker file; older ones (without it) pass when they
    have the ``serve`` and ``serve_training`` signatures returning
    ``final_avg_pool``.
    """
    if read_export_info(path) is not None:
        return
    signatures = _signature_outputs(path)
    missing = [f"{name!r} (returning {key!r})" for name, key in _REQUIRED_SIGNATURES.items()
               if key not in signatures.get(name, ())]
    if missing:
        found = ", ".join(repr(n) for n in sorted(signatures)
                          if not n.startswith("__")) or "none"
        raise NotSimCLRExportError(
            f"{path!r} is a SavedModel but not a simclr_tf export: it has no {INFO_FILE} "
            f"marker and lacks the signature(s) {', '.join(missing)} (its signatures: "
            f"{found}). {_EXPORT_HELP} For other SavedModels use "
            "keras.layers.TFSMLayer or tf.saved_model.load directly.")


def find_saved_model(path):
    """The simclr_tf SavedModel at ``path`` or ``path/saved_model``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        NotSimCLRExportError: ``path`` holds no SavedModel, or one that
            simclr_tf did not write.
    """
    path = os.fspath(path)
    _require_exists(path)
    _require_finished(path)
    _require_finished_parent(path)
    inner = os.path.join(path, SAVED_MODEL_SUBDIR)
    for candidate in (path, inner):
        if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
            _check_simclr_saved_model(candidate)
            return candidate
    raise NotSimCLRExportError(
        f"No SavedModel at {path!r} or {inner!r} (no saved_model.pb). {_EXPORT_HELP}")


@keras.saving.register_keras_serializable(package="simclr_tf")
class SimCLREncoderLayer(keras.layers.TFSMLayer):
    """An exported SimCLR encoder as a Keras layer (see :func:`load_encoder`).

    A :class:`keras.layers.TFSMLayer` on the ``serve`` / ``serve_training``
    endpoints that (a) can return one output instead of the dict, (b) runs
    the inference endpoint whenever it is not trainable, so a frozen encoder
    keeps its BatchNorm statistics inside ``fit`` like a frozen built-in
    Keras layer does, and (c) names its weights so that optimizers with
    per-weight state (momentum, Adam) work: with Keras 3.15 a plain
    ``TFSMLayer`` can only be fine-tuned with plain SGD, because its weight
    names keep TensorFlow's ``:0`` suffix, which the optimizer copies into
    the names of its slot variables, where ``:`` is rejected.

    Args:
        filepath: the SavedModel directory.
        output: key of the output to return (e.g. ``"final_avg_pool"``), or
            None for the dict of all outputs.
        trainable: fine-tune the encoder's weights with the model.
        call_endpoint, call_training_endpoint: endpoint names.

    Example::

        encoder = SimCLREncoderLayer("runs/x/saved_model", output="final_avg_pool")
        features = encoder(images)            # [B, C]

    Reference: Chen et al. 2020, arXiv:2002.05709.
    """

    def __init__(self, filepath, output=None, call_endpoint=SERVE,
                 call_training_endpoint=SERVE_TRAINING, trainable=False, name=None,
                 dtype=None):
        super().__init__(filepath, call_endpoint=call_endpoint,
                         call_training_endpoint=call_training_endpoint,
                         trainable=trainable, name=name, dtype=dtype)
        self.output_key = output
        if output is not None:
            fn = self.call_endpoint_fn
            keys = (getattr(fn, "concrete_functions", None) or [fn])[0].structured_outputs
            if output not in keys:
                raise ValueError(f"output={output!r} is not an output of the SavedModel; "
                                 f"choose one of {sorted(keys)}.")

    def _add_existing_weight(self, weight):
        # As TFSMLayer does, minus the ":0" of the TF variable name: Keras 3
        # optimizers name their slot variables after it, and ":" is not valid
        # there (momentum or Adam would fail on a plain TFSMLayer).
        variable = keras.Variable(
            initializer=weight, trainable=weight.trainable, dtype=weight.dtype,
            shape=weight.shape, name=weight.name.split(":")[0].replace("/", "_"))
        self._track_variable(variable)

    def call(self, inputs, training=False):
        if training and self.trainable and self.call_training_endpoint:
            outputs = self.call_training_endpoint_fn(inputs)
        else:
            outputs = self.call_endpoint_fn(inputs)
        if self.output_key is not None:
            return outputs[self.output_key]
        return outputs

    def get_config(self):
        config = super().get_config()
        config["output"] = self.output_key
        return config


def load_encoder(path, output=REPRESENTATION, trainable=False):
    """Loads an exported SimCLR encoder as a Keras layer.

    Args:
        path: a model_dir (uses ``path/saved_model``) or a SavedModel directory.
        output: the output to return: ``"final_avg_pool"`` (h, default),
            ``"proj_head_output"``, ``"proj_head_hidden_<i>"``, ``"logits_sup"``,
            or None for the dict of all of them.
        trainable: False (default) freezes the encoder: it always runs in
            inference mode. True fine-tunes it inside ``fit`` (training-mode
            BatchNorm through the ``serve_training`` endpoint).

    Returns:
        A :class:`SimCLREncoderLayer` taking float32 images in [0, 1] of shape
        ``[B, S, S, 3]`` at the trained image size S.

    Example::

        encoder = simclr_tf.export.load_encoder("runs/cifar10")
        inputs = keras.Input([32, 32, 3])
        logits = keras.layers.Dense(10)(encoder(inputs))
        classifier = keras.Model(inputs, logits)
    """
    return SimCLREncoderLayer(find_saved_model(path), output=output, trainable=trainable)


def _keras_class_name(path):
    """The top-level ``class_name`` in a ``.keras`` archive's config, or None."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f, zipfile.ZipFile(f) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, tf.errors.OpError):
        return None
    return config.get("class_name") if isinstance(config, dict) else None


def load_keras_model(path):
    """Loads ``simclr.keras`` (or a model_dir holding it) as a SimCLRModel.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        NotSimCLRExportError: ``path`` holds no ``simclr.keras``, or a file
            that is not a saved SimCLRModel (checked before anything is
            deserialised).
    """
    path = os.fspath(path)
    _require_exists(path)
    _require_finished(path)
    _require_finished_parent(path)
    if tf.io.gfile.isdir(path):
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            raise NotSimCLRExportError(
                f"{path!r} is a SavedModel directory, not a .keras file: load it with "
                f"simclr_tf.export.load_encoder({path!r}), or pass the model_dir that "
                f"holds {KERAS_FILENAME}.")
        keras_path = os.path.join(path, KERAS_FILENAME)
        if not tf.io.gfile.exists(keras_path):
            raise NotSimCLRExportError(f"No {KERAS_FILENAME} in {path!r}. {_EXPORT_HELP}")
        path = keras_path
    class_name = _keras_class_name(path)
    if class_name != simclr_model.SimCLRModel.__name__:
        what = (f"a Keras model of class {class_name!r}" if class_name
                else "not a .keras archive")
        raise NotSimCLRExportError(
            f"{path!r} is {what}, not a saved SimCLRModel. {_EXPORT_HELP}")
    return keras.models.load_model(path)
