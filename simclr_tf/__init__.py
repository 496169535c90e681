"""simclr_tf: SimCLR (v1 and v2) for TensorFlow 2 / Keras 3.

The package runs on Keras 3 with the TensorFlow backend only: the training loop
uses ``tf.distribute`` and ``tf.data`` directly. Importing it selects that
backend when none was chosen, and fails with a clear message when another one
was.
"""

import os

_BACKEND_ENV = "KERAS_BACKEND"
if os.environ.get(_BACKEND_ENV, "tensorflow") != "tensorflow":
    raise ImportError(
        f"simclr_tf needs the TensorFlow Keras backend, but {_BACKEND_ENV}="
        f"{os.environ[_BACKEND_ENV]!r}. Unset it or set {_BACKEND_ENV}=tensorflow "
        "before starting Python."
    )
os.environ.setdefault(_BACKEND_ENV, "tensorflow")

from simclr_tf import _tf_env  # noqa: E402,F401  (oneDNN on AVX2 CPUs; before TF)
import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "simclr_tf needs the TensorFlow Keras backend, but Keras is running on "
        f"{keras.backend.backend()!r} (set in ~/.keras/keras.json or before "
        "simclr_tf was imported). Set KERAS_BACKEND=tensorflow and restart Python."
    )

__version__ = "0.1.0"
