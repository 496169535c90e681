"""The teacher of a distillation run: an exported simclr_tf SavedModel."""

import os

import tensorflow as tf

from simclr_tf.errors import ConfigError
from simclr_tf.export import reader
from simclr_tf.export.names import LOGITS, SAVED_MODEL_SUBDIR

_KEY = "'teacher_checkpoint'"


def _no_logits_error(path, outputs):
    return ConfigError(
        f"Invalid value {path!r} for {_KEY}: the teacher's outputs are "
        f"{sorted(outputs)}, without {LOGITS!r} (it was trained without labels). "
        "Distill from a fine-tuned run (--train_mode=finetune on labelled data).")


def _wrong_size_error(path, size, image_size):
    return ConfigError(
        f"The teacher {path!r} takes {size} px images but 'image_size' is "
        f"{image_size}: distill at the teacher's image_size.")


class Teacher:
    """Frozen teacher logits from an exported simclr_tf SavedModel.

    ``--train_mode=distill --teacher_checkpoint=PATH`` reads the SavedModel
    that :mod:`simclr_tf.export` wrote (``PATH`` is a run's ``model_dir`` or
    its ``saved_model/``) and calls its ``serve`` endpoint, which runs every
    BatchNormalization in inference mode, for the teacher logits
    ``logits_sup``. It is loaded with ``tf.saved_model.load`` (no simclr_tf
    classes needed) and is a plain Python object on purpose: Keras does not
    track it, so the teacher stays out of the student's weights, checkpoints
    and export. The marker file of the export is checked before anything is
    loaded (outputs, image size).

    Args:
        path: a run's model_dir or its ``saved_model/`` directory.
        image_size: the student's image size (the teacher's must match).

    Raises:
        ConfigError: ``path`` holds no SavedModel, one without ``logits_sup``
            or one at another image size (the message names the fix).

    Example::

        teacher = Teacher("runs/finetuned", image_size=32)
        logits = teacher(images)   # float32 [B, teacher.num_classes]

    Reference: Chen et al., "Big Self-Supervised Models are Strong
    Semi-Supervised Learners", NeurIPS 2020 (arXiv:2006.10029), section 2.3.
    """

    def __init__(self, path, image_size):
        self.path = path
        candidates = (path, os.path.join(path, SAVED_MODEL_SUBDIR))
        if not any(tf.io.gfile.exists(os.path.join(c, "saved_model.pb")) for c in candidates):
            raise ConfigError(
                f"Invalid value {path!r} for {_KEY}: no SavedModel there nor in "
                f"{candidates[1]!r}. Pass the model_dir of a fine-tuned run after its "
                "eval or --mode=export (it writes saved_model/).")
        try:
            saved_model = reader.find_saved_model(path)
        except ValueError as e:
            raise ConfigError(f"Invalid value {path!r} for {_KEY}: {e}") from None
        info = reader.read_export_info(saved_model) or {}
        if "outputs" in info and LOGITS not in info["outputs"]:
            raise _no_logits_error(path, info["outputs"])
        if info.get("image_size") not in (None, image_size):
            raise _wrong_size_error(path, info["image_size"], image_size)
        self._loaded = tf.saved_model.load(saved_model)
        serve = self._loaded.serve
        concrete = (getattr(serve, "concrete_functions", None) or [serve])[0]
        outputs = concrete.structured_outputs
        if LOGITS not in outputs:
            raise _no_logits_error(path, outputs)
        size = concrete.structured_input_signature[0][0].shape[1]
        if size not in (None, image_size):
            raise _wrong_size_error(path, size, image_size)
        self.num_classes = int(outputs[LOGITS].shape[-1])
        self._serve = serve

    def __call__(self, images):
        """Teacher logits (float32, no gradient) for images [B, S, S, 3] in [0, 1]."""
        logits = self._serve(tf.cast(images, tf.float32))[LOGITS]
        return tf.stop_gradient(tf.cast(logits, tf.float32))
