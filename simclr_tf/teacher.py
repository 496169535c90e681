"""The teacher of a distillation run: an exported simclr_tf SavedModel.

``--train_mode=distill --teacher_checkpoint=PATH`` reads the SavedModel that
``simclr_tf.export`` wrote (``PATH`` is a run's ``model_dir`` or its
``saved_model/``) and calls its ``serve`` endpoint, which runs every
BatchNormalization in inference mode, for the teacher logits ``logits_sup``.
The teacher is loaded with ``tf.saved_model.load`` (no simclr_tf classes
needed), is never trained, and is not part of the student's checkpoints or
export.

:func:`check_export` runs during config validation, before TensorFlow is
imported: for local paths it checks the SavedModel exists, records
``logits_sup`` among its outputs and was exported at the run's
``image_size`` (from ``saved_model/assets.extra/simclr_tf.json``).
"""

import json
import os

SAVED_MODEL_SUBDIR = "saved_model"  # as simclr_tf.export.SAVED_MODEL_SUBDIR
INFO_FILE = os.path.join("assets.extra", "simclr_tf.json")  # as export.INFO_FILE
LOGITS = "logits_sup"
_KEY = "'teacher_checkpoint'"


def _saved_model_dir(path, exists):
    for candidate in (path, os.path.join(path, SAVED_MODEL_SUBDIR)):
        if exists(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise ValueError(
        f"Invalid value {path!r} for {_KEY}: no SavedModel there nor in "
        f"{os.path.join(path, SAVED_MODEL_SUBDIR)!r}. Pass the model_dir of a "
        "fine-tuned run after its eval or --mode=export (it writes saved_model/).")


def _no_logits_error(path, outputs):
    return ValueError(
        f"Invalid value {path!r} for {_KEY}: the teacher's outputs are "
        f"{sorted(outputs)}, without {LOGITS!r} (it was trained without labels). "
        "Distill from a fine-tuned run (--train_mode=finetune on labelled data).")


def check_export(path, image_size):
    """Raises ValueError unless ``path`` is a usable teacher (local paths only)."""
    if "://" in path:
        return  # checked when the trainer loads it
    sm_dir = _saved_model_dir(path, os.path.exists)
    info_path = os.path.join(sm_dir, INFO_FILE)
    if not os.path.exists(info_path):
        return  # not written by simclr_tf.export: checked at load time
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    if LOGITS not in info.get("outputs", ()):
        raise _no_logits_error(path, info.get("outputs", ()))
    if info.get("image_size") not in (None, image_size):
        raise ValueError(
            f"The teacher {path!r} takes {info['image_size']} px images but "
            f"'image_size' is {image_size}: distill at the teacher's image_size.")


class Teacher:
    """Frozen teacher logits from an exported simclr_tf SavedModel.

    A plain Python object on purpose: Keras does not track it, so the teacher
    stays out of the student's weights, checkpoints and export.

    Args:
        path: a run's model_dir or its ``saved_model/`` directory.
        image_size: the student's image size (the teacher's must match).

    Example::

        teacher = Teacher("runs/finetuned", image_size=32)
        logits = teacher(images)   # float32 [B, teacher.num_classes]

    Reference: Chen et al., "Big Self-Supervised Models are Strong
    Semi-Supervised Learners", NeurIPS 2020 (arXiv:2006.10029), section 2.3.
    """

    def __init__(self, path, image_size):
        import tensorflow as tf

        from simclr_tf import export  # finds the SavedModel and checks it is ours

        self.path = path
        check_export(path, image_size)
        self._loaded = tf.saved_model.load(export.find_saved_model(path))
        serve = self._loaded.serve
        concrete = (getattr(serve, "concrete_functions", None) or [serve])[0]
        outputs = concrete.structured_outputs
        if LOGITS not in outputs:
            raise _no_logits_error(path, outputs)
        size = concrete.structured_input_signature[0][0].shape[1]
        if size not in (None, image_size):
            raise ValueError(f"The teacher {path!r} takes {size} px images but "
                             f"'image_size' is {image_size}.")
        self.num_classes = int(outputs[LOGITS].shape[-1])
        self._serve = serve

    def __call__(self, images):
        """Teacher logits (float32, no gradient) for images [B, S, S, 3] in [0, 1]."""
        import tensorflow as tf

        logits = self._serve(tf.cast(images, tf.float32))[LOGITS]
        return tf.stop_gradient(tf.cast(logits, tf.float32))
