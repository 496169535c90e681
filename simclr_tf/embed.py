"""``python -m simclr_tf.embed``: the representations h (and z) of any images, written to disk.

What: runs a trained encoder over a dataset split the run accepts
(``--dataset=image_folder|offline_shapes|<TFDS name>`` with ``--split``) or
over unlabelled images (``--images=FOLDER`` or ``--images=LIST.txt``, one
path per line), with the evaluation preprocessing, through the extraction loop
of the frozen-feature evaluation (:func:`simclr_tf.linear_eval.features.feature_batches`,
so through the strategy), and streams the rows into ``OUT/h.npy`` (and
``OUT/z.npy`` with ``--z``) with ``np.lib.format.open_memmap``, so a split
larger than memory works. ``OUT/index.csv`` joins each row to its image:
``row,id,label,class`` (``id`` the file path, or ``<dataset>/<split>/<position>``
for in-memory and TFDS data; ``label`` -1 and ``class`` empty where unknown).
``OUT/embed.json`` records the model, the data, the shapes and the files skipped.
Why: getting embeddings of one's own images out is the first thing users
of a SimCLR package ask for after training; this way they need no code.

The model: ``--model_dir`` is a run's model_dir, a converted official model
(``python -m simclr_tf.convert``) or an exported SavedModel directory. With
``--weights=auto`` (default) the export (``saved_model/``) is used when there
is one, else the newest checkpoint (with the run's ``config.yaml``); a
checkpoint written after the export (training went on in ``--mode=train``)
is used instead of the stale export, with a line saying so;
``--weights=export|checkpoint`` chooses. A model_dir is only read.

The output directory is never half-written: everything goes to a hidden
temporary directory beside it (``.OUT.embed~host~pid~random``), renamed to
``OUT`` at the end. An existing ``OUT`` is replaced only when it is empty or
a previous embed output (it holds ``embed.json``); anything else is refused.
Temporary directories of killed embeds are removed by the next embed into
the same ``OUT``.

Example::

    python -m simclr_tf.embed --model_dir=runs/cifar10 --split=test --out=emb_test
    python -m simclr_tf.embed --model_dir=runs/cifar10 --images=~/photos --out=emb_photos --z
"""

from simclr_tf import env

env.tune_for_cli()  # before TensorFlow is imported

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging as py_logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags, logging  # noqa: E402

from simclr_tf import __version__, distribute, errors, files, runtime  # noqa: E402
from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf.config import sections  # noqa: E402
from simclr_tf.data import datasets, image_folder  # noqa: E402
from simclr_tf.errors import ConfigError, NotSimCLRExportError, RunError  # noqa: E402
from simclr_tf.export import reader  # noqa: E402
from simclr_tf.export.names import REPRESENTATION  # noqa: E402
from simclr_tf.linear_eval import features  # noqa: E402

PROJECTION = "proj_head_output"
MARKER = "embed.json"
INDEX = "index.csv"
INDEX_COLUMNS = ("row", "id", "label", "class")
OUTPUT_FILES = {"h": "h.npy", "z": "z.npy"}
KEYS = {"h": REPRESENTATION, "z": PROJECTION}  # our names -> the model's output keys
DEFAULT_BATCH = 256
_TEMP_TAG = ".embed"


class EmbedError(RunError):
    """An embedding that cannot be made; the message names the problem and the fix."""


# ---------------------------------------------------------------------- model
@dataclasses.dataclass
class Model:
    """A loaded encoder, whatever it was read from (see :func:`load_model`).

    Attributes:
        forward: ``forward(images, training=False) -> {output key: [b, C]}``
            (the model's output keys: ``final_avg_pool``, ``proj_head_output`` ...).
        outputs: the output keys it returns.
        image_size: the side of the images it takes.
        strategy: the strategy to run it under.
        cfg: the run's :class:`simclr_tf.config.Config` when the model_dir has
            a ``config.yaml``, else None.
        description: what was loaded (``"export PATH"`` or ``"checkpoint PATH"``).
    """

    forward: Callable
    outputs: tuple
    image_size: int
    strategy: Any
    cfg: Optional[Any]
    description: str

    def encoder(self, names):
        """``encoder(images, training=False) -> {name: tensor}`` for our ``names`` (h, z)."""
        missing = [n for n in names if KEYS[n] not in self.outputs]
        if missing:
            raise EmbedError(
                f"The model ({self.description}) has no {KEYS[missing[0]]!r} output, so "
                f"there is no {missing[0]} to write (it has {sorted(self.outputs)}). Leave "
                f"out --{missing[0]}.")

        def encode(images, training=False):
            out = self.forward(images, training=training)
            return {n: out[KEYS[n]] for n in names}

        return encode


def _run_config(model_dir):
    path = os.path.join(model_dir, "config.yaml")
    if not tf.io.gfile.exists(path):
        return None
    return config_lib.resolve(path, {"model_dir": model_dir, "mode": "eval"})


def _find_export(path):
    try:
        return reader.find_saved_model(path)
    except (NotSimCLRExportError, FileNotFoundError):
        return None


def load_model(path, weights="auto"):
    """Loads the encoder of a model_dir, a converted official model or an exported SavedModel.

    Args:
        path: the directory.
        weights: ``"auto"`` (the export when there is one, else the newest
            checkpoint), ``"export"`` or ``"checkpoint"``.

    Returns:
        A :class:`Model`.

    Raises:
        EmbedError: nothing loadable there; the message says what to pass.
    """
    path = os.fspath(path).rstrip("/") or "/"
    if not tf.io.gfile.isdir(path):
        raise EmbedError(f"--model_dir={path!r} is not a directory: pass a model_dir, a "
                         "converted official model or an exported saved_model/ directory.")
    export = _find_export(path) if weights in ("auto", "export") else None
    has_checkpoint = bool(tf.io.gfile.glob(os.path.join(path, "checkpoints", "*.index")))
    if weights == "export" and export is None:
        reader.find_saved_model(path)  # raises the reader's one-line reason
    if export is not None and weights == "auto" and _newer_checkpoint(path, export):
        logging.warning("%s has a checkpoint newer than its export %s: embedding the "
                        "checkpoint (pass --weights=export for the export).", path, export)
        export = None
    if export is not None:
        return _load_export(export, path)
    if not has_checkpoint:
        raise EmbedError(
            f"{path!r} holds neither an export (saved_model/) nor checkpoints: pass the "
            "model_dir of a trained run, a converted model "
            "(python -m simclr_tf.convert) or a saved_model/ directory.")
    return _load_checkpoint(path)


def _newer_checkpoint(model_dir, saved_model):
    """Whether model_dir's newest checkpoint was written after the export (and can be loaded)."""
    indexes = tf.io.gfile.glob(os.path.join(model_dir, "checkpoints", "*.index"))
    pb = os.path.join(saved_model, "saved_model.pb")
    if not indexes or not tf.io.gfile.exists(pb) or _run_config(model_dir) is None:
        return False
    newest = max(tf.io.gfile.stat(p).mtime_nsec for p in indexes)
    return newest > tf.io.gfile.stat(pb).mtime_nsec


def _load_export(saved_model, model_dir):
    strategy = distribute.get_strategy()
    with strategy.scope():
        loaded = tf.saved_model.load(saved_model)
    serve = loaded.signatures["serve"]
    info = reader.read_export_info(saved_model) or {}
    image_size = info.get("image_size") or int(
        serve.structured_input_signature[1]["images"].shape[1])
    outputs = tuple(sorted(serve.structured_outputs))
    # The run's config.yaml sits in the model_dir, also when given .../saved_model.
    cfg = _run_config(os.path.dirname(saved_model))

    def forward(images, training=False):
        return serve(images=images)

    forward.loaded = loaded  # keeps the variables alive with the function
    return Model(forward, outputs, int(image_size), strategy, cfg, f"export {saved_model}")


def _load_checkpoint(model_dir):
    cfg = _run_config(model_dir)
    if cfg is None:
        raise EmbedError(f"{model_dir!r} has checkpoints but no config.yaml, so the model "
                         "cannot be rebuilt: export it with `python -m simclr_tf.run "
                         f"--mode=export --config=... --model_dir={model_dir}`.")
    exp = runtime.build(cfg)
    prefix = exp.checkpointer.restore_finished("embed")
    model = exp.model
    with exp.strategy.scope():
        outputs = tuple(sorted(model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]))))

    def forward(images, training=False):
        return model(images, training=training)

    return Model(forward, outputs, cfg.image_size, exp.strategy, cfg, f"checkpoint {prefix}")


# ----------------------------------------------------------------------- data
@dataclasses.dataclass
class Input:
    """What to embed: the data settings, the split and its opened source."""

    data: Any  # a DataConfig: dataset, data_dir, image_size, eval_batch_size
    split: str
    source: Any

    @property
    def info(self):
        return self.source.info


def open_input(model, *, dataset=None, data_dir=None, split=None, images=None,
               batch_size=None):
    """Opens the images to embed at ``model``'s image size.

    Args:
        model: a :class:`Model`.
        dataset, data_dir, split: a dataset the run accepts; each defaults to
            the run's (``config.yaml``), ``split`` to its ``train_split``.
        images: instead, a folder of images (walked recursively; unlabelled)
            or a text file listing one image path per line.
        batch_size: global batch (default: the run's ``eval_batch_size``, else 256).
    """
    cfg = model.cfg
    batch = batch_size or (cfg.eval_batch_size if cfg is not None else DEFAULT_BATCH)
    if images:
        source = image_folder.image_files_source(os.path.expanduser(images))
        name, directory, split = source.info.name, None, source.info.split
    else:
        name = dataset or (cfg.dataset if cfg is not None else None)
        if not name:
            raise ConfigError("Say what to embed: --dataset (with --data_dir and --split) "
                              "or --images=FOLDER_OR_LIST (this model has no config.yaml "
                              "to take the run's dataset from).")
        directory = data_dir if data_dir is not None else (
            cfg.data_dir if cfg is not None and name == cfg.dataset else None)
        split = split or (cfg.train_split if cfg is not None and name == cfg.dataset
                          else "train")
        source = datasets.open_source(name, split, data_dir=directory)
    data = sections.DataConfig(
        dataset=name, data_dir=directory, train_split=split, eval_split=split,
        image_size=model.image_size, cache_dataset=False, train_batch_size=batch,
        eval_batch_size=batch, seed=0, label_fraction=1.0, label_subset_file=None)
    return Input(data, split, source)


def row_ids(inp):
    """The ``id`` of each row, in order: the file path, or ``<dataset>/<split>/<position>``."""
    records = inp.source.records
    if isinstance(records.element_spec, dict) and "path" in records.element_spec:
        paths = records.map(lambda r: r["path"]).batch(4096)
        return [p.decode("utf-8", "backslashreplace")
                for batch in paths.as_numpy_iterator() for p in batch]
    return [f"{inp.info.name}/{inp.split}/{i}" for i in range(inp.info.num_examples)]


def feature_batches(model, inp, names=("h",), what=None):
    """``(info, batches)`` of ``inp`` through ``model`` (see :func:`features.feature_batches`).

    Each batch is ``({name: float32 [b, C]}, labels int32 [b])``, rows in the
    source's order, every image (unlabelled ones with label -1).
    """
    return features.feature_batches(
        model.encoder(names), inp.data, inp.split, source=inp.source,
        strategy=model.strategy, what=what or f"embedding {inp.info.name} {inp.split!r}")


# ------------------------------------------------------------------- writing
def _is_embed_output(path):
    return tf.io.gfile.exists(os.path.join(path, MARKER))


def check_out(out):
    """Refuses an ``out`` that embed may not write or replace (see the module docstring)."""
    if files.is_remote(out):
        raise EmbedError(f"--out={out!r}: embeddings are written with memory maps, so "
                         "--out must be a local folder; copy it afterwards (gsutil cp -r).")
    if os.path.exists(out) and not os.path.isdir(out):
        raise EmbedError(f"--out={out!r} is a file: pass a folder (new, empty or a "
                         "previous embed output).")
    if os.path.isdir(out) and os.listdir(out) and not _is_embed_output(out):
        raise EmbedError(
            f"--out={out!r} holds files that are not an embed output (no {MARKER}); "
            "embed replaces only an empty folder or a previous embed output. Pass a "
            "new --out.")


def _publish(tmp, out):
    """Moves the finished ``tmp`` to ``out``, replacing an empty folder or an earlier output."""
    old = None
    if os.path.isdir(out):
        check_out(out)  # again: something may have been written there meanwhile
        if os.listdir(out):
            old = files.temp_sibling(out, _TEMP_TAG) + "-old"
            os.rename(out, old)
        else:
            os.rmdir(out)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _class_name(label, class_names):
    if class_names and 0 <= label < len(class_names):
        return class_names[label]
    return ""


def write_embeddings(model, inp, out, names=("h",), log=print):
    """Embeds ``inp`` with ``model`` into the folder ``out``; returns the ``embed.json`` dict.

    Args:
        model: a :class:`Model`.
        inp: an :class:`Input` (:func:`open_input`).
        out: the output folder (see the module docstring for when it may be replaced).
        names: ``("h",)`` or ``("h", "z")``.
        log: where the summary lines go.
    """
    out = os.fspath(out).rstrip("/")
    check_out(out)
    model.encoder(names)  # refuses a missing output before any work
    files.remove_dead_siblings(out, _TEMP_TAG)
    tmp = files.temp_sibling(out, _TEMP_TAG)
    os.makedirs(tmp)  # and the parent
    try:
        with errors.writing(tmp, "the embeddings", f"{out!r} is unchanged"):
            meta = _write(model, inp, tmp, names)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shapes = ", ".join(f"{n}: {meta['num_rows']} x {meta['dims'][n]}" for n in names)
    log(f"embedded {meta['num_rows']} images ({shapes}, float32) of {meta['data']} with "
        f"the {model.description}")
    log("wrote " + " ".join(os.path.join(out, f) for f in meta["files"]))
    skipped = meta["skipped_files"]
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        log(f"skipped {len(skipped)} file(s) that could not be read: {shown} (all listed "
            f"in {os.path.join(out, MARKER)} under skipped_files)")
    return meta


def _write(model, inp, tmp, names):
    info, batches = feature_batches(model, inp, names)
    n = info.num_examples
    arrays, labels, row = {}, np.full(n, -1, np.int32), 0
    for feats, batch_labels in batches:
        if not arrays:
            arrays = {k: np.lib.format.open_memmap(
                os.path.join(tmp, OUTPUT_FILES[k]), mode="w+", dtype=np.float32,
                shape=(n, v.shape[1])) for k, v in feats.items()}
        b = len(batch_labels)
        if row + b > n:
            raise EmbedError(f"The data yielded more than the {n} images it announced.")
        for k, v in feats.items():
            arrays[k][row:row + b] = v
        labels[row:row + b] = batch_labels
        row += b
    if row != n:
        raise EmbedError(f"The data yielded {row} images instead of the {n} it announced.")
    dims = {}
    for k, a in arrays.items():
        dims[k] = int(a.shape[1])
        a.flush()
    del arrays
    ids = row_ids(inp)
    class_names = info.class_names
    with open(os.path.join(tmp, INDEX), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(INDEX_COLUMNS)
        for i, (ident, label) in enumerate(zip(ids, labels.tolist())):
            w.writerow([i, ident, label, _class_name(label, class_names)])
    data = (f"{inp.info.name} {inp.split!r}" if inp.data.data_dir is None
            else f"{inp.info.name} {inp.split!r} of {inp.data.data_dir}")
    meta = {
        "simclr_tf_version": __version__,
        "model": model.description,
        "data": data,
        "dataset": inp.info.name,
        "data_dir": inp.data.data_dir,
        "split": inp.split,
        "image_size": model.image_size,
        "num_rows": n,
        "dims": dims,
        "outputs": {k: KEYS[k] for k in names},
        "files": [OUTPUT_FILES[k] for k in names] + [INDEX, MARKER],
        "index_columns": list(INDEX_COLUMNS),
        "class_names": list(class_names) if class_names else None,
        "skipped_files": list(info.skipped_files),
    }
    with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    return meta


# ------------------------------------------------------------------------ CLI
# argparse, not absl flags: these tools are called in-process next to
# simclr_tf.run (tests, notebooks), whose global absl flags share some names.
def add_model_arguments(parser):
    """The arguments shared with ``simclr_tf.neighbours``: the model and the data."""
    parser.add_argument("--model_dir", required=True, help="A run's model_dir, a converted "
                        "official model or an exported saved_model/ directory.")
    parser.add_argument("--weights", default="auto", choices=["auto", "export", "checkpoint"],
                        help="auto: the export when there is one, else the newest checkpoint.")
    parser.add_argument("--dataset", help="offline_shapes, image_folder or a TFDS name "
                        "(default: the run's).")
    parser.add_argument("--data_dir", help="ROOT of an image_folder, or the TFDS data_dir "
                        "(default: the run's, for the run's dataset).")
    parser.add_argument("--batch_size", type=int, help="Images per global batch (default: "
                        f"the run's eval_batch_size, else {DEFAULT_BATCH}).")


def fail(program, message):
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)


def setup_logging():
    """Our progress lines (absl INFO) on stderr; TensorFlow's INFO lines stay off."""
    flags.FLAGS.mark_as_parsed()  # absl's flags are not ours: parsed with argparse
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m simclr_tf.embed",
        description="Writes the representations h (and z) of a split or of your images "
                    "to OUT/h.npy (z.npy) with OUT/index.csv and OUT/embed.json.")
    add_model_arguments(parser)
    parser.add_argument("--split", help="The split to embed (TFDS syntax, e.g. 'test' or "
                        "'train[:10%%]'; default: the run's train_split).")
    parser.add_argument("--images", help="Instead of a dataset: a folder of images "
                        "(unlabelled; walked recursively) or a text file with one image path "
                        "per line (relative to the file's folder).")
    parser.add_argument("--out", required=True, help="The output folder (new, empty or a "
                        "previous embed output).")
    parser.add_argument("--z", action="store_true", help="Also write z, the projection "
                        "head's output.")
    return parser.parse_args(argv)


def main(argv=None):
    """``python -m simclr_tf.embed``; ``argv`` without the program name. Exit status 2 on errors."""
    program = "simclr_tf.embed"
    args = parse(argv)
    if args.images and (args.dataset or args.split):
        fail(program, "pass either --images or --dataset/--split, not both.")
    try:
        check_out(args.out)  # before the model loads
        model = load_model(args.model_dir, args.weights)
        inp = open_input(model, dataset=args.dataset, data_dir=args.data_dir,
                         split=args.split, images=args.images, batch_size=args.batch_size)
        write_embeddings(model, inp, args.out, ("h", "z") if args.z else ("h",))
    except (ConfigError, RunError, NotSimCLRExportError, FileNotFoundError, ValueError) as e:
        fail(program, str(e))


if __name__ == "__main__":
    setup_logging()
    main()
