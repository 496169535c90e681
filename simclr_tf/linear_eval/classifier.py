"""The linear classifier on standardised features, and its cross-entropy on one chunk.

Multinomial logistic regression: logits ``((x - mean) * inv_std) @ W + b``.
Both solvers (:mod:`.full_batch`, :mod:`.minibatch`) sum the cross-entropy
and its gradients over chunks of rows with :func:`loss_grad_sums`, which
evaluates ``G`` classifiers at once (one matmul forward, one back).
"""

import numpy as np
import tensorflow as tf

from simclr_tf.linear_eval import streaming


def group_logits(x, mean, inv_std, w, b):
    """Logits [n, G, C] of ``G`` classifiers ``w`` [D, G, C], ``b`` [G, C] on standardised x."""
    z = (x - mean) * inv_std
    shape = tf.shape(w)
    logits = tf.matmul(z, tf.reshape(w, [shape[0], -1]))
    return tf.reshape(logits, [-1, shape[1], shape[2]]) + b, z


def loss_grad_sums(x, y, mean, inv_std, w, b):
    """Summed (not averaged) cross-entropy [G] and its gradients over the rows of one chunk."""
    logits, z = group_logits(x, mean, inv_std, w, b)
    onehot = tf.one_hot(y, tf.shape(w)[2])[:, None, :]
    lse = tf.reduce_logsumexp(logits, axis=2)
    loss = tf.reduce_sum(lse - tf.reduce_sum(logits * onehot, axis=2), axis=0)
    dlogits = tf.exp(logits - lse[:, :, None]) - onehot
    grad_w = tf.matmul(z, tf.reshape(dlogits, [tf.shape(z)[0], -1]), transpose_a=True)
    return loss, tf.reshape(grad_w, tf.shape(w)), tf.reduce_sum(dlogits, axis=0)


class LinearClassifier:
    """A fitted classifier: ``clf(features) -> logits [N, C]`` (read in chunks).

    Attributes: ``w`` [D, C], ``b`` [C], ``mean``, ``inv_std`` (the
    standardisation), ``l2``, ``solver``, ``loss`` (the objective at the
    end), ``steps`` (L-BFGS iterations or Adam steps).
    """

    def __init__(self, w, b, mean, inv_std, l2, solver, loss, steps):
        self.w, self.b = np.asarray(w, np.float32), np.asarray(b, np.float32)
        self.mean, self.inv_std = mean, inv_std
        self.l2, self.solver, self.loss, self.steps = float(l2), solver, float(loss), int(steps)

    def __call__(self, features, rows=None):
        out = [((chunk - self.mean) * self.inv_std) @ self.w + self.b
               for chunk in streaming.chunks(features, rows=rows)]
        return np.concatenate(out) if out else np.zeros((0, len(self.b)), np.float32)
