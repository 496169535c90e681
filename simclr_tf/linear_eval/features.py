"""Frozen features h of a split: extracted through the run's strategy, stored, read in chunks.

What: ``encoder(images, training=False)`` per replica over the split's eval
pipeline (batches padded to the global size, so replicas see static shapes;
padding and unlabelled rows dropped on the host), kept in host memory up to
:data:`MEMORY_LIMIT_BYTES` a split, else written to a scratch file and read
back as a read-only memmap; and :func:`chunks`, the one way everything after
extraction (the solver, the scoring, :mod:`simclr_tf.knn`) reads those rows.
Why: the evaluation must run at ImageNet scale (1.28M x 2048 float32, 10.5 GB)
without holding the features in memory, and an ndarray and a memmap must give
the same numbers bit for bit, which one chunked reader guarantees.
"""

import os
import shutil
import tempfile
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf import distribute, files
from simclr_tf.data import pipeline
from simclr_tf.errors import RunError
from simclr_tf.progress import Progress

MEMORY_LIMIT_BYTES = 1 << 30  # features of a split above this go to a memmap on disk
SCRATCH_PREFIX = "simclr_tf-features"  # + files.temp_token() + ".f32", in TMPDIR
PAD_LABEL = -2  # padding rows of the last batch; dropped on the host
CHUNK_BYTES = 64 << 20  # rows read per chunk: about this many bytes of float32 features


def chunk_rows(dim):
    """Rows per chunk of ``dim``-dimensional float32 features (at least 256)."""
    return max(256, CHUNK_BYTES // (4 * max(int(dim), 1)))


def num_rows(x, rows=None):
    """Rows of ``x``, or of ``x[rows]``."""
    return len(x) if rows is None else len(rows)


def chunks(x, y=None, rows=None, size=None):
    """Yields float32 chunks of ``size`` (default :func:`chunk_rows`)
    consecutive rows of ``x`` (of ``x[rows]``, ``rows`` sorted indices), each
    with its int32 labels when ``y`` is given: ``chunk`` or ``(chunk, labels)``."""
    step = size or chunk_rows(x.shape[1])
    for start in range(0, num_rows(x, rows), step):
        index = slice(start, start + step) if rows is None else rows[start:start + step]
        chunk = np.asarray(x[index], np.float32)
        yield chunk if y is None else (chunk, np.asarray(y[index], np.int32))


def _forward(encoder, strategy):
    """A tf.function running ``encoder`` per replica; returns per-replica (features, labels).

    ``features``: what the encoder returns (a tensor, or a dict of them), as float32.
    """

    def replica_fn(images, labels):
        features = encoder(images, training=False)
        return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), features), labels

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
    padding rows (label ``PAD_LABEL``) dropped; ``features`` is a dict of
    such arrays when the encoder returns a dict."""
    forward = _forward(encoder, strategy)
    for images, labels in dataset:
        feats, labels = forward(images, labels)
        feats = tf.nest.map_structure(
            lambda v: _host(v, strategy).astype(np.float32, copy=False), feats)
        labels = _host(labels, strategy).astype(np.int32, copy=False)
        real = labels != PAD_LABEL
        if not real.all():
            feats = tf.nest.map_structure(lambda v: v[real], feats)
            labels = labels[real]
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
    when ``max_rows x dim`` float32 exceeds ``memory_limit`` bytes.

    The file goes to ``scratch_dir`` (default ``tempfile.gettempdir()``, so
    ``TMPDIR`` moves it), free space checked first. It is written with plain
    ``write`` calls (a full disk is then an ``OSError``, not the ``SIGBUS`` of
    writing through a mapping) and unlinked as soon as it is mapped (POSIX
    keeps the data while mapped), or when the extraction fails or is
    interrupted (a SIGTERM during an evaluation raises through here). Its
    name carries this process's host and pid, so a file left by a process
    killed while writing it (SIGKILL) is removed by the next extraction on
    the host (:func:`remove_dead_scratch`). float32 in both cases, so both
    give the same numbers.
    """

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
        self.path = os.path.join(folder, f"{SCRATCH_PREFIX}{files.temp_token()}.f32")
        self.file = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                              "wb")
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


def remove_dead_scratch(folder=None):
    """Removes the feature files of dead processes in ``folder`` (default: TMPDIR).

    A process killed while extracting (SIGKILL, a crash, the OOM killer)
    leaves its file, up to GiBs; its name carries the owner's host and pid
    (``simclr_tf-features~host~pid~random.f32``), so the next extraction on
    the host removes those whose process is gone, never a live one's.
    Returns the paths removed.
    """
    folder = folder or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(SCRATCH_PREFIX + "~") and name.endswith(".f32")):
            continue
        path = os.path.join(folder, name)
        if files.owner_alive(path) is False:
            try:
                os.remove(path)
            except OSError:
                continue
            logging.info("Removed %s, frozen features left by a process that ended "
                         "before removing them.", path)
            removed.append(path)
    return removed


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _eval_dataset(cfg, split, strategy, info_out, source=None):
    """The split's eval pipeline, batches padded to ``eval_batch_size``, distributed."""

    def make(batch, num_shards, shard_index, _):
        ds, info = pipeline.build_eval_dataset(
            cfg, pipeline.Shard(batch, num_shards, shard_index), split=split, source=source,
            cache=False)
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


def feature_batches(encoder, cfg, split, *, source=None, strategy=None, what=None):
    """Runs ``encoder(images, training=False)`` over a split through the strategy, batch by batch.

    The one extraction loop: :func:`split_features` (the frozen-feature
    evaluations) and :mod:`simclr_tf.embed` both read it.

    Args:
        encoder: a callable ``encoder(images, training=False)`` returning a
            ``[b, C]`` tensor or a dict of them (e.g. h and z).
        cfg: a ``DataConfig`` (``cfg.data``): dataset, data_dir, image_size,
            eval_batch_size (the global batch).
        split: the split's name.
        source: an opened :class:`simclr_tf.data.source.Source` to read
            instead of ``cfg.dataset``'s ``split``.
        strategy: the run's strategy (default: the current one; with several
            workers the chief extracts alone on its own devices).
        what: the progress lines' label.

    Returns:
        ``(info, batches)``: the split's ``DatasetInfo``, and a generator of
        ``(features, labels int32 [b])`` per global batch in the split's order
        (eval preprocessing; every example, unlabelled ones with label -1;
        padding dropped); ``features`` float32, shaped as the encoder's output.
        Progress and ETA are logged as it goes.
    """
    strategy = _extraction_strategy(strategy)
    infos = []
    dataset = _eval_dataset(cfg, split, strategy, infos, source)
    info = infos[0]
    progress = Progress(what or f"features of {split!r}", info.num_examples)
    return info, _feature_batches(encoder, dataset, strategy, progress)


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
    remove_dead_scratch(scratch_dir)
    info, batches = feature_batches(encoder, cfg, split, strategy=strategy,
                                    what=f"frozen features of {split!r}")
    num_examples = info.num_examples
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
        for feats, batch_labels in batches:
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
