"""File helpers shared by every layer: remote paths and atomic writes.

Paths may be local or any ``tf.io.gfile`` URL (``gs://...``). Everything that
replaces a file a user may already have (``config.yaml``, ``result.json``,
``train_log.jsonl``, the image-folder manifest) goes through
:func:`atomic_write`: the new content is written to a temporary file beside
the target and renamed over it, so a crash leaves the old file or the new
one, never half of one. (On object stores a rename is a copy; it is still
never a partial write of the target.)
"""

import json
import os

import tensorflow as tf


def is_remote(path):
    """True for ``scheme://`` paths (GCS, S3, HDFS ...), read through tf.io.gfile."""
    return "://" in os.fspath(path)


def exists(path):
    return tf.io.gfile.exists(path)


def read_text(path):
    with tf.io.gfile.GFile(path) as f:
        return f.read()


def atomic_write(path, content):
    """Writes ``content`` (str or bytes) to ``path`` through a temporary file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    mode = "wb" if isinstance(content, bytes) else "w"
    try:
        with tf.io.gfile.GFile(tmp, mode) as f:
            f.write(content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def atomic_write_json(obj, path):
    atomic_write(path, json.dumps(obj, indent=2))


def remove(path):
    """Removes a file or a directory tree; nothing when ``path`` does not exist."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
