"""Reads a SavedModel fixture of the official SimCLR TF2 code with its values.

``../shared/fixtures/official_tf2/<name>/`` holds a zeroed official export
(``saved_model.tar.xz``) and the folder's ``fill.py`` gives each variable's value
(the fixtures' README). Used by ``benchmarks/official_step.py`` and
``tests/test_convert.py``; the package itself never reads ``../shared``.
"""

import importlib.util
import os
import pathlib
import tarfile

import tensorflow as tf


def parts(loaded):
    """The official model's parts that hold every variable: ResNet, projection
    head, supervised head."""
    return (loaded.model.resnet_model, loaded.model._projection_head,
            loaded.model.supervised_head)


def load_filled(fixtures, name, scratch):
    """(the SavedModel directory unpacked under ``scratch``, the official model
    loaded from it with ``fill.py``'s values assigned)."""
    with tarfile.open(os.path.join(fixtures, name, "saved_model.tar.xz")) as tar:
        tar.extractall(os.path.join(scratch, name), filter="data")
    found = [p.parent for p in pathlib.Path(scratch, name).rglob("saved_model.pb")]
    if len(found) != 1:
        raise ValueError(f"{name}: expected one saved_model.pb in the archive, found {found}")
    loaded = tf.saved_model.load(str(found[0]))
    spec = importlib.util.spec_from_file_location("official_fill",
                                                  os.path.join(fixtures, "fill.py"))
    fill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fill)
    for part in parts(loaded):
        for v in part.variables:
            v.assign(fill.fill(v.name, v.shape))
    return found[0], loaded
