"""``tf.data`` input pipelines: pretraining views, fine-tuning and evaluation batches.

Builders take the config sections whole (``cfg.data``, ``cfg.augment``) and a
:class:`Shard` (this pipeline's part of the global batch and where the run
resumes), and return ``(dataset, info)``:

* :func:`build_train_dataset`: endless ``(views, labels)``, ``views`` a dict
  of float32 ``[B, S, S, 3]`` in [0, 1]: ``view1``, ``view2`` (two augmented
  views of each image) and, with ``clean_view``, ``clean`` (the image as
  evaluation sees it); labels int32 ``[B]``, -1 where unknown;
* :func:`build_finetune_dataset`: endless ``(images, labels)``, one crop+flip
  view per image, as SimCLR fine-tunes (arXiv:2006.10029);
* :func:`build_eval_dataset`: one pass in file order, the last partial batch kept.

Reproducibility: epoch ``e`` shuffles with a seed from ``(seed, e)`` only and
augments example ``i`` with the stateless key ``(seed, e, i)``, and every
epoch has exactly ``steps_per_epoch`` batches on every shard. So the same
arguments give the same batches, and a run resumed at step ``t`` (``start_epoch
= t // steps``, ``skip_batches = t % steps``; skipped examples are dropped
before decoding) sees the batches an uninterrupted run sees. The shuffle
buffer covers the whole shard when its records are cheap (paths, small
images), else ``max(10 * batch_size, 10_000)`` examples.
"""

import dataclasses

import tensorflow as tf

from simclr_tf.data import augment
from simclr_tf.data import datasets
from simclr_tf.data import subsets
from simclr_tf.optimizers import steps_per_epoch

# Mixed into the user's seed so that data seeds differ from model-init seeds.
_DATA_SEED_SALT = 0x53494D434C52  # "SIMCLR"
_LARGE_IMAGE_SHUFFLE_MIN = 10_000
_FULL_SHUFFLE_BYTES = 512 * 2**20  # shuffle the whole shard when its pixels fit
# The shared augmentations' seed: the example's key folded with this slot (the
# views use the two halves of stateless_split(key, 2), unchanged by it).
_SHARED_SEED_SLOT = 2


def _check_shards(num_shards, shard_index):
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"Need num_shards >= 1 and 0 <= shard_index < num_shards, got "
            f"num_shards={num_shards}, shard_index={shard_index}.")


def _shard_size(num_examples, num_shards, shard_index):
    return len(range(shard_index, num_examples, num_shards))


def _options(num_shards):
    options = tf.data.Options()
    options.deterministic = True
    if num_shards > 1:
        # We shard explicitly; keep tf.distribute from sharding again.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
    return options


def _base_key(seed):
    return tf.constant([int(seed) & 0x7FFFFFFFFFFFFFFF, _DATA_SEED_SALT], tf.int64)


def _default_shuffle_buffer(source, shard_n, batch_size, decoded):
    """Whole shard when that is cheap, else ``max(10 * batch_size, 10_000)``.

    ``decoded``: the buffer holds decoded images (``cache=True``), so paths
    are no longer what gets buffered.
    """
    shape = source.info.image_shape
    if (source.cheap_records and not decoded) or (
            shape is not None and shard_n * shape[0] * shape[1] * 3 <= _FULL_SHUFFLE_BYTES):
        return shard_n
    return min(shard_n, max(10 * batch_size, _LARGE_IMAGE_SHUFFLE_MIN))


def _build_stream(data, shard, view_fn, *, shuffle_buffer, label_subset, keep_unlabeled):
    """The endless, epoch-structured training stream of ``data.train_split``.

    ``view_fn(image, key)`` maps a decoded uint8 image and the example's
    stateless key ``[2]`` to the training input.
    """
    if isinstance(shard, int):
        shard = Shard(shard)
    name, split, seed, data_dir = data.dataset, data.train_split, data.seed, data.data_dir
    batch_size, num_shards, shard_index = shard.batch_size, shard.num_shards, shard.shard_index
    start_epoch, skip_batches = shard.start_epoch, shard.skip_batches
    _check_shards(num_shards, shard_index)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if start_epoch < 0:
        raise ValueError(f"start_epoch must be >= 0, got {start_epoch}.")
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}.")
    source = datasets.open_source(name, split, data_dir=data_dir)
    source = subsets.restrict(source, label_subset, keep_others=keep_unlabeled)
    info = source.info
    n = info.num_examples
    global_batch = batch_size * num_shards
    if global_batch > n:
        shard_note = (f" x num_shards {num_shards} = {global_batch}" if num_shards > 1 else "")
        raise ValueError(
            f"Training batch size {batch_size}{shard_note} is larger than the "
            f"{n} examples of {info.name!r} split {split!r}, so not one full batch "
            f"fits in an epoch. Use a batch size of at most {n // num_shards} "
            "(e.g. --train_batch_size) or a larger split.")
    steps = steps_per_epoch(n, global_batch)
    per_epoch = steps * batch_size
    shard_n = _shard_size(n, num_shards, shard_index)

    records = source.records.enumerate()
    if num_shards > 1:
        records = records.shard(num_shards, shard_index)
    decode = source.decode
    if data.cache_dataset:
        records = records.map(lambda i, r: (i, decode(r)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
        decoded = True
    else:
        decoded = False

    if shuffle_buffer is None:
        shuffle_buffer = _default_shuffle_buffer(source, shard_n, batch_size, decoded)
    shuffle_buffer = max(1, min(int(shuffle_buffer), shard_n))
    key0 = _base_key(seed)

    def one_epoch(epoch):
        # Make the shuffle seed depend on (seed, epoch) only: with no graph
        # seed, tf.data combines the op seed with a fixed default instead of
        # TF's global seed (tf.random.set_seed), which may differ between runs.
        tf.compat.v1.get_default_graph().seed = None
        epoch_key = tf.random.experimental.stateless_fold_in(key0, epoch)
        shuffle_seed = tf.random.stateless_uniform(
            [], seed=epoch_key, minval=0, maxval=2**31 - 1, dtype=tf.int64)
        ds = records.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        ds = ds.take(per_epoch)
        return ds.map(lambda i, r: (epoch_key, i, r))

    def make_example(epoch_key, index, record):
        example = record if decoded else decode(record)
        key = tf.random.experimental.stateless_fold_in(epoch_key, index)
        return view_fn(example["image"], key), tf.cast(example["label"], tf.int32)

    ds = tf.data.Dataset.counter(start_epoch, dtype=tf.int64).flat_map(one_epoch)
    if skip_batches:
        ds = ds.skip(int(skip_batches) * batch_size)  # before decode and augment
    ds = ds.map(make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(num_shards)), info


@dataclasses.dataclass(frozen=True)
class Shard:
    """One input pipeline's place in a run.

    Args:
        batch_size: examples per batch of this pipeline (its share of the
            global batch).
        num_shards, shard_index: the pipelines sharing the split, and this one.
        start_epoch, skip_batches: where the stream starts (to resume a run).
    """

    batch_size: int
    num_shards: int = 1
    shard_index: int = 0
    start_epoch: int = 0
    skip_batches: int = 0


def build_train_dataset(data, augment_cfg, shard, *, label_subset=None, clean_view=False,
                        shuffle_buffer=None):
    """Endless SimCLR pretraining batches: two augmented views per image.

    Args:
        data: a ``simclr_tf.config.DataConfig`` (``cfg.data``): dataset,
            ``train_split``, ``image_size``, ``data_dir``, ``seed``, ``cache_dataset``.
        augment_cfg: a ``simclr_tf.config.AugmentConfig`` (``cfg.augment``): the
            parsed op names of each view (:func:`simclr_tf.data.augment.apply_view`),
            the ``shared`` ops drawn once per image before both views (the
            paper's Figure 5 protocol), the colour settings.
        shard: a :class:`Shard` (or an int batch size: one pipeline from epoch 0).
        label_subset: a :class:`simclr_tf.data.subsets.LabelSubset`: other
            examples keep their images with label -1. None: all labels.
        clean_view: also emit ``clean``, each image through
            :func:`simclr_tf.data.augment.preprocess_for_eval` (no random
            draws, so the two views are unchanged by it).
        shuffle_buffer: overrides the shuffle buffer size.

    Returns:
        ``(ds, info)``; ``ds`` yields ``({"view1", "view2"[, "clean"]}, labels)``
        forever, ``steps_per_epoch(info.num_examples, batch_size * num_shards)``
        batches an epoch.

    Example:
        >>> cfg = simclr_tf.Config(image_size=32)
        >>> ds, info = build_train_dataset(cfg.data, cfg.augment, 128)
        >>> views, labels = next(iter(ds))
        >>> views["view1"].shape
        TensorShape([128, 32, 32, 3])
    """
    image_size = int(data.image_size)
    params = augment.ViewParams(image_size, augment_cfg.color_jitter_strength,
                                augment_cfg.color_jitter_impl)

    # One traced function per distinct pipeline (tracing the augmentation is
    # the slow part of building the pipeline): a single one for symmetric views.
    def make_view_fn(names):
        @tf.function
        def one_view(image, key):
            return augment.apply_view(image, key, names, params)
        return one_view

    view_fns = {names: make_view_fn(names) for names in (augment_cfg.view1, augment_cfg.view2)}
    first, second = view_fns[augment_cfg.view1], view_fns[augment_cfg.view2]
    shared_fn = make_view_fn(augment_cfg.shared) if augment_cfg.shared else None

    def two_views(image, key):
        k1, k2 = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        shared_image = image
        if shared_fn is not None:  # one draw for the image, before both views
            shared_image = shared_fn(image, tf.random.experimental.stateless_fold_in(
                key, _SHARED_SEED_SLOT))
        views = {"view1": first(shared_image, k1), "view2": second(shared_image, k2)}
        if clean_view:
            views["clean"] = augment.preprocess_for_eval(image, image_size)
        return views

    return _build_stream(data, shard, two_views, shuffle_buffer=shuffle_buffer,
                         label_subset=label_subset, keep_unlabeled=True)


def build_finetune_dataset(data, shard, *, label_subset=None, keep_unlabeled=False,
                           shuffle_buffer=None):
    """Endless fine-tuning batches ``(images [B, S, S, 3], labels)``: one crop+flip view per image.

    SimCLR fine-tunes with random resized crop and flip only, no colour
    distortion or blur (arXiv:2002.05709 appendix B.6). ``data``, ``shard``
    and ``shuffle_buffer`` as in :func:`build_train_dataset`; ``label_subset``
    keeps only its examples, or with ``keep_unlabeled`` (distillation) all of
    them, labelled -1 outside it.
    """
    image_size = int(data.image_size)

    def one_view(image, key):
        return augment.preprocess_for_train(
            image, key, image_size, use_blur=False, crop=True, flip=True,
            color_distort=False)

    return _build_stream(data, shard, one_view, shuffle_buffer=shuffle_buffer,
                         label_subset=label_subset, keep_unlabeled=keep_unlabeled)


def build_eval_dataset(data, shard, *, split=None, source=None, cache=None):
    """One deterministic pass over a split for evaluation.

    No shuffling, no repetition; images go through
    :func:`simclr_tf.data.augment.preprocess_for_eval` (centre crop above
    32 px, resize). The last, partial batch is kept, so the shards together
    cover every example exactly once.

    Args:
        data: a ``simclr_tf.config.DataConfig`` (``cfg.data``): dataset,
            ``eval_split``, ``image_size``, ``data_dir``, ``cache_dataset``.
        shard: a :class:`Shard` (its batch size, the last batch may be
            smaller; example ``i`` goes to shard ``i % num_shards``) or an int
            batch size.
        split: the split to read (default ``data.eval_split``).
        source: an opened :class:`simclr_tf.data.source.Source` to read
            instead of the dataset's split (e.g.
            :func:`simclr_tf.data.image_folder.image_files_source`).
        cache: cache the preprocessed images in memory (they are
            deterministic), so repeated evaluations skip decoding (default
            ``data.cache_dataset``).

    Returns:
        ``(ds, info)``: ``ds`` yields ``(images float32 [b, S, S, 3] in [0, 1],
        labels int32 [b])`` with ``b <= batch_size``.

    Example:
        >>> cfg = simclr_tf.Config(dataset="offline_shapes", image_size=32)
        >>> ds, info = build_eval_dataset(cfg.data, 500)
        >>> sum(int(labels.shape[0]) for _, labels in ds) == info.num_examples
        True
    """
    if isinstance(shard, int):
        shard = Shard(shard)
    batch_size, num_shards, shard_index = shard.batch_size, shard.num_shards, shard.shard_index
    _check_shards(num_shards, shard_index)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if source is None:
        source = datasets.open_source(data.dataset, split or data.eval_split,
                                      data_dir=data.data_dir)
    cache = data.cache_dataset if cache is None else cache
    image_size = int(data.image_size)
    decode = source.decode

    def prepare(record):
        example = decode(record)
        image = augment.preprocess_for_eval(example["image"], image_size)
        return image, tf.cast(example["label"], tf.int32)

    ds = source.records
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    ds = ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(num_shards)), source.info
