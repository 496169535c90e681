"""Converts an official SimCLR TF2 SavedModel into a simclr_tf run directory.

Usage::

    python -m simclr_tf.convert --official_saved_model=PATH --model_dir=DIR [--image_size=N]
    python -m simclr_tf.convert --official=NAME --model_dir=DIR     # a released model
    python -m simclr_tf.convert --official=list                     # their names

``PATH`` is a SavedModel written by the official google-research/simclr
``tf2/run.py`` (``build_saved_model`` + ``tf.saved_model.save``), e.g. a
released model such as
``gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk0/saved_model/``
(any ``tf.io.gfile`` path). ``--official=NAME`` takes a released pretrained
model's name instead (:mod:`simclr_tf.official.releases`); a path that cannot be
reached (no network) is an error that says how to download it by hand. Such
exports have no serving signature, so Keras 3 cannot load them; the converter
rebuilds the model in simclr_tf:

1. It reads the variables of ``loaded.model.resnet_model``,
   ``loaded.model._projection_head`` and ``loaded.model.supervised_head`` and
   infers the architecture from their names and shapes: depth, width
   multiplier, selective kernels, CIFAR or ImageNet stem, projection-head
   mode and layers, supervised-head classes
   (:func:`simclr_tf.official.layout.infer_architecture`). A ResNet-18/34
   with the CIFAR stem does not show its ``sk_ratio`` (with ``sk_ratio > 0``
   the official basic block only swaps its projection shortcuts for ResNet-D
   ones, which hold the same variables): both layouts are built and the one
   that reproduces the official outputs in step 3 is kept (or ``--sk_ratio``
   names it); the report says which.
2. It builds the matching model with
   :func:`simclr_tf.tasks.build_model` and copies every variable,
   BatchNorm moving statistics included, with an explicit name mapping
   (:func:`simclr_tf.official.mapping.map_variables`). An official variable that has no place in the
   model, or a model weight that no official variable fills, is an error
   naming the variable.
3. It proves parity: the official model (``loaded(x, trainable=False)``) and
   the converted one (``training=False``) run on the same random batch and the
   largest absolute and relative differences of ``final_avg_pool`` (h),
   ``proj_head_output`` (z) and ``logits_sup`` are printed; a relative
   difference above 1e-4 is an error.
4. Only then it writes ``DIR`` (:func:`write_run_dir`): ``config.yaml``, a
   checkpoint in ``DIR/checkpoints/`` (what ``--checkpoint=DIR``,
   ``--mode=eval`` and ``--mode=export`` read) and the export
   (``saved_model/`` with ``serve``, ``serve_training`` and ``serve_uint8``;
   ``simclr.keras``). Everything is written into a temporary sibling directory
   that is renamed to ``DIR`` at the end, so a failed conversion leaves
   ``DIR`` untouched; what a killed one leaves beside ``DIR`` is removed (or,
   if it was being moved in, finished) by the next conversion into ``DIR``.
   A ``DIR`` that already holds files is refused.

Errors are :class:`ConversionError`; the command line prints them in one line
and exits with status 1.
"""


from simclr_tf import env

env.tune_for_cli()  # before TensorFlow is imported (only when run as a program)

import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from simclr_tf import config as config_lib  # noqa: E402
from simclr_tf import files  # noqa: E402
from simclr_tf import errors  # noqa: E402
from simclr_tf.errors import ConversionError, RunError  # noqa: E402
from simclr_tf.export import writer  # noqa: E402
from simclr_tf import tasks  # noqa: E402
from simclr_tf.tasks import build_model  # noqa: E402
from simclr_tf.official import layout, mapping, releases  # noqa: E402
from simclr_tf.official.layout import Architecture, infer_architecture, load_official  # noqa: E402,F401
from simclr_tf.official.mapping import copy_variables, map_variables, parity  # noqa: E402,F401
from simclr_tf.runtime.checkpointer import Checkpointer  # noqa: E402
from simclr_tf.runtime.experiment import build_schedule  # noqa: E402
from simclr_tf.runtime.run_dir import RunDir  # noqa: E402

RELATIVE_TOLERANCE = 1e-4


def build_config(arch, model_dir, image_size=None, ft_proj_selector=0):
    """The :class:`simclr_tf.config.Config` of a converted model."""
    size = image_size or (32 if arch.cifar_stem else 224)
    values = dict(
        resnet_depth=arch.resnet_depth, width_multiplier=float(arch.width_multiplier),
        sk_ratio=float(arch.sk_ratio), image_size=int(size),
        proj_head_mode=arch.proj_head_mode, num_proj_layers=arch.num_proj_layers,
        proj_out_dim=arch.proj_out_dim, global_bn=arch.global_bn,
        ft_proj_selector=int(ft_proj_selector), model_dir=model_dir, mode="export",
        num_classes=int(arch.num_classes),
        # The official supervised head is a plain Dense on hiddens[ft_proj_selector];
        # the finetune task builds that head (pretraining's probe
        # adds an input BatchNormalization the official probe does not have).
        train_mode="finetune" if arch.num_classes else "pretrain")
    try:
        cfg = config_lib.from_dict(values).validate()
    except config_lib.ConfigError as e:
        raise ConversionError(f"The inferred architecture is not a valid config: {e}"
                              ) from None
    if cfg.cifar_stem != arch.cifar_stem:
        stem = "CIFAR" if arch.cifar_stem else "ImageNet"
        raise ConversionError(
            f"--image_size={size} does not fit the official model's {stem} stem: "
            "simclr_tf uses the CIFAR stem exactly for image_size <= 32, so pass "
            f"--image_size {'<= 32' if arch.cifar_stem else '> 32'}.")
    return cfg


# ------------------------------------------------------------------- writing
def _holds_files(path):
    return tf.io.gfile.exists(path) and (not tf.io.gfile.isdir(path)
                                         or bool(tf.io.gfile.listdir(path)))


def check_model_dir(model_dir):
    """Refuses a model_dir that already holds a run (or any file)."""
    if not _holds_files(model_dir):
        return
    if not tf.io.gfile.isdir(model_dir):
        raise ConversionError(f"--model_dir={model_dir!r} is a file; pass a new directory.")
    entries = set(tf.io.gfile.listdir(model_dir))
    run = {e.rstrip("/") for e in entries} & {"config.yaml", "checkpoints", "saved_model",
                                               "simclr.keras"}
    what = (f"already holds a run ({', '.join(sorted(run))})" if run
            else "is not empty")
    raise ConversionError(f"--model_dir={model_dir!r} {what}; the converter writes "
                          "only into a new or empty directory. Pass another --model_dir.")


_TMP = ".convert-tmp"  # model_dir's hidden sibling .<base>.convert-tmp~host~pid~random
_COMMITTED = ".commit"


def recover(model_dir):
    """Finishes or removes what conversions killed part-way left beside ``model_dir``.

    Only those of processes that are gone (dead on this host) are touched: a
    copy whose commit file exists is moved into ``model_dir`` (the killed
    conversion had finished writing it), any other copy is deleted. Returns
    the paths finished or removed.
    """
    model_dir = model_dir.rstrip("/") or model_dir
    parent, base = os.path.split(model_dir)
    done = []
    for path in sorted(tf.io.gfile.glob(os.path.join(parent, f".{base}{_TMP}[~-]*"))):
        if path.endswith(_COMMITTED) or files.owner_alive(path) is not False:
            continue
        if tf.io.gfile.exists(path + _COMMITTED):
            logging.warning("Finishing the conversion into %s that a killed process left "
                            "part-way (%s).", model_dir, path)
            files.move(path, model_dir)
        else:
            files.remove(path)
        done.append(path)
    for journal in tf.io.gfile.glob(os.path.join(parent, f".{base}{_TMP}~*{_COMMITTED}")):
        if files.owner_alive(journal) is False:
            files.move(journal[:-len(_COMMITTED)], model_dir)  # gone: a finished move
            files.remove(journal)
    return done


def write_run_dir(cfg, model, model_dir):
    """Writes the run directory ``model_dir`` of the converted ``model``.

    ``config.yaml`` (``cfg``), ``checkpoints/ckpt-0`` (the runtime's layout:
    the model, a fresh optimizer of the config at step 0, every weight by
    path; :class:`~simclr_tf.runtime.checkpointer.Checkpointer`) and the
    export (``saved_model/``, ``simclr.keras``). Everything goes into a
    temporary sibling directory that is renamed to ``model_dir`` only when
    complete; on any error it is removed and ``model_dir`` is left as it was.
    A process killed part-way leaves ``model_dir`` as it was or complete,
    after :func:`recover` (run first here and by :func:`convert`).
    Returns the paths written.
    """
    model_dir = model_dir.rstrip("/") or model_dir
    recover(model_dir)
    check_model_dir(model_dir)
    parent, base = os.path.split(model_dir)
    tmp = RunDir(os.path.join(parent, f".{base}{_TMP}{files.temp_token()}"))
    journal = tmp.path + _COMMITTED
    if parent:
        tf.io.gfile.makedirs(parent)
    try:
        tmp.makedirs()
        tmp.write_config(cfg)
        # --mode=eval/export restore model_dir checkpoints strictly (every object
        # of the run's model and optimizer), so save the optimizer the run builds.
        task = tasks.build_task(cfg.train_mode, cfg.loss)
        updates = task.build_optimizers(model, cfg.optim,
                                        build_schedule(cfg, cfg.train_batch_size), 1)
        with layout._quiet_tf_logs():
            Checkpointer(model, updates[0][0], tmp, keep_max=1,
                         own_optimizers=task.checkpointed_optimizers(updates)).save(0)
        writer.export_model(model, tmp.path, cfg.image_size)
        check_model_dir(model_dir)  # nobody wrote there meanwhile
        if tf.io.gfile.exists(model_dir):
            tf.io.gfile.rmtree(model_dir)  # empty (checked above)
        # The commit: from here on, recover() finishes the move (on gs:// a
        # directory moves file by file) instead of deleting the copy.
        files.atomic_write(journal, model_dir)
        files.move(tmp.path, model_dir)
        files.remove(journal)
    finally:
        if not tf.io.gfile.exists(journal):
            files.remove(tmp.path)
    run_dir = RunDir(model_dir)
    return {"config": run_dir.join("config.yaml"),
            "checkpoint": tf.train.latest_checkpoint(run_dir.checkpoints),
            "saved_model": run_dir.saved_model, "keras": run_dir.keras_file}


# ------------------------------------------------------------------- driver
def _selectors(arch, parsed, model):
    """The projection layers the official supervised head may read (its input width tells)."""
    if not arch.num_classes or arch.proj_head_mode == "none":
        return [0]
    dim = parsed.shapes[parsed.sup["kernel"]][0]
    h_dim = model.encoder.feature_dim
    max_sel = 1 if arch.proj_head_mode == "linear" else arch.num_proj_layers
    widths = [h_dim] + [h_dim] * (max_sel - 1) + [arch.proj_out_dim]
    return [i for i in range(max_sel + 1) if widths[i] == dim] or [0]


def _build_and_compare(arch, parsed, variables, loaded, model_dir, image_size):
    """Builds ``arch``, copies the official variables into it and runs the parity batch.

    Returns ``(cfg, model, differences)``.
    """
    cfg = build_config(arch, model_dir, image_size)
    model = build_model(cfg, arch.num_classes)
    model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]), training=False)
    # The official layout decides where the shortcuts are; ours must agree.
    mapping.copy_variables(variables, parsed, model)
    diffs, selector = mapping.parity(loaded, model, cfg.image_size,
                                     selectors=_selectors(arch, parsed, model))
    if selector != cfg.ft_proj_selector:
        cfg = dataclasses.replace(cfg, ft_proj_selector=selector).validate()
    return cfg, model, diffs


def _failures(diffs):
    """The keys above the tolerance (``final_avg_pool`` missing counts as one)."""
    bad = {k: d[1] for k, d in diffs.items() if not d[1] <= RELATIVE_TOLERANCE}
    if "final_avg_pool" not in diffs:
        bad["final_avg_pool"] = float("inf")
    return bad


def _worst(diffs):
    return max([d[1] for d in diffs.values()] or [float("inf")])


def convert(official_saved_model, model_dir, image_size=None, log=print, sk_ratio=None):
    """Converts ``official_saved_model`` into the run directory ``model_dir``.

    Where the variables cannot tell the layout (a ResNet-18/34 with the CIFAR
    stem: ``sk_ratio`` 0 or > 0 differ only in the projection shortcuts), each
    candidate is built and the one that reproduces the official outputs on
    the parity batch is kept, unless ``sk_ratio`` (``--sk_ratio``) names it;
    the report says which.

    Returns a dict with the inferred ``architecture``, the ``config``, the
    ``differences`` ({output: (max abs, max rel)}), the ``candidates``
    ({sk_ratio: differences} of every layout tried) and the ``paths`` written.
    Raises :class:`ConversionError` (and writes nothing) on any failure.
    """
    recover(model_dir)  # what a killed conversion into model_dir left
    check_model_dir(model_dir)
    loaded, variables = layout.load_official(official_saved_model)
    arch, parsed = layout.infer_architecture(variables)
    log(f"official model: {arch.describe()} ({len(variables)} variables)")
    candidates = layout.sk_ratio_candidates(arch, sk_ratio)
    tried = [(c, *_build_and_compare(c, parsed, variables, loaded, model_dir, image_size))
             for c in candidates]
    if arch.sk_ratio_source == "undecided":
        log(f"  the variables cannot tell sk_ratio 0 from > 0: with selective kernels the "
            f"official ResNet-{arch.resnet_depth} basic block changes only its projection "
            "shortcuts (ResNet-D: 2x2 average pooling, then the 1x1 convolution at stride "
            "1), which hold the same variables, and the CIFAR stem has no deep-stem "
            "convolutions; "
            + ("--sk_ratio chose the layout:" if candidates[0].sk_ratio_source == "flag"
               else "each layout was built and run on the parity batch:"))
        for cand, _, _, diffs in tried:
            log(f"    sk_ratio {cand.sk_ratio:g}: max rel diff {_worst(diffs):.3e} "
                f"({'reproduces' if not _failures(diffs) else 'does not reproduce'} "
                "the official outputs)")
    passing = [t for t in tried if not _failures(t[3])]
    arch, cfg, model, diffs = min(passing or tried, key=lambda t: _worst(t[3]))
    if arch.sk_ratio_source != "variables":
        log(f"  -> sk_ratio {arch.sk_ratio:g} ({arch.describe()})")
    log(f"parity on a random batch of 2 x {cfg.image_size} x {cfg.image_size} x 3 "
        "(official loaded(x, trainable=False) vs simclr_tf training=False; relative = "
        "max abs diff / max abs official value):")
    for key, (absolute, relative) in diffs.items():
        log(f"  {key:17s} max abs diff {absolute:.3e}   max rel diff {relative:.3e}")
    bad = _failures(diffs)
    if bad:
        detail = ", ".join(f"{k} {r:.3e}" if r != float("inf") else
                           f"the official model returned no {k}" for k, r in bad.items())
        if len(tried) > 1:
            detail += "; no sk_ratio layout reproduces it: " + ", ".join(
                f"sk_ratio {c.sk_ratio:g} max rel diff {_worst(d):.3e}"
                for c, _, _, d in tried)
        raise ConversionError(
            f"Parity check failed: the converted model differs from the official one "
            f"by more than relative {RELATIVE_TOLERANCE:g} ({detail}). Nothing was "
            f"written to {model_dir!r}.")
    paths = write_run_dir(cfg, model, model_dir)
    log(f"wrote {model_dir}: config.yaml, checkpoint {paths['checkpoint']}, "
        "saved_model/ (serve, serve_training, serve_uint8), simclr.keras")
    return {"architecture": arch, "config": cfg, "differences": diffs,
            "candidates": {c.sk_ratio: d for c, _, _, d in tried}, "paths": paths}


FLAGS = flags.FLAGS


def define_flags():
    if "official_saved_model" in FLAGS:
        return
    flags.DEFINE_string("official", None,
                        "A released SimCLR model by name (e.g. r50_1x_sk0, v1_r50_1x), read "
                        "from its official gs://simclr-checkpoints-tf2/ path; 'list' prints "
                        "the names with the paper's linear-eval top-1.")
    flags.DEFINE_string("official_saved_model", None,
                        "An official SimCLR TF2 SavedModel directory (local or gs://).")
    flags.DEFINE_string("model_dir", None, "The new run directory to write.")
    flags.DEFINE_integer("image_size", None, "Image side of the export's serve endpoint "
                         "and the config (default: 224, or 32 for a CIFAR-stem model).")
    flags.DEFINE_float("sk_ratio", None, "Only where the variables cannot tell it (a "
                       "ResNet-18/34 with the CIFAR stem): the official sk_ratio the model "
                       "was trained with. Default: the layout that reproduces the official "
                       "outputs is chosen.")


def _error(message, status):
    print(f"simclr_tf.convert: error: {message}", file=sys.stderr)
    return status


def cli(official=None, official_saved_model=None, model_dir=None, image_size=None,
        sk_ratio=None):
    """The command line's work, given its flag values; returns the exit status."""
    if official == "list":
        print(releases.table())
        return 0
    if bool(official) == bool(official_saved_model):
        return _error("pass either --official=NAME (--official=list shows the names) or "
                      "--official_saved_model=PATH, and --model_dir.", 2)
    if not model_dir:
        example = f" (e.g. --model_dir=runs/{official})" if official else ""
        return _error(f"--model_dir is required{example}.", 2)
    path, prefix = official_saved_model, ""
    try:
        if official:
            release = releases.resolve(official)
            path, prefix = release.path, f"--official={official}: "
            print(f"released model {release.name}: {release.describe()}, the paper's "
                  f"ImageNet linear-eval top-1 {release.linear_eval_top1:.1f}%; "
                  f"reading {path}")
        # A full disk anywhere in the copy (config, checkpoint, export) is one
        # line; the copy is hidden until complete, so model_dir stays as it was.
        with errors.writing(model_dir, "the converted model", "model_dir is left as it was"):
            convert(path, model_dir, image_size, sk_ratio=sk_ratio)
    except (ConversionError, RunError) as e:
        return _error(f"{prefix}{e}", 1)
    return 0


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"simclr_tf.convert: error: unexpected arguments {argv[1:]}")
    sys.exit(cli(FLAGS.official, FLAGS.official_saved_model, FLAGS.model_dir,
                 FLAGS.image_size, FLAGS.sk_ratio))


def run():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
