"""The networks: ResNet encoder, heads and the SimCLR model (forward passes only)."""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "simclr_tf needs the TensorFlow Keras backend, but Keras is running on "
        f"{keras.backend.backend()!r} (set in ~/.keras/keras.json or KERAS_BACKEND). "
        "Set KERAS_BACKEND=tensorflow and restart Python.")
