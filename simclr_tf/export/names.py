"""Names of a simclr_tf export: files, endpoints, outputs (shared by writer and reader)."""

import os

SAVED_MODEL_SUBDIR = "saved_model"
KERAS_FILENAME = "simclr.keras"
INFO_FILE = os.path.join("assets.extra", "simclr_tf.json")
SERVE = "serve"
SERVE_TRAINING = "serve_training"
SERVE_UINT8 = "serve_uint8"
REPRESENTATION = "final_avg_pool"
LOGITS = "logits_sup"
