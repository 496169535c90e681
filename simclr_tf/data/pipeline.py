"""``tf.data`` input pipelines for SimCLR pretraining, fine-tuning and evaluation.

Three builders, all returning ``(dataset, info)`` with ``info`` the
:class:`~simclr_tf.data.datasets.DatasetInfo` of the split:

* :func:`build_train_dataset`: endless batches of ``(images, labels)`` where
  ``images`` is float32 ``[B, S, S, 6]`` = two independently augmented SimCLR
  views of each image concatenated on the channel axis (view 1 is
  ``images[..., :3]``, view 2 ``images[..., 3:]``), labels int32 ``[B]``
  (-1 for unlabelled splits). Augmentation: :func:`simclr_tf.data.augment.preprocess_for_train`
  (Chen et al. 2020, arXiv:2002.05709, appendix A), or per-view lists of
  augmentation names (:func:`simclr_tf.data.augment.augment_view`), optionally
  after a shared stage drawn once per image for both views (the paper's
  Figure 5 protocol: one random crop shared by both branches).
* :func:`build_finetune_dataset`: endless batches of one view per image,
  ``[B, S, S, 3]``, with random resized crop and flip only (no colour
  distortion, no blur), as SimCLR fine-tunes (arXiv:2006.10029).
* :func:`build_eval_dataset`: one pass in file order, deterministic
  :func:`~simclr_tf.data.augment.preprocess_for_eval`, the last partial batch
  kept.

Reproducibility and resumption (training and fine-tuning)
---------------------------------------------------------
The stream is a sequence of epochs ``start_epoch, start_epoch + 1, ...``. Epoch
``e`` shuffles the (sharded) examples with a seed derived from ``(seed, e)``
only (TF's global seed does not enter), keeps the first
``steps_per_epoch(N, batch_size * num_shards) * batch_size`` of them, and
augments example ``i`` (its index in the split) with the stateless seed
derived from ``(seed, e, i)``. Hence:

* the same arguments give bit-identical batches, run after run;
* every epoch has exactly ``steps_per_epoch`` batches on every shard, so all
  workers stay in step and a run restarted with ``start_epoch=e`` (e.g.
  ``global_step // steps_per_epoch`` after restoring a checkpoint at an epoch
  boundary) sees exactly the batches an uninterrupted run sees from epoch
  ``e`` on;
* a checkpoint inside an epoch resumes with ``start_epoch = step // steps``
  and ``skip_batches = step % steps``: the skipped examples are dropped
  before decoding and augmentation, so skipping costs almost nothing.

Order of operations: records -> enumerate -> shard -> [decode -> cache] ->
per-epoch shuffle -> take -> [decode] -> augment (parallel) -> batch
(drop_remainder) -> prefetch. Shuffling happens on cheap records (file paths,
encoded bytes) when ``cache=False``, and on decoded images when
``cache=True`` (the cache holds decoded, un-augmented images).

The shuffle buffer covers the whole shard when that is cheap: offline data,
image folders without ``cache`` (records are file paths), and splits whose
images have one known size and total at most 512 MiB of pixels (CIFAR-10/100,
STL-10 train). Otherwise (ImageNet, STL-10 unlabelled) it defaults to
``max(10 * batch_size, 10_000)`` examples, on top of the example order TFDS
fixed when it prepared the data; ``shuffle_buffer`` overrides it.

Example:
    >>> from simclr_tf import optimizers
    >>> from simclr_tf.data import pipeline
    >>> ds, info = pipeline.build_train_dataset(
    ...     "offline_shapes", "train", batch_size=256, image_size=32, seed=0)
    >>> images, labels = next(iter(ds))
    >>> images.shape, labels.shape
    (TensorShape([256, 32, 32, 6]), TensorShape([256]))
    >>> optimizers.steps_per_epoch(info.num_examples, 256)
    39
"""

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


def _build_stream(name, split, batch_size, view_fn, *, data_dir, seed, start_epoch, cache,
                  num_shards, shard_index, shuffle_buffer, skip_batches=0,
                  label_subset=None, keep_unlabeled=False):
    """Shared body of the endless, epoch-structured training streams.

    ``view_fn(image, key)`` maps a decoded uint8 image and the example's
    stateless key ``[2]`` to the float32 training input. ``label_subset``
    (a :class:`simclr_tf.data.subsets.LabelSubset`) keeps only its examples,
    or with ``keep_unlabeled`` relabels the others -1.
    """
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
    if cache:
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


def build_train_dataset(
    name,
    split,
    batch_size,
    image_size,
    *,
    data_dir=None,
    seed=0,
    start_epoch=0,
    skip_batches=0,
    color_jitter_strength=None,
    use_blur=None,
    color_jitter_impl="v2",
    cache=False,
    num_shards=1,
    shard_index=0,
    shuffle_buffer=None,
    label_subset=None,
    view1_augmentations=None,
    view2_augmentations=None,
    shared_augmentations=None,
    clean_view=False,
):
    """Endless SimCLR pretraining batches of two augmented views per image.

    Args:
        name: dataset name (see :func:`simclr_tf.data.datasets.load`).
        split: split string, e.g. ``"train"`` or ``"train[:10%]"``.
        batch_size: examples per batch emitted by this dataset (per input
            pipeline; the caller splits the global batch over workers).
        image_size: side of the square views.
        data_dir: TFDS data dir or image-folder root.
        seed: data seed; with ``start_epoch`` it fixes the whole stream.
        start_epoch: first epoch of the stream (to resume a run).
        skip_batches: batches of the first epoch to skip (to resume inside an
            epoch); the stream then continues exactly as an uninterrupted one.
        color_jitter_strength: colour distortion strength ``s``; None uses
            :func:`simclr_tf.data.augment.preset` (0.5 at <= 32 px, else 1.0).
        use_blur: Gaussian blur on/off; None uses the preset (off at <= 32 px).
        color_jitter_impl: ``"v2"`` or ``"v1"`` (see ``augment.color_jitter``).
        cache: cache the decoded images in memory (before augmentation).
        num_shards: number of input pipelines (workers) sharing the split.
        shard_index: this pipeline's shard, in ``[0, num_shards)``.
        shuffle_buffer: override the shuffle buffer size (see module doc).
        label_subset: a :class:`simclr_tf.data.subsets.LabelSubset`: examples
            outside it keep their images but get label -1 (the linear probe
            then learns from the subset's labels only). None: all labels.
        view1_augmentations, view2_augmentations: ordered augmentation names
            of each view (see :func:`simclr_tf.data.augment.augment_view`;
            ``()`` = resize only); None: the SimCLR pipeline (crop, flip,
            color, and blur when ``use_blur``).
        shared_augmentations: ordered names applied once per image before
            the views, with one random draw shared by both views (its own
            sub-seed of the example's key); the view pipelines then start
            from its ``image_size`` output. None or ``()``: none, the views
            start from the decoded image (the stream is then bit-identical to
            one built without this argument). The paper's Figure 5 protocol
            is ``shared_augmentations=("crop",)``, ``view2_augmentations=()``.
        clean_view: also emit each image as evaluation sees it
            (:func:`simclr_tf.data.augment.preprocess_for_eval`), as channels
            6:9, for the linear probe's ``probe_view=clean``. It draws no
            random numbers, so the two views stay bit-identical.

    Returns:
        ``(ds, info)``: ``ds`` yields ``(images float32 [batch_size, S, S, 6]
        in [0, 1], labels int32 [batch_size])``, forever (``[..., 9]`` with
        ``clean_view``); each epoch has
        ``steps_per_epoch(info.num_examples, batch_size * num_shards)``
        batches.

    Raises:
        ValueError: when ``batch_size * num_shards`` exceeds the number of
            examples, or on bad shard arguments / dataset names.

    Example:
        >>> ds, info = build_train_dataset("offline_shapes", "train", 128, 32)
        >>> images, labels = next(iter(ds))
        >>> view1, view2 = images[..., :3], images[..., 3:]
    """
    defaults = augment.preset(image_size)
    if color_jitter_strength is None:
        color_jitter_strength = defaults["color_jitter_strength"]
    if use_blur is None:
        use_blur = defaults["use_blur"]
    image_size = int(image_size)

    default = augment.default_augmentations(use_blur)
    views = [default if v is None else augment.parse_augmentations(v)
             for v in (view1_augmentations, view2_augmentations)]

    # One traced function per distinct pipeline (tracing the augmentation is
    # the slow part of building the pipeline): a single one for symmetric views.
    def make_view_fn(names):
        @tf.function
        def one_view(image, key):
            return augment.augment_view(
                image, key, image_size, names,
                color_jitter_strength=color_jitter_strength,
                color_jitter_impl=color_jitter_impl,
            )
        return one_view

    view_fns = {names: make_view_fn(names) for names in views}
    first, second = view_fns[views[0]], view_fns[views[1]]
    shared = augment.parse_augmentations(shared_augmentations or ())
    shared_fn = make_view_fn(shared) if shared else None

    def two_views(image, key):
        k1, k2 = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        shared_image = image
        if shared_fn is not None:  # one draw for the image, before both views
            shared_image = shared_fn(image, tf.random.experimental.stateless_fold_in(
                key, _SHARED_SEED_SLOT))
        views = [first(shared_image, k1), second(shared_image, k2)]
        if clean_view:
            views.append(augment.preprocess_for_eval(image, image_size))
        return tf.concat(views, axis=-1)

    return _build_stream(
        name, split, batch_size, two_views, data_dir=data_dir, seed=seed,
        start_epoch=start_epoch, skip_batches=skip_batches, cache=cache, num_shards=num_shards,
        shard_index=shard_index, shuffle_buffer=shuffle_buffer, label_subset=label_subset,
        keep_unlabeled=True)


def build_finetune_dataset(
    name,
    split,
    batch_size,
    image_size,
    *,
    data_dir=None,
    seed=0,
    start_epoch=0,
    skip_batches=0,
    cache=False,
    num_shards=1,
    shard_index=0,
    shuffle_buffer=None,
    label_subset=None,
    keep_unlabeled=False,
):
    """Endless supervised fine-tuning batches: one crop+flip view per image.

    SimCLR fine-tunes (and trains supervised baselines) with random resized
    crop and horizontal flip only, without colour distortion or blur
    (arXiv:2002.05709 appendix B.6, arXiv:2006.10029). Shuffling, seeding,
    resumption and sharding work as in :func:`build_train_dataset`.

    Args:
        name, split, batch_size, image_size, data_dir, seed, start_epoch,
        skip_batches, cache, num_shards, shard_index, shuffle_buffer: as in
            :func:`build_train_dataset`.
        label_subset: a :class:`simclr_tf.data.subsets.LabelSubset` (the
            labelled examples of a semi-supervised run) or None (all).
        keep_unlabeled: False (fine-tuning) streams only the subset; True
            (distillation) streams every example, with label -1 outside it.

    Returns:
        ``(ds, info)``: ``ds`` yields ``(images float32 [batch_size, S, S, 3]
        in [0, 1], labels int32 [batch_size])`` forever.

    Example:
        >>> ds, info = build_finetune_dataset("offline_shapes", "train", 64, 32)
    """
    image_size = int(image_size)

    def one_view(image, key):
        return augment.preprocess_for_train(
            image, key, image_size, use_blur=False, crop=True, flip=True,
            color_distort=False)

    return _build_stream(
        name, split, batch_size, one_view, data_dir=data_dir, seed=seed,
        start_epoch=start_epoch, skip_batches=skip_batches, cache=cache, num_shards=num_shards,
        shard_index=shard_index, shuffle_buffer=shuffle_buffer, label_subset=label_subset,
        keep_unlabeled=keep_unlabeled)


def build_eval_dataset(
    name,
    split,
    batch_size,
    image_size,
    *,
    data_dir=None,
    cache=False,
    num_shards=1,
    shard_index=0,
):
    """One deterministic pass over a split for evaluation.

    No shuffling, no repetition; images go through
    :func:`simclr_tf.data.augment.preprocess_for_eval` (centre crop above
    32 px, resize). The last, partial batch is kept, so the shards together
    cover every example exactly once.

    Args:
        name, split, data_dir: as in :func:`build_train_dataset`.
        batch_size: examples per batch (the last batch may be smaller).
        image_size: output side.
        cache: cache the preprocessed images in memory (they are
            deterministic), so repeated evaluations skip decoding.
        num_shards, shard_index: this pipeline's share of the split (example
            ``i`` goes to shard ``i % num_shards``).

    Returns:
        ``(ds, info)``: ``ds`` yields ``(images float32 [b, S, S, 3] in [0, 1],
        labels int32 [b])`` with ``b <= batch_size``.

    Example:
        >>> ds, info = build_eval_dataset("offline_shapes", "test", 500, 32)
        >>> sum(int(labels.shape[0]) for _, labels in ds) == info.num_examples
        True
    """
    _check_shards(num_shards, shard_index)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    source = datasets.open_source(name, split, data_dir=data_dir)
    image_size = int(image_size)
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
