"""A picture of the augmented views: pairs side by side, one image per row.

Used by ``python -m simclr_tf.views`` (a PNG for any config) and by the
training report (a few pairs in TensorBoard at every log point).
"""

import tensorflow as tf

GAP = 2  # pixels of white between the two views and between rows


def grid(views, scale=1):
    """uint8 [rows * (S*scale + GAP), 2 * S*scale + GAP, 3] of ``views``' pairs.

    Args:
        views: a pretraining batch's views, ``{"view1", "view2"}`` float
            [N, S, S, 3] in [0, 1]; row i shows view 1 | view 2 of image i
            (a ``clean`` view is not shown).
        scale: integer upscaling (nearest neighbour), so 32 px views can be seen.
    """
    first = tf.convert_to_tensor(views["view1"], tf.float32)
    second = tf.convert_to_tensor(views["view2"], tf.float32)
    size = int(first.shape[1]) * int(scale)
    resize = lambda x: tf.image.resize(x, [size, size], method="nearest")  # noqa: E731
    white = tf.ones([tf.shape(first)[0], size, GAP, 3])
    rows = tf.concat([resize(first), white, resize(second)], axis=2)
    rows = tf.pad(rows, [[0, 0], [0, GAP], [0, 0], [0, 0]], constant_values=1.0)
    picture = tf.reshape(rows, [-1, 2 * size + GAP, 3])[:-GAP]
    return tf.image.convert_image_dtype(tf.clip_by_value(picture, 0.0, 1.0), tf.uint8,
                                        saturate=True)


def pairs_dataset(task, cfg, num_pairs):
    """The first ``num_pairs`` images of ``task``'s training stream of ``cfg``, as one batch."""
    ds, _ = task.build_inputs(cfg.data, cfg.augment, num_pairs)
    return ds
