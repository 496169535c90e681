"""SavedModel and ``.keras`` export of a SimCLR model, and loading helpers.

:func:`export_model` writes two artifacts into a model directory:

``saved_model/``
    A TensorFlow SavedModel (built with :class:`keras.export.ExportArchive`)
    that needs neither ``simclr_tf`` nor its custom classes to load. Endpoints:

    * ``serve(images)``: float32 images in [0, 1], shape ``[B, S, S, 3]`` at
      the trained ``image_size`` S; every BatchNormalization layer in
      inference mode (moving statistics). Returns a dict of float32 tensors:
      ``final_avg_pool`` (the representation h, the one to reuse),
      ``proj_head_output`` (z), ``proj_head_hidden_<i>`` for each projection
      layer i >= 1 and, when the run had labels, ``logits_sup``.
      Also the ``serving_default`` signature.
    * ``serve_training(images)``: the same forward pass in training mode (BN
      normalises with batch statistics and updates its moving averages), so
      that ``keras.layers.TFSMLayer(path, call_endpoint="serve",
      call_training_endpoint="serve_training", trainable=True)`` can be
      fine-tuned inside ``model.fit``.
    * ``serve_uint8(images)``: uint8 images ``[B, H, W, 3]`` of any H and W
      (one size per batch), preprocessed exactly as evaluation does
      (:func:`simclr_tf.data.augment.preprocess_for_eval`: centre crop above
      32 px, bicubic resize to S, clip) and then passed to ``serve``.

    ``saved_model/assets.extra/simclr_tf.json`` records the package version,
    the image size and the output names; the loading helpers recognise our
    exports by it and raise :class:`NotSimCLRExportError` for anything else
    (older exports without it are recognised by their signatures).

``simclr.keras``
    The whole :class:`~simclr_tf.models.simclr_model.SimCLRModel` (config and
    weights, no optimizer state) for ``keras.models.load_model`` in a process
    that has imported ``simclr_tf.export`` (which registers the custom
    classes), or :func:`load_keras_model`.

Both are written to temporary paths next to the targets and moved into place
only once everything has been written, so a failed or interrupted export
never replaces a good one.

The export works on copies of the model built outside any distribution
strategy (weights copied over), so the same code exports from TPU, multi-GPU
and multi-worker runs, and the run's model is left as it was. In the
SavedModel every layer is trainable (a linear-eval run with a frozen encoder
still exports an encoder that can be fine-tuned; pass ``trainable=False`` to
``TFSMLayer`` or use :func:`load_encoder` to freeze it) and BatchNorm is
per-device (``global_bn`` only matters inside a multi-replica strategy, and
the exported functions are traced outside one). ``simclr.keras`` keeps the
run's config as it is.

Example (the reusing process does not need ``simclr_tf``)::

    import keras
    encoder = keras.layers.TFSMLayer("runs/cifar10/saved_model",
                                     call_endpoint="serve")
    h = encoder(images)["final_avg_pool"]      # images: [B, 32, 32, 3] in [0, 1]

Reference: Chen et al., "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020 (arXiv:2002.05709).
"""

import contextlib
import json
import logging
import os
import uuid
import zipfile

import keras
import tensorflow as tf
from absl import logging as absl_logging

from simclr_tf.data import augment
# Registers every Keras class of a SimCLRModel, so that importing this module is
# enough for keras.models.load_model("model_dir/simclr.keras").
from simclr_tf.models import heads, resnet, simclr_model  # noqa: F401

SAVED_MODEL_SUBDIR = "saved_model"
KERAS_FILENAME = "simclr.keras"
INFO_FILE = os.path.join("assets.extra", "simclr_tf.json")
SERVE = "serve"
SERVE_TRAINING = "serve_training"
SERVE_UINT8 = "serve_uint8"

__all__ = [
    "SAVED_MODEL_SUBDIR", "KERAS_FILENAME", "SERVE", "SERVE_TRAINING", "SERVE_UINT8",
    "export_model", "export_run", "restore_latest", "load_encoder",
    "load_keras_model", "find_saved_model", "read_export_info", "SimCLREncoderLayer",
    "NotSimCLRExportError",
]


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
            "representation": "final_avg_pool"}
    from simclr_tf import __version__
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


def _remove(path):
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


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
        _remove(path)


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
        _remove(old)


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
        _remove(sm_tmp)
        _remove(keras_tmp)
    paths = {"saved_model": sm_target}
    if keras_file:
        paths["keras"] = keras_target
    return paths


def restore_latest(session):
    """Restores the newest readable checkpoint of ``session.cfg.model_dir``.

    The same fallback as training (:meth:`simclr_tf.trainer.Session.resume`):
    a corrupt or truncated newest checkpoint is skipped with a warning and the
    previous one is used. Raises ``trainer.RunError`` with what to do when
    there is no checkpoint, none is readable, or they do not match the
    session's model.

    Returns:
        The prefix of the restored checkpoint.
    """
    from simclr_tf import trainer

    directory = os.path.join(session.cfg.model_dir, trainer.CHECKPOINT_SUBDIR)
    if not trainer.checkpoint_candidates(directory):
        raise trainer.RunError(
            f"Nothing to export: {directory!r} holds no checkpoint. Train first "
            "(--mode=train or train_then_eval) or point --model_dir at a finished run.")
    resumed = session.resume()
    absl_logging.info("Export: %s", resumed)
    return session.restored_checkpoint


def export_run(session, restore=False):
    """Exports the model of a ``trainer.Session`` into its ``model_dir``.

    Args:
        session: a :class:`simclr_tf.trainer.Session`.
        restore: first restore the latest checkpoint of ``model_dir``
            (``--mode=export``); raises ``trainer.RunError`` if there is none.

    Returns:
        dict of the written paths (see :func:`export_model`).
    """
    from simclr_tf import trainer

    if restore:
        restore_latest(session)
    try:
        return export_model(session.model, session.cfg.model_dir, session.cfg.image_size)
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise trainer.RunError(
            f"Export to {session.cfg.model_dir!r} failed ({type(e).__name__}: {e}). "
            "Any previous export there is unchanged.") from e


# -------------------------------------------------------------------- loading
class NotSimCLRExportError(ValueError):
    """A path exists but does not hold a ``simclr_tf`` export.

    Raised by :func:`find_saved_model`, :func:`load_encoder` and
    :func:`load_keras_model` for a directory without a SavedModel, another
    program's SavedModel or ``.keras`` file, and the like. A path that does
    not exist raises ``FileNotFoundError`` instead.
    """


_EXPORT_HELP = ("Expected a model_dir written by simclr_tf (holding saved_model/ and "
                "simclr.keras) or its saved_model/ directory; export one with "
                "`python -m simclr_tf.run --mode=export --model_dir=...`.")
# What an export made before the marker file existed must offer.
_REQUIRED_SIGNATURES = {SERVE: "final_avg_pool", SERVE_TRAINING: "final_avg_pool"}


def _require_exists(path):
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist. {_EXPORT_HELP}")


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
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

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


def load_encoder(path, output="final_avg_pool", trainable=False):
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
