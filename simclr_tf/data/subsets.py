"""Labelled subsets of a training split for semi-supervised learning (SimCLR v2).

SimCLR v2 fine-tunes a pretrained network on 1% or 10% of the ImageNet labels
(Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised
Learners", NeurIPS 2020, arXiv:2006.10029). This module picks such a subset of
a split, either by fraction or from a file of example ids, and restricts a
:class:`~simclr_tf.data.datasets.Source` to it.

By fraction (:func:`balanced_indices`): the same number ``k`` of examples
from every class (examples with label -1 are never picked)::

    k = min(max(1, round_half_up(label_fraction * N / C)), smallest class size)

with ``N`` the labelled examples of the split and ``C`` the classes present
in it. So every class gets at least one example, ``k * C`` is within ``C/2``
of ``label_fraction * N`` for balanced splits, and no class is short of ``k``
(for imbalanced splits ``k`` is capped at the smallest class). Which ``k``
examples: the first ``k`` of a permutation of the class's examples drawn
from ``numpy.random.default_rng([seed, class])``. The subset is a pure
function of ``(labels, fraction, seed)``, and for one seed a smaller fraction
gives a subset of a larger one (1% inside 10%, as the official subsets are).
``label_fraction=1.0`` keeps every example (no balancing). The same draw
with a fixed ``k`` (:func:`per_class_indices`) picks the examples that
``python -m simclr_tf.data.make_folder`` writes as a balanced image folder.

By file (:func:`indices_from_file`): a text file of example ids, one per line
(blank lines and lines starting with ``#`` are ignored), like the official
ImageNet ``1percent.txt`` / ``10percent.txt``. A line names an example when
it equals:

* ``image_folder``: the image's path relative to the split folder
  (``cat/001.jpg``), relative to the root (``train/cat/001.jpg``), or its bare
  file name (``001.jpg``, which the official ImageNet files use);
* a TFDS dataset with a ``file_name`` feature (``imagenet2012``): that file
  name;
* any other dataset (``offline_shapes``, TFDS without ``file_name``): the
  example's index in the split (``0``, ``17``, ...).

Lines that match nothing are counted and logged; a file that matches no
example is an error. For ImageNet in TFDS, the ``imagenet2012_subset/1pct``
and ``/10pct`` datasets hold the official subsets as their own (much smaller)
train splits, which reads faster than filtering the full split.

Example:
    >>> from simclr_tf.data import subsets
    >>> sub = subsets.select("offline_shapes", "train", label_fraction=0.01, seed=0)
    >>> sub.num_selected, sub.per_class          # 10 classes x 10 examples
    (100, 10)
"""

import dataclasses
import functools
import logging
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from simclr_tf import files
from simclr_tf.data import datasets
from simclr_tf.errors import SubsetError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabelSubset:
    """The labelled examples of a split that a run may use.

    Attributes:
        indices: sorted int64 indices into the split (its fixed source order).
        num_examples: size of the whole split.
        per_class: examples per class for a ``label_fraction`` subset, else None.
        description: how the subset was chosen (for logs).
        num_labelled: selected examples that have a label (>= 0).
    """

    indices: np.ndarray
    num_examples: int
    per_class: Optional[int]
    description: str
    num_labelled: int = 0

    @property
    def num_selected(self):
        return int(len(self.indices))

    def mask(self):
        """bool [num_examples]: True for the selected examples."""
        keep = np.zeros([self.num_examples], bool)
        keep[self.indices] = True
        return keep


def per_class_count(num_labelled, num_classes, fraction):
    """``k`` of the module docstring before capping at the smallest class."""
    if not 0.0 < fraction <= 1.0:
        raise SubsetError(f"Invalid value {fraction!r} for 'label_fraction': it must "
                          "be in (0, 1].")
    return max(1, int(np.floor(fraction * num_labelled / max(num_classes, 1) + 0.5)))


def _class_members(labels):
    """(classes, [indices of each class]) of the labelled (>= 0) examples."""
    labels = np.asarray(labels).astype(np.int64)
    classes = np.unique(labels[labels >= 0])
    return classes, [np.flatnonzero(labels == c) for c in classes]


def _first_k_of_each_class(classes, members, k, seed):
    """The first ``k`` of each class's permutation from ``default_rng([seed, class])``, sorted."""
    picked = [m[np.random.default_rng([int(seed), int(c)]).permutation(len(m))[:k]]
              for c, m in zip(classes, members)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def balanced_indices(labels, fraction, seed=0):
    """Sorted indices of a class-balanced ``fraction`` of ``labels``.

    Args:
        labels: int array [N]; -1 marks unlabelled examples (never picked).
        fraction: float in (0, 1].
        seed: int; the same seed gives the same subset.

    Returns:
        ``(indices int64 [k * C], k)``.

    Raises:
        SubsetError: no labelled example, or ``fraction`` outside (0, 1].
    """
    classes, members = _class_members(labels)
    if classes.size == 0:
        raise SubsetError("'label_fraction' < 1 needs labels, but the split has no "
                          "labelled example.")
    k = min(per_class_count(sum(len(m) for m in members), len(classes), fraction),
            min(len(m) for m in members))
    return _first_k_of_each_class(classes, members, k, seed), k


def per_class_indices(labels, per_class, seed=0):
    """Sorted indices of exactly ``per_class`` examples of every class in ``labels``.

    The same draw as :func:`balanced_indices`: for one seed, a fraction that
    gives ``k`` per class selects exactly ``per_class_indices(labels, k, seed)``,
    and a smaller ``per_class`` is a subset of a larger one. Used by
    ``python -m simclr_tf.data.make_folder`` to write fixed-size balanced
    image folders (e.g. 500 CIFAR-10 photographs per class).

    Raises:
        SubsetError: ``per_class < 1``, no labelled example, or a class with
            fewer than ``per_class`` examples (named in the message).
    """
    if int(per_class) != per_class or per_class < 1:
        raise SubsetError(f"Invalid value {per_class!r} for 'per_class': it must be an "
                          "integer >= 1.")
    classes, members = _class_members(labels)
    if classes.size == 0:
        raise SubsetError("A per-class subset needs labels, but the split has no "
                          "labelled example.")
    short = [(int(c), len(m)) for c, m in zip(classes, members) if len(m) < per_class]
    if short:
        c, n = short[0]
        raise SubsetError(f"'per_class'={per_class} is more than class {c} has ({n} "
                          f"examples; {len(short)} class(es) short): ask for at most "
                          f"{min(len(m) for m in members)}.")
    return _first_k_of_each_class(classes, members, int(per_class), seed)


def read_subset_file(path):
    """The ids in a subset file: stripped lines, without blanks and ``#`` comments."""

    if not tf.io.gfile.exists(path):
        raise SubsetError(f"Invalid value {path!r} for 'label_subset_file': the file "
                          "does not exist.")
    with tf.io.gfile.GFile(path) as f:
        lines = [line.strip().replace("\\", "/") for line in f]
    ids = [line for line in lines if line and not line.startswith("#")]
    if not ids:
        raise SubsetError(f"'label_subset_file' {path!r} lists no example id (one id "
                          "per line expected).")
    return ids


def indices_from_file(example_keys, path):
    """Sorted indices of the examples named in the subset file ``path``.

    Args:
        example_keys: one tuple of accepted ids per example of the split.
        path: the subset file.

    Raises:
        SubsetError: the file is missing, empty, or matches no example.
    """
    wanted = set(read_subset_file(path))
    found, used = [], set()
    for i, keys in enumerate(example_keys):
        hits = wanted.intersection(keys)
        if hits:
            found.append(i)
            used.update(hits)
    if not found:
        sample = ", ".join(repr(k) for k in list(example_keys[0])[:3]) if example_keys else ""
        raise SubsetError(
            f"'label_subset_file' {path!r} matches no example of the split (ids of its "
            f"first example: {sample}). See simclr_tf/data/subsets.py for the id rules.")
    if len(used) < len(wanted):
        logger.warning("label_subset_file %s: %d of %d ids match no example.", path,
                       len(wanted) - len(used), len(wanted))
    return np.asarray(found, np.int64)


# ------------------------------------------------------------- split metadata
def _image_folder_keys(paths, data_dir):
    root = data_dir.rstrip("/") if files.is_remote(data_dir) else os.path.abspath(data_dir)
    keys = []
    for p in paths:
        rel_root = os.path.relpath(p, root).replace(os.sep, "/") if not files.is_remote(p) else (
            p[len(root) + 1:])
        rel_split = rel_root.split("/", 1)[-1]
        keys.append((rel_split, rel_root, rel_root.rsplit("/", 1)[-1]))
    return keys


def _tfds_file_names(name, split, data_dir):
    """``file_name`` of every example of a TFDS split, or None without that feature."""
    import tensorflow_datasets as tfds  # slow to import: only for TFDS datasets

    builder = tfds.builder(name, data_dir=data_dir)
    if "file_name" not in builder.info.features:
        return None
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=tfds.decode.
                            PartialDecoding({"file_name": True}))
    names = []
    for batch in ds.map(lambda ex: ex["file_name"]).batch(4096).as_numpy_iterator():
        names += [os.path.basename(n.decode("utf-8")) for n in batch]
    return names


def _labels_and_keys(name, split, data_dir, want_keys):
    """(labels int64 [N], per-example id tuples or None) in the split's source order."""

    source = datasets.open_source(name, split, data_dir=data_dir)
    labels = [b for b in source.records.map(lambda r: r["label"]).batch(8192)
              .as_numpy_iterator()]
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros([0], np.int64)
    if not want_keys:
        return labels, None
    if source.info.name == datasets.IMAGE_FOLDER_NAME:
        paths = [p.decode("utf-8") for b in source.records.map(lambda r: r["path"])
                 .batch(8192).as_numpy_iterator() for p in b]
        return labels, _image_folder_keys(paths, data_dir)
    if source.info.name != datasets.OFFLINE_NAME:
        names = _tfds_file_names(name, split, data_dir)
        if names is not None:
            return labels, [(n,) for n in names]
    return labels, [(str(i),) for i in range(len(labels))]


@functools.lru_cache(maxsize=16)
def select(name, split, data_dir=None, label_fraction=1.0, label_subset_file=None,
           seed=0):
    """The :class:`LabelSubset` of a split, or None when every label is used.

    Args:
        name, split, data_dir: the dataset split (see ``datasets.load``).
        label_fraction: class-balanced fraction in (0, 1]; 1.0 keeps all.
        label_subset_file: path of an id file (exclusive with a fraction < 1).
        seed: seed of the balanced selection.

    Memoised per process (the trainer and the input pipelines ask for the
    same subset).
    """
    if label_subset_file and label_fraction < 1.0:
        raise SubsetError("Set either 'label_fraction' < 1 or 'label_subset_file', "
                          "not both.")
    if not label_subset_file:
        if label_fraction >= 1.0:
            return None
        labels, _ = _labels_and_keys(name, split, data_dir, want_keys=False)
        indices, k = balanced_indices(labels, label_fraction, seed)
        return LabelSubset(indices, len(labels), k,
                           f"label_fraction={label_fraction} (seed {seed}): {k} per "
                           "class", num_labelled=len(indices))
    labels, keys = _labels_and_keys(name, split, data_dir, want_keys=True)
    indices = indices_from_file(keys, label_subset_file)
    return LabelSubset(indices, len(labels), None,
                       f"label_subset_file={label_subset_file}",
                       num_labelled=int(np.sum(labels[indices] >= 0)))


def restrict(source, subset, keep_others=False):
    """``source`` limited to ``subset`` (a :class:`LabelSubset`, or None: unchanged).

    ``keep_others=False`` drops the other examples (fine-tuning on the
    labelled subset); ``True`` keeps them with label -1 (distillation and the
    pretraining probe: unlabelled data, labels only inside the subset).
    """

    if subset is None:
        return source
    if subset.num_examples != source.info.num_examples:
        raise SubsetError(f"The label subset was built for {subset.num_examples} "
                          f"examples, but the split has {source.info.num_examples}.")
    keep = tf.constant(subset.mask())
    records = source.records.enumerate()
    if keep_others:
        def relabel(i, record):
            record = dict(record)
            record["label"] = tf.where(tf.gather(keep, i), record["label"],
                                       tf.constant(-1, record["label"].dtype))
            return record
        return dataclasses.replace(source, records=records.map(relabel))
    records = records.filter(lambda i, _: tf.gather(keep, i)).map(lambda _, r: r)
    records = records.apply(tf.data.experimental.assert_cardinality(subset.num_selected))
    info = dataclasses.replace(source.info, num_examples=subset.num_selected)
    return dataclasses.replace(source, records=records, info=info)
