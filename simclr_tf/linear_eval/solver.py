"""The linear classifier on frozen features and its one solver: preconditioned L-BFGS.

What: multinomial logistic regression on standardised features, minimising
mean cross-entropy + ``l2 * ||W||^2 / 2`` (the bias is not penalised), by
full-batch L-BFGS (Nocedal and Wright, "Numerical Optimization", 2nd ed.,
algorithms 7.4-7.5, with Armijo backtracking) preconditioned by the inverse
Hessian at zero weights. Why: it converges to the optimum of the objective
the protocol defines, with no learning rate or step budget to tune, and the
same features always give the same weights. docs/linear_eval.md compares it
with the mini-batch Adam it replaced.

Scale: one evaluation of the objective is one pass over the rows in chunks
(:func:`.features.chunks`), so a memmap of any size is never held in memory;
what stays in memory is the L-BFGS history (``2 x memory`` vectors of
``(D + 1) x C`` float64) and the preconditioner's ``D x D`` eigenvectors.
Matrix products run in TensorFlow (each a function traced once per process),
vector arithmetic of the L-BFGS recursion in NumPy float64.
"""

import math
import time

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf.linear_eval.features import chunks, num_rows

DEFAULT_L2 = 1e-4  # a single fit's, and the protocol's when nothing can be held out
LBFGS_MAX_ITER = 1000
LBFGS_GTOL = 5e-5  # stop when no component of the gradient of the mean loss is larger
LBFGS_MEMORY = 10  # (s, y) pairs kept
CURVATURE_ROWS = 20_000  # rows the preconditioner's second moment is estimated from

_F32, _F64 = tf.float32, tf.float64


def standardisation(features, rows=None):
    """``(mean float32 [D], inv_std float32 [D])`` of ``features`` (``[rows]``)
    in two passes over chunks, summed in float64; ``inv_std = 1 / (std + 1e-6)``."""
    n = max(num_rows(features, rows), 1)
    total = np.zeros(features.shape[1], np.float64)
    for chunk in chunks(features, rows=rows):
        total += chunk.sum(axis=0, dtype=np.float64)
    mean = (total / n).astype(np.float32)
    squares = np.zeros(features.shape[1], np.float64)
    for chunk in chunks(features, rows=rows):
        centred = chunk - mean
        squares += np.einsum("nd,nd->d", centred, centred, dtype=np.float64)
    return mean, (1.0 / (np.sqrt(squares / n) + 1e-6)).astype(np.float32)


class LinearClassifier:
    """A fitted classifier: ``clf(features, rows=None) -> logits [N, C]`` (read in chunks).

    Attributes: ``w`` [D, C], ``b`` [C] (float32), ``mean``, ``inv_std``
    (the standardisation), ``l2``, ``loss`` (the objective at the end),
    ``steps`` (L-BFGS iterations) and ``solver`` (``"lbfgs"``).
    """

    solver = "lbfgs"

    def __init__(self, w, b, mean, inv_std, l2, loss, steps):
        self.w, self.b = np.asarray(w, np.float32), np.asarray(b, np.float32)
        self.mean, self.inv_std = mean, inv_std
        self.l2, self.loss, self.steps = float(l2), float(loss), int(steps)

    def __call__(self, features, rows=None):
        out = [((chunk - self.mean) * self.inv_std) @ self.w + self.b
               for chunk in chunks(features, rows=rows)]
        return np.concatenate(out) if out else np.zeros((0, len(self.b)), np.float32)


@tf.function(input_signature=[
    tf.TensorSpec([None, None], _F32), tf.TensorSpec([None], tf.int32),
    tf.TensorSpec([None], _F32), tf.TensorSpec([None], _F32),
    tf.TensorSpec([None, None], _F32), tf.TensorSpec([None], _F32)])
def _chunk_sums(x, labels, mean, inv_std, w, b):
    z = (x - mean) * inv_std
    logits = tf.matmul(z, w) + b
    lse = tf.reduce_logsumexp(logits, axis=1)
    loss = tf.reduce_sum(lse - tf.gather(logits, labels, batch_dims=1))
    dlogits = tf.exp(logits - lse[:, None]) - tf.one_hot(labels, tf.shape(w)[1])
    return (tf.cast(loss, _F64), tf.cast(tf.matmul(z, dlogits, transpose_a=True), _F64),
            tf.cast(tf.reduce_sum(dlogits, axis=0), _F64))


def cross_entropy_sums(x, labels, mean, inv_std, w, b):
    """Summed (not averaged) cross-entropy of one chunk of rows ``x`` at
    ``labels``, logits ``((x - mean) * inv_std) @ w + b``, and its gradients
    in ``w`` [D, C] and ``b`` [C]: ``(loss, grad_w, grad_b)``, NumPy float64,
    computed in float32."""
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return tuple(t.numpy() for t in _chunk_sums(f32(x), np.asarray(labels, np.int32),
                                                 f32(mean), f32(inv_std), f32(w), f32(b)))


class _Objective:
    """``objective(params float64, l2) -> (loss, gradient)``: the mean over
    ``x[rows]``, one pass in chunks; ``params`` is ``W`` [D, C] raveled, then ``b``."""

    def __init__(self, x, y, rows, stats, num_classes):
        self.x, self.y, self.rows, self.stats = x, y, rows, stats
        self.n, self.dim, self.num_classes = num_rows(x, rows), x.shape[1], num_classes

    def unpack(self, params):
        split = self.dim * self.num_classes
        return params[:split].reshape(self.dim, self.num_classes), params[split:]

    def __call__(self, params, l2):
        w, b = self.unpack(params)
        loss, grad_w, grad_b = 0.0, np.zeros_like(w), np.zeros_like(b)
        for chunk, labels in chunks(self.x, self.y, self.rows):
            sums = cross_entropy_sums(chunk, labels, *self.stats, w, b)
            loss, grad_w, grad_b = loss + sums[0], grad_w + sums[1], grad_b + sums[2]
        loss = loss / self.n + 0.5 * l2 * float(np.sum(w * w))
        return loss, np.concatenate([(grad_w / self.n + l2 * w).ravel(), grad_b / self.n])


def curvature(x, stats, rows=None):
    """``(eigenvalues, eigenvectors)`` (float64) of the standardised features'
    second moment ``Z^T Z / n``, from at most :data:`CURVATURE_ROWS` evenly
    spaced rows of ``x[rows]``."""
    n = num_rows(x, rows)
    if n > CURVATURE_ROWS:
        rows = (np.arange(n) if rows is None else np.asarray(rows))[
            np.linspace(0, n - 1, CURVATURE_ROWS).astype(np.int64)]
        n = CURVATURE_ROWS
    mean, inv_std = stats
    moment = tf.zeros([x.shape[1]] * 2, _F64)
    for chunk in chunks(x, rows=rows):
        z = (chunk - mean) * inv_std
        moment += tf.cast(tf.matmul(z, z, transpose_a=True), _F64)
    values, vectors = tf.linalg.eigh(moment / max(n, 1))
    return np.maximum(values.numpy(), 0.0), vectors.numpy()


@tf.function(input_signature=[tf.TensorSpec([None, None], _F64), tf.TensorSpec([None], _F64),
                              tf.TensorSpec([None, None], _F64)])
def _in_eigenbasis(vectors, scale, w):
    """``vectors @ diag(scale) @ vectors^T @ w``."""
    return tf.matmul(vectors, scale[:, None] * tf.matmul(vectors, w, transpose_a=True))


def preconditioner(eigen, num_classes, l2):
    """``v -> H0 v``, the inverse Hessian at zero weights up to the class-sum
    direction: ``(Sigma / C + l2 I)^-1`` on each class's weights (``Sigma``
    the second moment of :func:`curvature`) and ``C`` on the bias."""
    values, vectors = eigen
    c = 1.0 / num_classes
    # Floor: a direction of (near) zero variance has no curvature but l2's.
    inverse = 1.0 / np.maximum(c * values + l2, 1e-9 * c * max(values.max(), 1.0))
    dim, vectors, inverse = len(values), tf.constant(vectors), tf.constant(inverse)

    def apply(v):
        w = _in_eigenbasis(vectors, inverse, v[:dim * num_classes].reshape(dim, num_classes))
        return np.concatenate([w.numpy().ravel(), v[dim * num_classes:] * num_classes])

    return apply


def _direction(grad, pairs, precondition):
    """``-H grad`` by the two-loop recursion over ``(s, y, 1 / s.y)`` pairs,
    oldest first; the initial inverse Hessian is ``gamma * H0`` with
    ``gamma = s.y / y.H0 y`` of the newest pair (Nocedal and Wright, eq. 7.20)."""
    q = grad.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * (s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        q = precondition(q) * ((s @ y) / (y @ precondition(y)))
    else:
        q = precondition(q)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q += (alpha - rho * (y @ q)) * s
    return -q


def lbfgs(fun, x0, *, max_iter=LBFGS_MAX_ITER, gtol=LBFGS_GTOL, memory=LBFGS_MEMORY,
          precondition=None):
    """Minimises ``fun(x) -> (f, grad)`` from ``x0``; returns ``(x, f, iterations)``.

    Stops when no gradient component exceeds ``gtol`` (at ``x0`` already: 0
    iterations), when no step along the direction lowers ``f`` (the float32
    noise floor of the objective), or after ``max_iter`` iterations.
    ``precondition``: ``v -> H0 v``, an approximate inverse Hessian
    (symmetric positive definite); with it the first step is tried at full
    length, without it at length ``min(1, 1 / |grad|)``.
    """
    h0 = precondition or (lambda v: v)
    x = np.array(x0, np.float64)
    f, g = fun(x)
    pairs, iteration = [], 0
    while iteration < max_iter and np.abs(g).max(initial=0.0) > gtol:
        iteration += 1
        d = _direction(g, pairs, h0)
        if not g @ d < 0:  # not a descent direction: forget the history
            pairs = []
            d = _direction(g, pairs, h0)
        slope = g @ d
        if not slope < 0:
            break
        t = 1.0 if pairs or precondition else min(1.0, 1.0 / math.sqrt(g @ g))
        for _ in range(40):
            f_new, g_new = fun(x + t * d)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        s, y = t * d, g_new - g
        if s @ y > 1e-10 * (y @ y):
            pairs = (pairs + [(s, y, 1.0 / (s @ y))])[-memory:]
        x, f, g = x + s, f_new, g_new
    return x, f, iteration


def fit_path(x, y, rows, num_classes, stats, l2s, *, init=None, eigen=None,
             max_iter=LBFGS_MAX_ITER, gtol=LBFGS_GTOL):
    """One :class:`LinearClassifier` per l2 of ``l2s`` (in that order), fitted on ``x[rows]``.

    The l2 values are fitted as a path, as scikit-learn's
    ``LogisticRegressionCV`` does: the strongest first, from ``init`` (a
    :class:`LinearClassifier`) or zero weights, every weaker one from the
    previous solution. A start that already meets ``gtol`` is kept (0
    iterations). ``eigen``: :func:`curvature` of the training features
    (default: computed from ``x[rows]``).
    """
    objective = _Objective(x, np.asarray(y, np.int32), rows, stats, num_classes)
    if eigen is None:
        eigen = curvature(x, stats, rows)
    params = np.zeros((x.shape[1] + 1) * num_classes)
    if init is not None:
        params = np.concatenate([np.ravel(init.w), np.ravel(init.b)]).astype(np.float64)
    fitted = {}
    for l2 in sorted(set(l2s), reverse=True):
        start = time.monotonic()
        params, loss, iterations = lbfgs(
            lambda p, l2=l2: objective(p, l2), params, max_iter=max_iter, gtol=gtol,
            precondition=preconditioner(eigen, num_classes, l2))
        logging.info("linear eval: L-BFGS, l2 %g, %d rows: %d iterations, loss %.6f (%.2f s)",
                     l2, objective.n, iterations, loss, time.monotonic() - start)
        fitted[l2] = LinearClassifier(*objective.unpack(params), *stats, l2, loss, iterations)
    return [fitted[l2] for l2 in l2s]


def fit_logistic_regression(features, labels, num_classes, l2=DEFAULT_L2, *, rows=None,
                            stats=None, init=None, max_iter=LBFGS_MAX_ITER, gtol=LBFGS_GTOL):
    """One fit of the objective; returns a :class:`LinearClassifier`.

    ``stats``: the standardisation (default: :func:`standardisation` of the
    rows fitted); ``rows``: fit on ``features[rows]`` only (sorted indices);
    ``init``: a :class:`LinearClassifier` to start from. ``features`` may be
    a memmap: it is read in chunks.
    """
    if stats is None:
        stats = standardisation(features, rows)
    return fit_path(features, labels, rows, num_classes, stats, (l2,), init=init,
                    max_iter=max_iter, gtol=gtol)[0]
