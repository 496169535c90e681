"""``python -m simclr_tf.data.make_folder``: a class-balanced image folder from TFDS.

The CPU recipe (``configs/cifar10_cpu.yaml``) and the studies in STUDIES.md
were measured on 5,000 CIFAR-10 training photographs, 500 per class, with 100
per class for testing, read as an image folder. This command builds a folder
of that kind from any labelled TFDS image dataset::

    python -m simclr_tf.data.make_folder --dataset=cifar10 --per_class=500 \\
        --test_per_class=100 --out=data/cifar10_500

It writes ``OUT/train/<class name>/<index>.png`` (``--per_class`` examples of
every class of ``--train_split``) and ``OUT/test/<class name>/<index>.png``
(``--test_per_class`` of ``--eval_split``; 0 writes the whole split), which
``--dataset=image_folder --data_dir=OUT`` reads. ``<index>`` is the example's
position in the TFDS split (its fixed, unshuffled order); the images are PNG,
so their pixels are exactly TFDS's. Which examples: the first ``k`` of a
permutation of each class drawn from ``numpy.random.default_rng([seed,
class])`` (:func:`simclr_tf.data.subsets.per_class_indices`, the draw that
``--label_fraction`` uses), so one seed always gives the same folder and a
smaller ``--per_class`` gives a subset of a larger one. ``OUT/make_folder.json``
records the dataset, its TFDS version, the seed and every chosen index.

The folder appears only when complete (written to a hidden sibling named
after this process, ``.OUT.make_folder~host~pid~random``, and renamed; the
next build removes such siblings only when their process is gone);
an existing non-empty ``OUT`` is left alone: rerunning with the same settings
reports it as done, other settings are refused. TFDS downloads the dataset on
first use (``--data_dir``: the TFDS data directory, default
``~/tensorflow_datasets``). Class folders are named after the TFDS class
names; ``image_folder`` numbers classes in sorted name order, which for
CIFAR-10 is TFDS's own label order.
"""

from simclr_tf import env

env.tune_for_cli()  # before TensorFlow is imported: no start-up lines before an error

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf import files  # noqa: E402
from simclr_tf.data import datasets, subsets  # noqa: E402
from simclr_tf.errors import ConfigError  # noqa: E402

MANIFEST = "make_folder.json"
_TEMP_TAG = ".make_folder"
FOLDERS = ("train", "test")  # what --train_split and --eval_split are written as


def _labels(source):
    batches = list(source.records.map(lambda r: r["label"]).batch(8192).as_numpy_iterator())
    return np.concatenate(batches).astype(np.int64) if batches else np.zeros([0], np.int64)


def _class_folder(info, label):
    names = info.class_names
    name = names[label] if names and 0 <= label < len(names) else str(label)
    return str(name).replace("/", "_").replace(os.sep, "_") or str(label)


def select(dataset, split, per_class, seed=0, data_dir=None):
    """``(source, labels, indices)``: the examples of ``split`` that go into the folder.

    ``per_class`` > 0: exactly that many of every class
    (:func:`subsets.per_class_indices`); 0: every example (all must be labelled).
    """
    source = datasets.open_source(dataset, split, data_dir=data_dir)
    if source.info.name in (datasets.IMAGE_FOLDER_NAME, datasets.OFFLINE_NAME):
        raise ConfigError(f"make_folder reads TFDS datasets, not {source.info.name!r}.")
    labels = _labels(source)
    if per_class:
        indices = subsets.per_class_indices(labels, per_class, seed)
    else:
        if np.any(labels < 0):
            raise ConfigError(f"Split {split!r} of {dataset!r} has unlabelled examples, "
                              "which have no class folder to go to.")
        indices = np.arange(len(labels), dtype=np.int64)
    return source, labels, indices


def _write_split(source, indices, folder):
    """Writes the selected examples of ``source`` as PNGs under ``folder``; returns the count."""
    keep = np.zeros([source.info.num_examples], bool)
    keep[indices] = True
    keep_t = tf.constant(keep)
    width = len(str(max(source.info.num_examples - 1, 0)))

    def encode(i, record):
        example = source.decode(record)
        return i, example["label"], tf.io.encode_png(example["image"])

    stream = (source.records.enumerate()
              .filter(lambda i, _: tf.gather(keep_t, i))
              .map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    made, written = set(), 0
    for i, label, png in stream.as_numpy_iterator():
        class_dir = os.path.join(folder, _class_folder(source.info, int(label)))
        if class_dir not in made:
            os.makedirs(class_dir, exist_ok=True)
            made.add(class_dir)
        with open(os.path.join(class_dir, f"{int(i):0{width}d}.png"), "wb") as f:
            f.write(png)
        written += 1
    if written != len(indices):
        raise RuntimeError(f"wrote {written} images of {len(indices)} selected: the "
                           "dataset changed while it was read.")
    return written


def _spec(dataset, per_class, test_per_class, train_split, eval_split, seed):
    return {"dataset": dataset, "seed": int(seed),
            "train": {"split": train_split, "per_class": int(per_class)},
            "test": {"split": eval_split, "per_class": int(test_per_class)}}


def _same_spec(manifest, spec):
    return (manifest.get("dataset") == spec["dataset"] and manifest.get("seed") == spec["seed"]
            and all({k: manifest.get(f, {}).get(k) for k in ("split", "per_class")} == spec[f]
                    for f in FOLDERS))


def build(out, dataset="cifar10", per_class=500, test_per_class=100, train_split="train",
          eval_split="test", seed=0, data_dir=None):
    """Writes the folder (module docstring); returns its manifest dict.

    ``manifest["already_built"]`` is True when ``out`` already held this very
    folder (nothing was written).

    Raises:
        ConfigError (incl. SubsetError): bad sizes, unlabelled data, a class
            short of ``per_class``, or ``out`` holding something else.
    """
    if per_class < 1:
        raise ConfigError(f"Invalid value {per_class!r} for 'per_class': it must be >= 1.")
    if test_per_class < 0:
        raise ConfigError(f"Invalid value {test_per_class!r} for 'test_per_class': it "
                          "must be >= 1, or 0 for the whole split.")
    out = os.path.abspath(os.path.expanduser(out))
    spec = _spec(dataset, per_class, test_per_class, train_split, eval_split, seed)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        try:
            with open(os.path.join(out, MANIFEST)) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            manifest = None
        if manifest is not None and _same_spec(manifest, spec):
            return dict(manifest, already_built=True)
        raise ConfigError(f"{out} exists and holds something else"
                          f"{' (another make_folder subset)' if manifest else ''}: pass a "
                          "new or empty --out.")
    files.remove_dead_siblings(out, _TEMP_TAG)  # killed earlier builds of this --out
    partial = files.temp_sibling(out, _TEMP_TAG)
    manifest = dict(spec)
    version = None
    try:
        for folder, split, k in ((FOLDERS[0], train_split, per_class),
                                 (FOLDERS[1], eval_split, test_per_class)):
            source, labels, indices = select(dataset, split, k, seed, data_dir)
            count = _write_split(source, indices, os.path.join(partial, folder))
            per_label = np.bincount(labels[indices]) if len(indices) else np.zeros([0], int)
            manifest[folder] = dict(spec[folder], num_images=count,
                                    num_split_examples=int(len(labels)),
                                    images_per_class={_class_folder(source.info, c): int(n)
                                                      for c, n in enumerate(per_label) if n},
                                    indices=[int(i) for i in indices])
            version = version or _tfds_version(dataset, data_dir)
        manifest["tfds_version"] = version
        with open(os.path.join(partial, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dict(manifest, already_built=False)


def _tfds_version(dataset, data_dir):
    import tensorflow_datasets as tfds  # slow to import: only for TFDS datasets

    try:
        return str(tfds.builder(dataset, data_dir=data_dir).info.version)
    except Exception:  # pragma: no cover - informative only
        return None


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m simclr_tf.data.make_folder",
        description="Write a class-balanced image folder (OUT/train/<class>/, "
                    "OUT/test/<class>/) from a labelled TFDS image dataset.")
    p.add_argument("--dataset", default="cifar10", help="TFDS name (default cifar10).")
    p.add_argument("--out", required=True, help="The folder to write (new or empty).")
    p.add_argument("--per_class", type=int, default=500,
                   help="Training images per class (default 500).")
    p.add_argument("--test_per_class", type=int, default=100,
                   help="Test images per class (default 100; 0: the whole eval split).")
    p.add_argument("--train_split", default="train", help="TFDS split written as OUT/train.")
    p.add_argument("--eval_split", default="test", help="TFDS split written as OUT/test.")
    p.add_argument("--seed", type=int, default=0, help="Which examples (default 0).")
    p.add_argument("--data_dir", default=None,
                   help="TFDS data directory (default ~/tensorflow_datasets).")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    prog = "simclr_tf.data.make_folder"
    try:
        m = build(args.out, args.dataset, args.per_class, args.test_per_class,
                  args.train_split, args.eval_split, args.seed, args.data_dir)
    except (ConfigError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, tf.errors.OpError) as e:
        print(f"{prog}: error: could not read {args.dataset!r} through TFDS or write "
              f"{args.out!r} ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); "
              "TFDS needs the network the first time it downloads a dataset.",
              file=sys.stderr)
        return 1
    out = os.path.abspath(os.path.expanduser(args.out))
    what = "already there" if m["already_built"] else "wrote"
    print(f"{what}: {out}: {m['train']['num_images']} train and {m['test']['num_images']} "
          f"test images of {m['dataset']} (seed {m['seed']}); train on it with "
          f"--dataset=image_folder --data_dir={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
