"""Linear evaluation on frozen features: l2-regularised logistic regression on h.

The SimCLR paper measures transfer with "an l2-regularized multinomial
logistic regression classifier on features extracted from the frozen
pretrained network", its l2 strength chosen on a validation set (Chen et al.
2020, arXiv:2002.05709, appendix B.8). This module does the same for any
encoder, at any scale, including ImageNet (1.28M x 2048 features, 10.5 GB in
float32). It complements the linear probe trained during pretraining (which
sees augmented views of a moving encoder): this one reads a fixed encoder, so
it also scores a randomly initialised encoder, the baseline that pretraining
must beat.

The choices, in the order things happen:

* Extraction runs through the run's strategy: ``encoder(images,
  training=False)`` (BN in inference mode, no augmentation) per replica with
  ``strategy.run`` over the eval pipeline (:func:`pipeline.build_eval_dataset`,
  distributed by :func:`distribute.distribute_dataset`). Every batch is padded
  to the global batch size (label ``-2``, dropped again on the host), so
  replicas see equal, static shapes (TPU) and the last, partial batch needs no
  special case. Each replica's features are gathered to the host per batch
  (``experimental_local_results``, concatenated in replica order, which is the
  example order) as float32. Under several workers
  (``MultiWorkerMirroredStrategy``) only the chief evaluates, so extraction
  falls back to the chief's default strategy (logged).
* Unlabelled examples (label -1) are dropped, and with ``indices`` (a label
  subset's) only those examples are kept, before anything is stored.
* Storage: features are held in host memory when the split's (upper bound
  of) ``rows x dim x 4`` bytes is at most ``memory_limit`` (default
  :data:`MEMORY_LIMIT_BYTES`, 1 GiB), else written batch by batch to a raw
  float32 file in ``scratch_dir`` (default: ``tempfile.gettempdir()``, so
  ``TMPDIR`` moves it) and read back as a read-only ``np.memmap``. The file
  is written with ordinary ``write`` calls (a full disk is an ``OSError``, not
  the ``SIGBUS`` of writing through a mapping), free space is checked first,
  and the file is unlinked as soon as it is mapped (POSIX keeps the data until
  the mapping is dropped), so nothing is left behind, even after a crash.
  float32 rather than float16: the memmap and in-memory paths give identical
  numbers, and halving 10.5 GB of disk is not worth a second rounding.
* Everything after extraction streams over rows in chunks (about 64 MB each),
  so an in-memory array and a memmap take the same code path and give the
  same result bit for bit.
* Standardisation: per-feature mean and standard deviation of the training
  features (the whole training split, held-out part included: the statistics
  use no labels), computed in two streaming passes in float64.
* Classifier: multinomial logistic regression on the standardised features,
  objective ``mean cross-entropy + l2 * ||W||^2 / 2`` (the bias is not
  penalised), from zero weights.
* Optimiser, chosen by the work of one pass over the training split
  (``rows x dim x classes`` multiply-adds, :data:`FULL_BATCH_MAX_WORK` =
  2^35): up to it (offline_shapes, CIFAR-10/100, ImageNet 1%), full-batch
  L-BFGS (memory 10, Armijo backtracking, the gradient streamed over chunks)
  until an iteration lowers the loss by less than 1e-9 relative, or 1000
  iterations; above it (ImageNet 10% and 100%), mini-batch Adam
  (:data:`MINIBATCH_STEPS` = 3000 steps, rounded up to whole epochs, of
  :data:`MINIBATCH_ROWS` = 4096 rows, a seeded permutation each epoch,
  learning rate 1e-2 with a cosine decay to 0), a fixed budget whatever the
  number of rows. L-BFGS reaches the optimum of the objective (the tests
  check it against Newton's method).
  The mini-batch fit is the scalable approximation: on 100,000 x 256
  synthetic features of 100 classes it ended within 3e-4 of the L-BFGS loss
  (l2 1e-5 and 1e-3); with a learning rate of 1e-3 it stopped up to 0.2
  short on CIFAR features, hence 1e-2. Weights a tiny l2 leaves large are
  where it stops short first, which acts like early stopping.
* l2 selection: a seeded, class-stratified :data:`HELD_OUT_FRACTION` (10%,
  at most :data:`HELD_OUT_MAX` examples) of the training split is held out;
  a classifier is fitted on the rest for every l2 of :data:`L2_GRID`
  (1e-6 .. 1e-1, one per decade: on CIFAR-10 dev-set features of a
  ResNet-18 x0.5 the held-out top-1 peaked at 1e-3 .. 1e-2, fell at 1e-1 and
  1, and 1e-7 equalled 1e-6) and the one with the best held-out top-1
  wins (ties: the lower held-out cross-entropy, then the larger l2); then the
  classifier is refitted on the whole training split with it. Under the
  mini-batch optimiser all grid values train together as one wide layer (one
  read of each batch for the whole grid; Adam is per parameter, so this is
  the same as separate fits up to float32 rounding). With no held-out example (every class has one
  example), :data:`DEFAULT_L2` is used.
* Deterministic for fixed inputs: fixed chunking, a seeded split and seeded
  permutations, zero initialisation.

The result (:func:`fit_and_score`) has ``top1``, ``top5``, ``num_train``,
``num_eval``, and ``l2`` (the chosen value), ``heldout_top1`` (by l2),
``num_heldout`` and ``solver``.
"""

import math
import os
import shutil
import tempfile
import time
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf import distribute
from simclr_tf.data import pipeline
from simclr_tf.errors import RunError
from simclr_tf.progress import Progress

MEMORY_LIMIT_BYTES = 1 << 30  # features of a split above this go to a memmap on disk
L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_L2 = 1e-4  # when nothing can be held out
HELD_OUT_FRACTION = 0.1
HELD_OUT_MAX = 50_000
FULL_BATCH_MAX_WORK = 2 ** 35  # rows * dim * classes of one pass; above: mini-batch Adam
LBFGS_MAX_ITER = 1000
LBFGS_FTOL = 1e-9
MINIBATCH_ROWS = 4096
MINIBATCH_STEPS = 3000  # Adam steps of a mini-batch fit, whatever the number of rows
MINIBATCH_LEARNING_RATE = 1e-2
CHUNK_BYTES = 64 << 20  # rows streamed per chunk: about this many bytes of float32 features
PAD_LABEL = -2  # padding rows of the last batch; dropped on the host


# ---------------------------------------------------------------- extraction

def _forward(encoder, strategy):
    """A tf.function running ``encoder`` per replica; returns per-replica (features, labels)."""

    def replica_fn(images, labels):
        return tf.cast(encoder(images, training=False), tf.float32), labels

    @tf.function
    def run(images, labels):
        return strategy.run(replica_fn, args=(images, labels))

    return run


def _host(per_replica, strategy):
    """Per-replica values -> one NumPy array, replicas concatenated in order."""
    return np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(
        per_replica)])


def _feature_batches(encoder, dataset, strategy, progress=None):
    """Yields ``(features float32 [b, C], labels int32 [b])`` per global batch,
    padding rows (label ``PAD_LABEL``) dropped."""
    forward = _forward(encoder, strategy)
    for images, labels in dataset:
        feats, labels = forward(images, labels)
        feats = _host(feats, strategy).astype(np.float32, copy=False)
        labels = _host(labels, strategy).astype(np.int32, copy=False)
        real = labels != PAD_LABEL
        if not real.all():
            feats, labels = feats[real], labels[real]
        if progress is not None:
            progress.update(len(labels))
        yield feats, labels
    if progress is not None:
        progress.done()


def extract_features(encoder, dataset, progress=None, *, strategy=None):
    """Runs ``encoder(images, training=False)`` over ``(images, labels)``
    batches; returns (features float32 [N, C], labels int32 [N]).

    ``dataset``: a ``tf.data.Dataset`` (distributed here through
    ``strategy``) or a dataset distributed by ``strategy`` already.
    ``strategy``: default: the current one (``tf.distribute.get_strategy()``).
    ``progress``: an optional :class:`simclr_tf.progress.Progress` counting images.
    All features are held in memory: :func:`split_features` is the scalable path.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(dataset, tf.data.Dataset):
        dataset = strategy.experimental_distribute_dataset(dataset)
    feats, labels = [], []
    for f, l in _feature_batches(encoder, dataset, strategy, progress):
        feats.append(f)
        labels.append(l)
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(feats), np.concatenate(labels)


class _FeatureSink:
    """Collects feature rows in memory, or in a file read back as a memmap
    when ``max_rows x dim`` float32 exceeds ``memory_limit`` bytes."""

    def __init__(self, what, max_rows, memory_limit, scratch_dir):
        self.what, self.max_rows = what, int(max_rows)
        self.memory_limit, self.scratch_dir = memory_limit, scratch_dir
        self.rows, self.dim, self.array, self.file, self.path = 0, None, None, None, None

    def _open(self, dim):
        self.dim = dim
        size = self.max_rows * dim * 4
        if size <= self.memory_limit:
            self.array = np.empty((self.max_rows, dim), np.float32)
            return
        folder = self.scratch_dir or tempfile.gettempdir()
        os.makedirs(folder, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < size + (64 << 20):
            raise RunError(
                f"The frozen features of {self.what} need {size / 2**30:.1f} GiB of disk "
                f"in {folder!r}, which has {free / 2**30:.1f} GiB free. Point TMPDIR at a "
                "larger disk, or turn the frozen-feature evaluations off with "
                "--feature_linear_eval=false --knn_eval=false.")
        fd, self.path = tempfile.mkstemp(prefix="simclr_tf_features_", suffix=".f32",
                                         dir=folder)
        self.file = os.fdopen(fd, "wb")
        logging.info("Frozen features of %s: up to %d x %d float32 (%.1f GiB) go to %s "
                     "(memory limit %.1f GiB); removed when done.", self.what,
                     self.max_rows, dim, size / 2**30, self.path, self.memory_limit / 2**30)

    def add(self, rows):
        if self.dim is None:
            self._open(rows.shape[1])
        if self.rows + len(rows) > self.max_rows:
            raise ValueError(f"More feature rows than the {self.max_rows} expected.")
        if self.file is not None:
            self.file.write(np.ascontiguousarray(rows, np.float32).tobytes())
        else:
            self.array[self.rows:self.rows + len(rows)] = rows
        self.rows += len(rows)

    def finish(self):
        """The rows written: an ndarray or a read-only memmap [rows, dim]."""
        if self.dim is None:
            return np.zeros((0, 0), np.float32)
        if self.file is None:
            return self.array[:self.rows]
        self.file.close()
        mapped = None
        try:
            if self.rows == 0:
                return np.zeros((0, self.dim), np.float32)
            mapped = np.memmap(self.path, np.float32, mode="r", shape=(self.rows, self.dim))
        finally:
            self._remove(mapped)
        return mapped

    def abort(self):
        if self.file is not None:
            self.file.close()
            self._remove(None)

    def _remove(self, mapped):
        path, self.path = self.path, None
        try:
            os.remove(path)  # POSIX: the mapping keeps the data until it is dropped
        except OSError:  # Windows: not while mapped; when the memmap goes, or at exit
            weakref.finalize(mapped if mapped is not None else self, _remove_quietly, path)


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _eval_dataset(cfg, split, strategy, info_out):
    """The split's eval pipeline, batches padded to ``eval_batch_size``, distributed."""

    def make(batch, num_shards, shard_index, _):
        ds, info = pipeline.build_eval_dataset(
            cfg.dataset, split, batch, cfg.image_size, data_dir=cfg.data_dir,
            num_shards=num_shards, shard_index=shard_index)
        info_out.append(info)
        image_shape = ds.element_spec[0].shape[1:]

        def pad(images, labels):
            missing = batch - tf.shape(labels)[0]
            images = tf.pad(images, [[0, missing]] + [[0, 0]] * len(image_shape))
            labels = tf.pad(labels, [[0, missing]], constant_values=PAD_LABEL)
            return (tf.ensure_shape(images, [batch, *image_shape]),
                    tf.ensure_shape(labels, [batch]))

        return ds.map(pad), info

    return distribute.distribute_dataset(strategy, make, cfg.eval_batch_size)


def _extraction_strategy(strategy):
    strategy = strategy or tf.distribute.get_strategy()
    if distribute.num_workers(strategy) > 1:
        logging.info("Frozen features: several workers, so the chief extracts them alone "
                     "(default strategy on its own devices).")
        return tf.distribute.get_strategy()
    return strategy


def split_features(encoder, cfg, split, indices=None, *, strategy=None,
                   memory_limit=None, scratch_dir=None):
    """Frozen features h and labels of a split's labelled examples (eval preprocessing).

    Args:
        encoder: a callable ``encoder(images, training=False) -> [b, C]``.
        cfg: a ``DataConfig`` (``cfg.data``).
        split: the split's name.
        indices: keep only these examples (sorted indices into the split,
            e.g. a label subset's); unlabelled ones are dropped either way.
        strategy: the run's strategy (default: the current one).
        memory_limit: bytes of features held in memory; above it they go to
            a memmap in ``scratch_dir`` (default :data:`MEMORY_LIMIT_BYTES`).
        scratch_dir: where that file goes (default: ``tempfile.gettempdir()``).

    Returns:
        ``(features float32 [N, C] (ndarray or read-only memmap), labels int32 [N])``
        in the split's order.
    """
    strategy = _extraction_strategy(strategy)
    infos = []
    dataset = _eval_dataset(cfg, split, strategy, infos)
    num_examples = infos[0].num_examples
    subset = None
    if indices is not None:
        subset = np.zeros(num_examples, bool)
        subset[np.asarray(indices, np.int64)] = True
    max_rows = num_examples if subset is None else int(subset.sum())
    sink = _FeatureSink(repr(split), max_rows,
                        MEMORY_LIMIT_BYTES if memory_limit is None else memory_limit,
                        scratch_dir)
    labels, position = [], 0
    try:
        for feats, batch_labels in _feature_batches(
                encoder, dataset, strategy,
                Progress(f"frozen features of {split!r}", num_examples)):
            keep = batch_labels >= 0
            if subset is not None:
                keep &= subset[position:position + len(batch_labels)]
            position += len(batch_labels)
            sink.add(feats[keep])
            labels.append(batch_labels[keep])
    except BaseException:
        sink.abort()
        raise
    feats = sink.finish()
    labels = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
    return feats, labels.astype(np.int32)


def frozen_features(encoder, cfg, train_indices=None, *, strategy=None,
                    memory_limit=None, scratch_dir=None):
    """``(train_x, train_y, eval_x, eval_y)`` of ``cfg``'s splits, or a clear ValueError.

    See :func:`split_features` for the arguments; features above
    ``memory_limit`` bytes per split are read-only memmaps.
    """
    kwargs = dict(strategy=strategy, memory_limit=memory_limit, scratch_dir=scratch_dir)
    train_x, train_y = split_features(encoder, cfg, cfg.train_split, train_indices, **kwargs)
    eval_x, eval_y = split_features(encoder, cfg, cfg.eval_split, **kwargs)
    if len(train_x) == 0 or len(eval_x) == 0:
        raise ValueError(
            f"Linear evaluation needs labels in both {cfg.train_split!r} and "
            f"{cfg.eval_split!r} of {cfg.dataset!r}; one of them has none. "
            "Turn it off with --feature_linear_eval=false.")
    return train_x, train_y, eval_x, eval_y


# ------------------------------------------------------- streaming over rows

def _chunk_rows(dim):
    return max(256, CHUNK_BYTES // (4 * max(int(dim), 1)))


def _num_rows(x, rows):
    return len(x) if rows is None else len(rows)


def _chunks(x, y=None, rows=None, chunk_rows=None):
    """Yields float32 chunks of consecutive rows of ``x`` (of ``x[rows]`` when
    ``rows`` is given), with the matching labels when ``y`` is given."""
    step = chunk_rows or _chunk_rows(x.shape[1])
    for start in range(0, _num_rows(x, rows), step):
        index = slice(start, start + step) if rows is None else rows[start:start + step]
        chunk = np.asarray(x[index], np.float32)
        yield chunk if y is None else (chunk, np.asarray(y[index], np.int32))


def standardisation(features, rows=None):
    """``(mean float32 [D], inv_std float32 [D])`` of ``features`` (``[rows]``),
    in two streaming passes with float64 sums; ``inv_std = 1 / (std + 1e-6)``."""
    n = _num_rows(features, rows)
    total = np.zeros(features.shape[1], np.float64)
    for chunk in _chunks(features, rows=rows):
        total += chunk.sum(axis=0, dtype=np.float64)
    mean = (total / max(n, 1)).astype(np.float32)
    squares = np.zeros(features.shape[1], np.float64)
    for chunk in _chunks(features, rows=rows):
        centred = chunk - mean
        squares += np.einsum("nd,nd->d", centred, centred, dtype=np.float64)
    std = np.sqrt(squares / max(n, 1))
    return mean, (1.0 / (std + 1e-6)).astype(np.float32)


# ------------------------------------------------------------------ the model

def _group_logits(x, mean, inv_std, w, b):
    """Logits [n, G, C] of ``G`` classifiers ``w`` [D, G, C], ``b`` [G, C] on standardised x."""
    z = (x - mean) * inv_std
    shape = tf.shape(w)
    logits = tf.matmul(z, tf.reshape(w, [shape[0], -1]))
    return tf.reshape(logits, [-1, shape[1], shape[2]]) + b, z


def _loss_grad_sums(x, y, mean, inv_std, w, b):
    """Summed (not averaged) cross-entropy [G] and its gradients over the rows of one chunk."""
    logits, z = _group_logits(x, mean, inv_std, w, b)
    onehot = tf.one_hot(y, tf.shape(w)[2])[:, None, :]
    lse = tf.reduce_logsumexp(logits, axis=2)
    loss = tf.reduce_sum(lse - tf.reduce_sum(logits * onehot, axis=2), axis=0)
    dlogits = tf.exp(logits - lse[:, :, None]) - onehot
    grad_w = tf.matmul(z, tf.reshape(dlogits, [tf.shape(z)[0], -1]), transpose_a=True)
    return loss, tf.reshape(grad_w, tf.shape(w)), tf.reduce_sum(dlogits, axis=0)


_compiled_loss_grad_sums = tf.function(_loss_grad_sums, reduce_retracing=True)


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
               for chunk in _chunks(features, rows=rows)]
        return np.concatenate(out) if out else np.zeros((0, len(self.b)), np.float32)


# ----------------------------------------------------------------- optimisers

def _objective(x, y, rows, stats, num_classes, l2):
    """``f(params float64) -> (loss, gradient)`` of mean CE + l2 ||W||^2 / 2 over x[rows]."""
    n, dim = _num_rows(x, rows), x.shape[1]
    mean, inv_std = (tf.constant(s) for s in stats)
    chunks = None
    if _num_rows(x, rows) * dim * 4 <= CHUNK_BYTES:  # one chunk: keep it on the device
        chunk, labels = next(_chunks(x, y, rows, chunk_rows=n))
        chunks = [(tf.constant(chunk), tf.constant(labels))]

    def fun(params):
        w = params[:dim * num_classes].reshape(dim, 1, num_classes)
        b = params[dim * num_classes:].reshape(1, num_classes)
        wt, bt = tf.constant(w, tf.float32), tf.constant(b, tf.float32)
        loss, grad_w, grad_b = 0.0, np.zeros_like(w), np.zeros_like(b)
        for chunk, labels in chunks or _chunks(x, y, rows):
            l, gw, gb = _compiled_loss_grad_sums(chunk, labels, mean, inv_std, wt, bt)
            loss += float(l[0])
            grad_w += gw.numpy()
            grad_b += gb.numpy()
        loss = loss / n + 0.5 * l2 * float(np.sum(w * w))
        grad = np.concatenate([(grad_w / n + l2 * w).ravel(), (grad_b / n).ravel()])
        return loss, grad

    return fun


def _two_loop(grad, pairs):
    """L-BFGS direction ``-H grad`` from the (s, y, 1 / s.y) pairs, oldest first."""
    q = grad.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * (s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        q *= (s @ y) / (y @ y)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q += (alpha - rho * (y @ q)) * s
    return -q


def lbfgs(fun, x0, max_iter=LBFGS_MAX_ITER, ftol=LBFGS_FTOL, memory=10):
    """Minimises ``fun(x) -> (f, grad)`` from ``x0`` with L-BFGS and Armijo
    backtracking; returns ``(x, f, iterations)``.

    Stops when an iteration lowers ``f`` by at most ``ftol * max(|f|, 1)``,
    when no step lowers it (the float32 noise floor), or after ``max_iter``.
    """
    x = np.asarray(x0, np.float64).copy()
    f, g = fun(x)
    pairs = []
    iteration = 0
    for iteration in range(1, max_iter + 1):
        d = _two_loop(g, pairs)
        slope = g @ d
        if not slope < 0:  # not a descent direction: restart from the gradient
            pairs, d = [], -g
            slope = g @ d
        if slope == 0:
            break
        t = 1.0 if pairs else min(1.0, 1.0 / math.sqrt(g @ g))
        for _ in range(40):
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease at this precision
        s, y = x_new - x, g_new - g
        sy = s @ y
        if sy > 1e-10 * (y @ y):
            pairs = (pairs + [(s, y, 1.0 / sy)])[-memory:]
        decrease = f - f_new
        x, f, g = x_new, f_new, g_new
        if decrease <= ftol * max(abs(f), 1.0):
            break
    return x, f, iteration


def _fit_lbfgs(x, y, rows, num_classes, stats, l2, max_iter):
    dim, start = x.shape[1], time.monotonic()
    params, loss, iterations = lbfgs(_objective(x, y, rows, stats, num_classes, l2),
                                     np.zeros(dim * num_classes + num_classes),
                                     max_iter=max_iter)
    logging.info("linear eval: L-BFGS, l2 %g, %d rows: %d iterations, loss %.4f (%.1f s)",
                 l2, _num_rows(x, rows), iterations, loss, time.monotonic() - start)
    return LinearClassifier(params[:dim * num_classes].reshape(dim, num_classes),
                            params[dim * num_classes:], *stats, l2, "lbfgs", loss, iterations)


def _fit_minibatch(x, y, rows, num_classes, stats, l2s, seed, steps, batch_rows,
                   learning_rate):
    """Mini-batch Adam for every l2 of ``l2s`` at once (one [D, G, C] layer);
    returns one :class:`LinearClassifier` per l2."""
    n, dim, groups = _num_rows(x, rows), x.shape[1], len(l2s)
    batch_rows = min(int(batch_rows), n)
    per_epoch = math.ceil(n / batch_rows)
    epochs = math.ceil(steps / per_epoch)
    total = epochs * per_epoch
    mean, inv_std = (tf.constant(s) for s in stats)
    l2_t = tf.constant(np.asarray(l2s, np.float32)[None, :, None])
    w = tf.Variable(tf.zeros([dim, groups, num_classes]))
    b = tf.Variable(tf.zeros([groups, num_classes]))
    slots = [tf.Variable(tf.zeros_like(v)) for v in (w, b, w, b)]  # m_w, m_b, v_w, v_b
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    @tf.function(reduce_retracing=True)
    def step(chunk, labels, lr, t):
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        loss, grad_w, grad_b = _loss_grad_sums(chunk, labels, mean, inv_std, w, b)
        grads = (grad_w / count + l2_t * w, grad_b / count)
        for var, grad, m, v in zip((w, b), grads, slots[:2], slots[2:]):
            m.assign(beta1 * m + (1 - beta1) * grad)
            v.assign(beta2 * v + (1 - beta2) * tf.square(grad))
            m_hat = m / (1 - tf.pow(beta1, t))
            v_hat = v / (1 - tf.pow(beta2, t))
            var.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + eps))
        return loss / count

    progress = Progress(f"linear eval: mini-batch Adam, {groups} l2 value(s), {n} rows, "
                        f"{epochs} epochs", total, unit="steps", every=30.0)
    t, losses = 0, np.zeros(groups)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        losses = np.zeros(groups)
        for start in range(0, n, batch_rows):
            index = np.sort(order[start:start + batch_rows])
            if rows is not None:
                index = rows[index]
            lr = 0.5 * learning_rate * (1 + math.cos(math.pi * t / total))
            t += 1
            losses += step(np.asarray(x[index], np.float32), np.asarray(y[index], np.int32),
                           tf.constant(lr, tf.float32), tf.constant(t, tf.float32)).numpy()
            progress.update()
    progress.done()
    w_np, b_np = w.numpy(), b.numpy()
    return [LinearClassifier(w_np[:, g], b_np[g], *stats, l2, "minibatch_adam",
                             losses[g] / per_epoch + 0.5 * l2 * float(np.sum(w_np[:, g] ** 2)),
                             t) for g, l2 in enumerate(l2s)]


def choose_solver(num_rows, dim, num_classes):
    """``"lbfgs"`` when one pass costs at most :data:`FULL_BATCH_MAX_WORK`, else ``"minibatch"``."""
    return "lbfgs" if num_rows * dim * num_classes <= FULL_BATCH_MAX_WORK else "minibatch"


def _fit_many(x, y, rows, num_classes, stats, l2s, solver, seed, max_iter=LBFGS_MAX_ITER,
              steps=MINIBATCH_STEPS, batch_rows=MINIBATCH_ROWS,
              learning_rate=MINIBATCH_LEARNING_RATE):
    if solver == "lbfgs":
        return [_fit_lbfgs(x, y, rows, num_classes, stats, l2, max_iter) for l2 in l2s]
    if solver == "minibatch":
        return _fit_minibatch(x, y, rows, num_classes, stats, l2s, seed, steps, batch_rows,
                              learning_rate)
    raise ValueError(f"solver must be 'auto', 'lbfgs' or 'minibatch', got {solver!r}.")


def fit_logistic_regression(features, labels, num_classes, l2=DEFAULT_L2, *, rows=None,
                            stats=None, solver="auto", seed=0, max_iter=LBFGS_MAX_ITER,
                            steps=MINIBATCH_STEPS, batch_rows=MINIBATCH_ROWS,
                            learning_rate=MINIBATCH_LEARNING_RATE):
    """Fits multinomial logistic regression; returns a :class:`LinearClassifier`
    (``clf(features) -> logits``).

    The objective is mean cross-entropy + ``l2 * ||W||^2 / 2`` on features
    standardised with ``stats`` (default: those of the rows fitted, see
    :func:`standardisation`), from zero weights. ``rows``: fit on
    ``features[rows]`` only (sorted indices). ``solver``: ``"lbfgs"``
    (full batch, ``max_iter``), ``"minibatch"`` (Adam, ``steps`` of
    ``batch_rows`` rows, ``learning_rate`` with a cosine decay, seeded) or
    ``"auto"`` (:func:`choose_solver`). ``features`` may be a memmap: it is
    read in chunks.
    """
    labels = np.asarray(labels, np.int32)
    if stats is None:
        stats = standardisation(features, rows)
    if solver == "auto":
        solver = choose_solver(_num_rows(features, rows), features.shape[1], num_classes)
    return _fit_many(features, labels, rows, num_classes, stats, (l2,), solver, seed,
                     max_iter, steps, batch_rows, learning_rate)[0]


def topk_accuracy(logits, labels, k):
    """Fraction of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def _cross_entropy(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(lse - shifted[np.arange(len(labels)), labels]))


# ----------------------------------------------------------------- l2 choice

def held_out_split(labels, fraction=HELD_OUT_FRACTION, max_size=HELD_OUT_MAX, seed=0):
    """``(fit_rows, held_rows)``: sorted indices; a seeded, class-stratified
    ``fraction`` of ``labels`` (at most ``max_size``) held out, at least one
    example of every class left to fit on."""
    labels = np.asarray(labels)
    n = len(labels)
    fraction = min(fraction, max_size / max(n, 1))
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(int(round(fraction * len(members))), len(members) - 1)
        if take > 0:
            held.append(rng.permutation(members)[:take])
    held = np.sort(np.concatenate(held)) if held else np.zeros((0,), np.int64)
    mask = np.ones(n, bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def select_l2(features, labels, num_classes, grid=L2_GRID, *, stats=None, solver="auto",
              seed=0, **fit_kwargs):
    """The l2 of ``grid`` with the best held-out top-1 (see the module docstring).

    Returns ``(l2, {l2: held-out top-1}, num_heldout)``.
    """
    labels = np.asarray(labels, np.int32)
    fit_rows, held_rows = held_out_split(labels, seed=seed)
    if len(held_rows) == 0 or len(grid) == 1:
        logging.info("linear eval: no held-out examples; l2 = %g.", DEFAULT_L2 if len(
            grid) != 1 else grid[0])
        return (grid[0] if len(grid) == 1 else DEFAULT_L2), {}, 0
    if stats is None:
        stats = standardisation(features)
    if solver == "auto":
        solver = choose_solver(len(labels), features.shape[1], num_classes)
    start = time.monotonic()
    classifiers = _fit_many(features, labels, fit_rows, num_classes, stats, tuple(grid),
                            solver, seed, **_fit_kwargs(fit_kwargs))
    held_y = labels[held_rows]
    scores = {}
    for clf in classifiers:
        logits = clf(features, held_rows)
        scores[clf.l2] = (topk_accuracy(logits, held_y, 1), -_cross_entropy(logits, held_y),
                          clf.l2)
        logging.info("linear eval: l2 %g: held-out top-1 %.4f (%d examples), cross-entropy "
                     "%.4f; %s %d steps, loss %.4f", clf.l2, scores[clf.l2][0],
                     len(held_rows), -scores[clf.l2][1], clf.solver, clf.steps, clf.loss)
    best = max(scores, key=scores.get)
    logging.info("linear eval: l2 %g chosen on %d held-out examples (%.1f s).", best,
                 len(held_rows), time.monotonic() - start)
    return best, {l2: s[0] for l2, s in scores.items()}, len(held_rows)


def _fit_kwargs(kwargs):
    allowed = {"max_iter", "steps", "batch_rows", "learning_rate"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"Unknown fit options {sorted(unknown)}; allowed: {sorted(allowed)}.")
    return {"max_iter": LBFGS_MAX_ITER, "steps": MINIBATCH_STEPS,
            "batch_rows": MINIBATCH_ROWS, "learning_rate": MINIBATCH_LEARNING_RATE, **kwargs}


def fit_and_score(features, num_classes, *, l2=None, l2_grid=L2_GRID, seed=0,
                  solver="auto", **fit_kwargs):
    """The paper's protocol on ``frozen_features``.

    ``l2=None`` chooses it from ``l2_grid`` on a held-out part of the
    training split, then refits on all of it; a number skips the choice.
    ``fit_kwargs``: ``max_iter``, ``steps``, ``batch_rows``, ``learning_rate``
    (see :func:`fit_logistic_regression`).

    Returns ``{"top1", "top5", "num_train", "num_eval", "l2", "heldout_top1",
    "num_heldout", "solver"}`` (``heldout_top1``: ``{"%g" % l2: top-1}``).
    """
    train_x, train_y, eval_x, eval_y = features
    fit_kwargs = _fit_kwargs(fit_kwargs)
    start = time.monotonic()
    stats = standardisation(train_x)
    if solver == "auto":
        solver = choose_solver(len(train_x), train_x.shape[1], num_classes)
    heldout, num_heldout = {}, 0
    if l2 is None:
        l2, heldout, num_heldout = select_l2(train_x, train_y, num_classes, l2_grid,
                                             stats=stats, solver=solver, seed=seed,
                                             **fit_kwargs)
    clf = _fit_many(train_x, np.asarray(train_y, np.int32), None, num_classes, stats,
                    (l2,), solver, seed, **fit_kwargs)[0]
    eval_y = np.asarray(eval_y)
    top1 = top5 = 0.0
    step = _chunk_rows(eval_x.shape[1])
    for first in range(0, len(eval_x), step):
        logits, labels = clf(eval_x[first:first + step]), eval_y[first:first + step]
        top1 += topk_accuracy(logits, labels, 1) * len(labels)
        top5 += topk_accuracy(logits, labels, 5) * len(labels)
    logging.info("linear eval: %s, l2 %g, %d training features of dimension %d: eval top-1 "
                 "%.4f (%.1f s)", solver, l2, len(train_x), train_x.shape[1],
                 top1 / len(eval_x), time.monotonic() - start)
    return {"top1": top1 / len(eval_x), "top5": top5 / len(eval_x),
            "num_train": int(len(train_x)), "num_eval": int(len(eval_x)),
            "l2": float(l2), "heldout_top1": {f"{k:g}": v for k, v in heldout.items()},
            "num_heldout": int(num_heldout), "solver": solver}


def evaluate(encoder, cfg, num_classes, train_indices=None, *, strategy=None, seed=0,
             memory_limit=None, scratch_dir=None):
    """Linear evaluation of ``encoder`` on the dataset of ``cfg`` (a ``DataConfig``, ``cfg.data``).

    Returns :func:`fit_and_score`'s dict: a classifier fitted on frozen
    features of ``cfg.train_split`` (unlabelled examples dropped; only the
    examples at ``train_indices``, e.g. a
    :class:`simclr_tf.data.subsets.LabelSubset`'s, when given), its l2 chosen
    on a held-out part of them, scored on ``cfg.eval_split``. Extraction runs
    through ``strategy`` (default: the current one).
    """
    features = frozen_features(encoder, cfg, train_indices, strategy=strategy,
                               memory_limit=memory_limit, scratch_dir=scratch_dir)
    return fit_and_score(features, num_classes, seed=seed)
