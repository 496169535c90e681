"""simclr_tf: SimCLR (v1 and v2) for TensorFlow 2 / Keras 3.

The public API, importable from the package itself::

    from simclr_tf import SimCLRModel, nt_xent_loss, NTXentLoss, LARS, WarmUpAndCosine
    from simclr_tf import Config, load_encoder, export_model

Names are loaded on first use, so ``import simclr_tf`` is cheap and changes
nothing in the environment; the command-line entry points tune TensorFlow
(:mod:`simclr_tf.env`) before they import it.

The package runs on Keras 3 with the TensorFlow backend only (the training
loop uses ``tf.distribute`` and ``tf.data`` directly): importing the models
(``simclr_tf.models``) fails with a clear message on another backend.
"""

import importlib
import os

__version__ = "0.2.0"

_BACKEND_ENV = "KERAS_BACKEND"
if os.environ.get(_BACKEND_ENV, "tensorflow") != "tensorflow":
    raise ImportError(
        f"simclr_tf needs the TensorFlow Keras backend, but {_BACKEND_ENV}="
        f"{os.environ[_BACKEND_ENV]!r}. Unset it or set {_BACKEND_ENV}=tensorflow "
        "before starting Python.")

# Public name -> module that defines it.
_PUBLIC = {
    "Config": "simclr_tf.config",
    "ConfigError": "simclr_tf.errors",
    "RunError": "simclr_tf.errors",
    "NotSimCLRExportError": "simclr_tf.errors",
    "SimCLRModel": "simclr_tf.models.simclr_model",
    "build_model": "simclr_tf.tasks",
    "ResNet": "simclr_tf.models.resnet",
    "ProjectionHead": "simclr_tf.models.heads",
    "SupervisedHead": "simclr_tf.models.heads",
    "nt_xent_loss": "simclr_tf.losses",
    "NTXentLoss": "simclr_tf.losses",
    "distillation_loss": "simclr_tf.losses",
    "LARS": "simclr_tf.lars",
    "WarmUpAndCosine": "simclr_tf.optimizers",
    "step_counts": "simclr_tf.optimizers",
    "build_task": "simclr_tf.tasks",
    "TaskModel": "simclr_tf.runtime",
    "export_model": "simclr_tf.export",
    "load_encoder": "simclr_tf.export",
    "load_keras_model": "simclr_tf.export",
    "SimCLREncoderLayer": "simclr_tf.export",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'simclr_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
