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

The package is split by direction: :mod:`simclr_tf.export.writer` writes,
:mod:`simclr_tf.export.reader` reads (also in processes that only reuse a
model), :mod:`simclr_tf.export.teacher` loads a distillation teacher, and
:mod:`simclr_tf.export.names` holds the names both sides agree on. Exporting
a *run* (restore its newest checkpoint, then write) is
:func:`simclr_tf.runtime.loop.export`.
"""

from simclr_tf.errors import NotSimCLRExportError
from simclr_tf.export.names import (INFO_FILE, KERAS_FILENAME, LOGITS, REPRESENTATION,
                                    SAVED_MODEL_SUBDIR, SERVE, SERVE_TRAINING, SERVE_UINT8)
from simclr_tf.export.reader import (SimCLREncoderLayer, find_saved_model, load_encoder,
                                     load_keras_model, read_export_info)
from simclr_tf.export.teacher import Teacher
from simclr_tf.export.writer import export_model

__all__ = [
    "SAVED_MODEL_SUBDIR", "KERAS_FILENAME", "INFO_FILE", "SERVE", "SERVE_TRAINING",
    "SERVE_UINT8", "REPRESENTATION", "LOGITS", "export_model", "load_encoder",
    "load_keras_model", "find_saved_model", "read_export_info", "SimCLREncoderLayer",
    "NotSimCLRExportError", "Teacher",
]
