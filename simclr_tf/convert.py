"""Converts an official SimCLR TF2 SavedModel into a simclr_tf run directory.

Usage::

    python -m simclr_tf.convert --official_saved_model=PATH --model_dir=DIR [--image_size=N]

``PATH`` is a SavedModel written by the official google-research/simclr
``tf2/run.py`` (``build_saved_model`` + ``tf.saved_model.save``), e.g. a
released model such as
``gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk0/saved_model/``
(any ``tf.io.gfile`` path). Such exports have no serving signature, so Keras 3
cannot load them; the converter rebuilds the model in simclr_tf:

1. It reads the variables of ``loaded.model.resnet_model``,
   ``loaded.model._projection_head`` and ``loaded.model.supervised_head`` and
   infers the architecture from their names and shapes: depth, width
   multiplier, selective kernels, CIFAR or ImageNet stem, projection-head
   mode and layers, supervised-head classes (see :func:`infer_architecture`).
2. It builds the matching model with
   :func:`simclr_tf.models.simclr_model.build_model` and copies every variable,
   BatchNorm moving statistics included, with an explicit name mapping
   (:func:`map_variables`). An official variable that has no place in the
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
   ``DIR`` untouched. A ``DIR`` that already holds files is refused.

Errors are :class:`ConversionError`; the command line prints them in one line
and exits with status 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import uuid

import numpy as np

__all__ = [
    "Architecture",
    "ConversionError",
    "RELATIVE_TOLERANCE",
    "convert",
    "infer_architecture",
    "load_official",
    "map_variables",
    "parity",
    "write_run_dir",
]

RELATIVE_TOLERANCE = 1e-4
PARITY_KEYS = ("final_avg_pool", "proj_head_output", "logits_sup")
# The official code's only selective-kernel ratio (SimCLRv2); used when the
# squeeze width sits at its floor of 32 channels and so does not reveal it.
_DEFAULT_SK_RATIO = 0.0625
_SK_MIN_DIM = 32


class ConversionError(ValueError):
    """The SavedModel cannot be converted; the message says why and names the variable."""


# ----------------------------------------------------------------- reading
def load_official(path):
    """Loads an official SimCLR TF2 SavedModel; returns (loaded, {name: variable}).

    Names are the variables' ``name`` without the ``:0`` suffix, e.g.
    ``resnet/block_group1/bottleneck_block/conv2d_fixed_padding/conv2d/kernel``.
    Raises :class:`ConversionError` for a missing path, a directory that is not
    a SavedModel, or a SavedModel that is not an official SimCLR export.
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise ConversionError(f"--official_saved_model={path!r} does not exist.")
    if not any(tf.io.gfile.exists(os.path.join(path, f))
               for f in ("saved_model.pb", "saved_model.pbtxt")):
        raise ConversionError(
            f"--official_saved_model={path!r} is not a SavedModel directory (it has no "
            "saved_model.pb). Pass the saved_model/ folder of an official SimCLR TF2 "
            "export, e.g. gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk0/"
            "saved_model/.")
    try:
        with _quiet_tf_logs():
            loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad input here
        raise ConversionError(f"Cannot load the SavedModel {path!r}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
    model = getattr(loaded, "model", None)
    resnet = getattr(model, "resnet_model", None)
    if resnet is None or not callable(loaded) or not hasattr(resnet, "variables"):
        raise ConversionError(
            f"{path!r} is not an official SimCLR TF2 export: it lacks "
            "'model.resnet_model' (with variables) or a callable 'loaded(x, trainable)', "
            "which the object written by google-research/simclr tf2/run.py "
            "build_saved_model has. (simclr_tf's own exports load with "
            "simclr_tf.export.load_encoder.)")
    variables = {}
    parts = [resnet, getattr(model, "_projection_head", None),
             getattr(model, "supervised_head", None)]
    for part in parts:
        for v in getattr(part, "variables", None) or []:
            name = _strip(v.name)
            if name in variables and variables[name] is not v:
                raise ConversionError(f"The export holds two variables named {name!r}.")
            variables[name] = v
    # Anything trainable outside the three parts is a layout we do not know.
    known = {id(v) for v in variables.values()}
    for v in getattr(loaded, "trainable_variables_list", None) or []:
        if id(v) not in known:
            raise ConversionError(
                f"Official variable {_strip(v.name)!r} (shape {v.shape.as_list()}) is "
                "outside the encoder, projection head and supervised head; this layout "
                "is not supported.")
    if not variables:
        raise ConversionError(f"{path!r} is not an official SimCLR TF2 export: its "
                              "'model.resnet_model' holds no variables.")
    return loaded, variables


@contextlib.contextmanager
def _quiet_tf_logs():
    """Hides the loader's warnings about the official export's sync-BN gradients.

    Loading an official export that uses SyncBatchNormalization logs one
    "unsaved custom gradients" warning per function; they concern gradients
    of the official graph, which the converter never takes.
    """
    from absl import logging as absl_logging

    logger = logging.getLogger("tensorflow")
    level, verbosity = logger.level, absl_logging.get_verbosity()
    logger.setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        absl_logging.set_verbosity(verbosity)


def _strip(name):
    return name[:-2] if name.endswith(":0") else name


_SUFFIX = re.compile(r"^(.*?)(?:_(\d+))?$")


def _split_suffix(component):
    """'conv2d_fixed_padding_12' -> ('conv2d_fixed_padding', 12); no suffix -> 0.

    tf-keras numbers layers of one class in creation order (first unnumbered,
    then _1, _2, ...), so sorting by this number gives the creation order.
    """
    base, number = _SUFFIX.match(component).groups()
    return base, int(number) if number else 0


class _Scope:
    """The layers of one official scope (stem, block or SK unit), in creation order.

    ``convs``: Conv2dFixedPadding layers; ``plain_convs``: bare Conv2D layers;
    ``bns``: BatchNormRelu layers; ``sks``: SK_Conv2D scopes. Each entry maps a
    leaf (kernel, gamma, beta, moving_mean, moving_variance) to the official
    variable name.
    """

    _KINDS = {"conv2d_fixed_padding": "convs", "conv2d": "plain_convs",
              "batch_norm_relu": "bns", "sk__conv2d": "sks"}

    def __init__(self, where):
        self.where = where
        self.convs, self.plain_convs, self.bns, self.sks = {}, {}, {}, {}

    def add(self, name, rest):
        base, number = _split_suffix(rest[0])
        kind = self._KINDS.get(base)
        if kind is None:
            raise ConversionError(f"Cannot place official variable {name!r}: unknown "
                                  f"layer {rest[0]!r} in {self.where}.")
        if kind == "sks":
            sk = self.sks.setdefault(number, _Scope(f"{self.where}/{rest[0]}"))
            sk.add(name, rest[1:])
            return
        # convs: <layer>/conv2d<n>/kernel; plain: conv2d<n>/kernel; bns: <layer>/<bn>/<leaf>
        depth = {"convs": 3, "plain_convs": 2, "bns": 3}[kind]
        leaf = rest[-1]
        leaves = ("kernel",) if kind != "bns" else (
            "gamma", "beta", "moving_mean", "moving_variance")
        if len(rest) != depth or leaf not in leaves:
            raise ConversionError(f"Cannot place official variable {name!r}: unexpected "
                                  f"nesting under {rest[0]!r} in {self.where}.")
        getattr(self, kind).setdefault(number, {})[leaf] = name

    @staticmethod
    def ordered(layers):
        return [layers[k] for k in sorted(layers)]


@dataclasses.dataclass
class Architecture:
    """What an official export holds, as simclr_tf config values."""

    resnet_depth: int
    width_multiplier: float
    cifar_stem: bool
    sk_ratio: float
    proj_head_mode: str
    num_proj_layers: int
    proj_out_dim: int
    num_classes: int
    global_bn: bool

    def describe(self):
        width = (int(self.width_multiplier) if float(self.width_multiplier).is_integer()
                 else self.width_multiplier)
        head = ("no projection head" if self.proj_head_mode == "none" else
                f"{self.proj_head_mode} projection head, {self.num_proj_layers} layer(s) "
                f"-> {self.proj_out_dim}")
        sup = (f"supervised head {self.num_classes} classes" if self.num_classes
               else "no supervised head")
        return (f"ResNet-{self.resnet_depth} {width}x, sk_ratio {self.sk_ratio}, "
                f"{'CIFAR' if self.cifar_stem else 'ImageNet'} stem, {head}, {sup}")


class _Parsed:
    """Official variables sorted into stem, blocks and heads."""

    def __init__(self, variables):
        self.shapes = {name: tuple(int(d) for d in v.shape) for name, v in variables.items()}
        self.stem = _Scope("the stem")
        self.groups = {}  # group number -> {block number: (block type, _Scope)}
        self.proj = {}  # layer number -> {"mode", "dense": {leaf: name}, "bn": {...}}
        self.sup = {}  # leaf -> name
        self.sync_bn = False
        for name in sorted(variables):
            self._add(name)

    def _add(self, name):
        parts = name.split("/")
        if "sync_batch_normalization" in name:
            self.sync_bn = True
        top = parts[0]
        if top == "resnet" and len(parts) > 2:
            if parts[1].startswith("block_group") and parts[1][11:].isdigit():
                group = int(parts[1][11:])
                if len(parts) < 5:
                    raise ConversionError(f"Cannot place official variable {name!r}: "
                                          "expected block_groupN/<block>/<layer>/....")
                block_type, number = _split_suffix(parts[2])
                if block_type not in ("residual_block", "bottleneck_block"):
                    raise ConversionError(f"Cannot place official variable {name!r}: "
                                          f"unknown block {parts[2]!r}.")
                blocks = self.groups.setdefault(group, {})
                if number not in blocks:
                    blocks[number] = (block_type, _Scope(f"{parts[1]}/{parts[2]}"))
                blocks[number][1].add(name, parts[3:])
                return
            self.stem.add(name, parts[1:])
            return
        if top == "projection_head" and len(parts) >= 3:
            layer, number = _split_suffix(parts[1])
            if layer in ("nl", "l") and len(parts) in (4, 5):
                mode = "nonlinear" if layer == "nl" else "linear"
                entry = self.proj.setdefault(number, {"mode": mode, "dense": {}, "bn": {}})
                kind = _split_suffix(parts[2])[0]
                if kind == "dense" and len(parts) == 4 and parts[3] == "kernel":
                    entry["dense"]["kernel"] = name
                    return
                if kind == "batch_norm_relu" and len(parts) == 5:
                    entry["bn"][parts[4]] = name
                    return
        if (top == "head_supervised" and len(parts) == 4 and parts[1] == "linear_layer"
                and _split_suffix(parts[2])[0] == "dense" and parts[3] in ("kernel", "bias")):
            self.sup[parts[3]] = name
            return
        raise ConversionError(f"Cannot place official variable {name!r} "
                              f"(shape {list(self.shapes[name])}): unknown layout.")


def _parse(variables):
    return _Parsed(variables)


def infer_architecture(variables):
    """Infers the architecture from ``{official name: variable}``.

    Returns ``(Architecture, parsed)``; ``parsed`` sorts the variables into
    stem, blocks and heads for :func:`map_variables`. The depth comes from the
    block type and the number of blocks per group, the width from the stem's
    output channels / 64, selective kernels from ``sk__conv2d`` units or the
    three-convolution stem (the ratio from the squeeze width when it exceeds
    its floor of 32, else the official 0.0625), the stem type from the stem
    convolutions, the projection head from its ``nl_<j>``/``l_0`` layers and
    the supervised head's classes from its kernel.
    """
    from simclr_tf.models import resnet as resnet_lib

    p = _parse(variables)
    stem_convs = _Scope.ordered(p.stem.convs)
    if not stem_convs or "kernel" not in stem_convs[-1]:
        raise ConversionError("Not an official SimCLR ResNet: no stem convolution "
                              "'resnet/conv2d_fixed_padding/conv2d/kernel'.")
    first = p.shapes[stem_convs[0]["kernel"]]
    last = p.shapes[stem_convs[-1]["kernel"]]
    if len(stem_convs) == 3:
        cifar_stem, deep = False, True
    elif len(stem_convs) == 1 and first[0] == 3:
        cifar_stem, deep = True, False
    elif len(stem_convs) == 1 and first[0] == 7:
        cifar_stem, deep = False, False
    else:
        raise ConversionError(f"Unknown stem: {len(stem_convs)} convolution(s), first "
                              f"kernel {list(first)}.")
    width = last[-1] / 64.0
    if sorted(p.groups) != [1, 2, 3, 4]:
        raise ConversionError(f"Expected block groups 1-4 under 'resnet/', found "
                              f"{sorted(p.groups)}.")
    types = {t for g in p.groups.values() for t, _ in g.values()}
    if len(types) != 1:
        raise ConversionError(f"Mixed block types {sorted(types)}.")
    block_type = "basic" if types == {"residual_block"} else "bottleneck"
    counts = tuple(len(p.groups[g]) for g in (1, 2, 3, 4))
    depths = [d for d, (t, c) in resnet_lib.BLOCK_CONFIGS.items()
              if t == block_type and tuple(c) == counts]
    if not depths:
        raise ConversionError(f"No ResNet depth has {block_type} blocks {list(counts)} "
                              f"per group (known: {sorted(resnet_lib.BLOCK_CONFIGS)}).")
    sks = [sk for g in p.groups.values() for _, scope in g.values()
           for sk in scope.sks.values()]
    sk_ratio = 0.0
    if sks or deep:
        sk_ratio = _DEFAULT_SK_RATIO
        for sk in sks:
            squeeze = _Scope.ordered(sk.plain_convs)
            if squeeze and "kernel" in squeeze[0]:
                filters, mid = p.shapes[squeeze[0]["kernel"]][-2:]
                if mid > _SK_MIN_DIM:
                    sk_ratio = mid / filters
                    break
    if p.proj:
        modes = {e["mode"] for e in p.proj.values()}
        if len(modes) != 1 or sorted(p.proj) != list(range(len(p.proj))):
            raise ConversionError(f"Unknown projection head layers {sorted(p.proj)}.")
        mode = modes.pop()
        last_dense = p.proj[len(p.proj) - 1]["dense"].get("kernel")
        if last_dense is None:
            raise ConversionError("The projection head's last layer has no dense kernel.")
        num_layers, out_dim = len(p.proj), p.shapes[last_dense][-1]
    else:
        mode, num_layers, out_dim = "none", 1, 128
    num_classes = p.shapes[p.sup["kernel"]][-1] if "kernel" in p.sup else 0
    if width.is_integer():
        width = int(width)
    return Architecture(depths[0], width, cifar_stem, sk_ratio, mode, num_layers,
                        out_dim, int(num_classes), p.sync_bn), p


# ----------------------------------------------------------------- mapping
def _map_scope_layers(layers, our_names, where, kind):
    if len(layers) > len(our_names):
        extra = [n for leaves in layers[len(our_names):] for n in sorted(leaves.values())]
        raise ConversionError(
            f"Cannot place official variable {extra[0]!r}: {where} has {len(layers)} "
            f"{kind} layer(s), the simclr_tf model built for this architecture has "
            f"{len(our_names)} ({', '.join(n.rsplit('/', 1)[-1] for n in our_names)})"
            + (f"; also unplaced: {', '.join(extra[1:])}" if len(extra) > 1 else "")
            + ".")
    if len(layers) < len(our_names):
        raise ConversionError(
            f"No official variable fills the simclr_tf weights of {our_names[len(layers)]!r}: "
            f"{where} has {len(layers)} {kind} layer(s), the simclr_tf model built for "
            f"this architecture has {len(our_names)}; the export lacks variables.")
    out = []
    for leaves, ours in zip(layers, our_names):
        for leaf, name in sorted(leaves.items()):
            out.append((name, f"{ours}/{leaf}"))
    return out


def map_variables(parsed, model):
    """``{official name: our weight path without the model prefix}``.

    The rules (official -> ours; ``<n>`` is a creation-order suffix and is
    sorted numerically within its scope):

    - ``resnet/conv2d_fixed_padding<n>/conv2d<n>/kernel`` (the stem's k-th)
      -> ``encoder/stem/conv2d_<k>/kernel``; ``resnet/batch_norm_relu<n>/
      [sync_]batch_normalization<n>/<leaf>`` -> ``encoder/stem/batch_normalization_<k>/<leaf>``.
    - ``resnet/block_group<g>/{residual,bottleneck}_block<n>/...`` (the j-th block
      of the group) -> ``encoder/block_group<g>/block_<j>/...``. Inside a block
      with a projection shortcut (the first of every group), the first
      convolution and BN created are the shortcut's -> ``shortcut_conv2d``,
      ``shortcut_batch_normalization``; the others, in order -> ``conv2d_<i>``,
      ``batch_normalization_<i>`` with i = 0, 1 (basic), 0, 1, 2 (bottleneck)
      or 0, 2 (bottleneck with selective kernels, where 1 is the SK unit).
    - ``.../sk__conv2d<n>/conv2d_fixed_padding<n>/conv2d<n>/kernel`` ->
      ``.../selective_kernel_conv2d/conv2d/kernel``; its BNs in order ->
      ``batch_normalization``, ``squeeze_batch_normalization``; its plain
      ``conv2d<n>/kernel`` in order -> ``squeeze_conv2d``, ``attention_conv2d``.
    - ``projection_head/{nl,l}_<j>/dense<n>/kernel`` -> ``projection_head/dense_<j>/kernel``;
      ``projection_head/{nl,l}_<j>/batch_norm_relu<n>/[sync_]batch_normalization<n>/<leaf>``
      -> ``projection_head/batch_normalization_<j>/<leaf>``.
    - ``head_supervised/linear_layer/dense<n>/{kernel,bias}`` ->
      ``head_supervised/dense/{kernel,bias}``.
    """
    out = []
    encoder = model.encoder
    stem = _Scope.ordered(parsed.stem.convs)
    out += _map_scope_layers(stem, [f"encoder/stem/conv2d_{i}" for i in range(len(
        encoder.stem.convs))], "the stem", "convolution")
    out += _map_scope_layers(_Scope.ordered(parsed.stem.bns), [
        f"encoder/stem/batch_normalization_{i}" for i in range(len(encoder.stem.bns))],
        "the stem", "batch-norm")
    if parsed.stem.plain_convs or parsed.stem.sks:
        raise ConversionError("Unknown layers in the official stem.")
    for g, group in enumerate(encoder.block_groups, start=1):
        official_blocks = [parsed.groups[g][k] for k in sorted(parsed.groups[g])]
        for j, (block, (_, scope)) in enumerate(zip(group.blocks, official_blocks)):
            prefix = f"encoder/block_group{g}/block_{j}"
            where = f"block_group{g}/{scope.where.split('/')[-1]}"
            sk = block.sk_conv if hasattr(block, "sk_conv") else None
            if sk is not None:
                idx = [0, 2]
            else:
                idx = [0, 1] if block.expansion == 1 else [0, 1, 2]
            shortcut = ["shortcut_conv2d"] if block.use_projection else []
            shortcut_bn = ["shortcut_batch_normalization"] if block.use_projection else []
            out += _map_scope_layers(
                _Scope.ordered(scope.convs),
                [f"{prefix}/{n}" for n in shortcut + [f"conv2d_{i}" for i in idx]],
                where, "convolution")
            out += _map_scope_layers(
                _Scope.ordered(scope.bns),
                [f"{prefix}/{n}" for n in shortcut_bn + [f"batch_normalization_{i}"
                                                         for i in idx]],
                where, "batch-norm")
            if scope.plain_convs:
                raise ConversionError(f"{where}: unexpected plain convolution(s).")
            sks = _Scope.ordered(scope.sks)
            if len(sks) != (1 if sk is not None else 0):
                raise ConversionError(f"{where}: {len(sks)} selective-kernel unit(s) where "
                                      f"the layout has {1 if sk is not None else 0}.")
            for unit in sks:
                sk_prefix = f"{prefix}/selective_kernel_conv2d"
                out += _map_scope_layers(_Scope.ordered(unit.convs), [f"{sk_prefix}/conv2d"],
                                         unit.where, "convolution")
                out += _map_scope_layers(_Scope.ordered(unit.plain_convs), [
                    f"{sk_prefix}/squeeze_conv2d", f"{sk_prefix}/attention_conv2d"],
                    unit.where, "1x1 convolution")
                out += _map_scope_layers(_Scope.ordered(unit.bns), [
                    f"{sk_prefix}/batch_normalization",
                    f"{sk_prefix}/squeeze_batch_normalization"], unit.where, "batch-norm")
                if unit.sks:
                    raise ConversionError(f"{unit.where}: nested selective kernels.")
    for j in sorted(parsed.proj):
        entry = parsed.proj[j]
        for leaf, name in entry["dense"].items():
            out.append((name, f"projection_head/dense_{j}/{leaf}"))
        for leaf, name in entry["bn"].items():
            out.append((name, f"projection_head/batch_normalization_{j}/{leaf}"))
    for leaf, name in parsed.sup.items():
        out.append((name, f"head_supervised/dense/{leaf}"))
    mapping = {}
    for name, ours in out:
        if name in mapping:
            raise ConversionError(f"Official variable {name!r} was placed twice.")
        mapping[name] = ours
    return mapping


def _relative_path(variable):
    return variable.path.split("/", 1)[1]


def copy_variables(variables, parsed, model):
    """Assigns every official variable to its simclr_tf weight (shapes checked).

    Raises :class:`ConversionError` naming an official variable that has no
    place, a weight of ours that nothing fills, or a shape mismatch.
    """
    ours = {_relative_path(v): v for v in model.weights}
    if len(ours) != len(model.weights):
        raise ConversionError("The simclr_tf model has weights with equal paths.")
    mapping = map_variables(parsed, model)
    unplaced = sorted(n for n, path in mapping.items() if path not in ours)
    if unplaced:
        n = unplaced[0]
        raise ConversionError(
            f"Cannot place official variable {n!r} (shape {list(parsed.shapes[n])}): "
            f"the simclr_tf model has no weight {mapping[n]!r}"
            + (f" ({len(unplaced) - 1} more)" if len(unplaced) > 1 else "") + ".")
    by_ours = {path: n for n, path in mapping.items()}
    leftover = sorted(path for path in ours if path not in by_ours)
    if leftover:
        raise ConversionError(
            f"No official variable fills the simclr_tf weight {leftover[0]!r} "
            f"(shape {list(ours[leftover[0]].shape)}): the export lacks a variable "
            "of this layout" + (f" ({len(leftover) - 1} more)" if len(leftover) > 1
                                else "") + ".")
    for name, path in sorted(mapping.items()):
        target = ours[path]
        shape = tuple(int(d) for d in target.shape)
        if shape != parsed.shapes[name]:
            raise ConversionError(
                f"Official variable {name!r} has shape {list(parsed.shapes[name])}, but "
                f"its simclr_tf weight {path!r} has shape {list(shape)}.")
        target.assign(variables[name].numpy())
    return mapping


# ------------------------------------------------------------------ parity
def _difference(official, ours):
    official = np.asarray(official, np.float64)
    ours = np.asarray(ours, np.float64)
    if official.shape != ours.shape:
        return float("inf"), float("inf")
    absolute = float(np.max(np.abs(official - ours))) if official.size else 0.0
    scale = float(np.max(np.abs(official))) if official.size else 0.0
    return absolute, absolute / max(scale, 1e-12)


def parity(loaded, model, image_size, batch_size=2, seed=0, selectors=(0,)):
    """Runs both models on one random batch; returns ({key: (abs, rel)}, selector).

    The relative difference of a key is the largest absolute difference over
    the largest absolute official value. ``selectors``: candidate projection
    layers the official supervised head may read (``ft_proj_selector``; the
    shapes cannot tell them apart); the one with the smallest logits
    difference is returned.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (batch_size, image_size, image_size, 3)).astype(np.float32)
    official = loaded(tf.constant(x), trainable=False)
    best = None
    for selector in selectors:
        model.ft_proj_selector = selector
        ours = model(tf.constant(x), training=False)
        diffs = {k: _difference(official[k], ours[k]) for k in PARITY_KEYS
                 if k in official and k in ours}
        worst = diffs.get("logits_sup", (0.0, 0.0))[1]
        if best is None or worst < best[0]:
            best = (worst, diffs, selector)
    model.ft_proj_selector = best[2]
    return best[1], best[2]


# ------------------------------------------------------------------ config
def build_config(arch, model_dir, image_size=None, ft_proj_selector=0):
    """The :class:`simclr_tf.config.Config` of a converted model."""
    from simclr_tf import config as config_lib

    size = image_size or (32 if arch.cifar_stem else 224)
    values = dict(
        resnet_depth=arch.resnet_depth, width_multiplier=float(arch.width_multiplier),
        sk_ratio=float(arch.sk_ratio), image_size=int(size),
        proj_head_mode=arch.proj_head_mode, num_proj_layers=arch.num_proj_layers,
        proj_out_dim=arch.proj_out_dim, global_bn=arch.global_bn,
        ft_proj_selector=int(ft_proj_selector), model_dir=model_dir, mode="export",
        # The official supervised head is a plain Dense on hiddens[ft_proj_selector];
        # build_model gives that head only outside pretrain mode (in pretrain it
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
    import tensorflow as tf

    return tf.io.gfile.exists(path) and (not tf.io.gfile.isdir(path)
                                         or bool(tf.io.gfile.listdir(path)))


def check_model_dir(model_dir):
    """Refuses a model_dir that already holds a run (or any file)."""
    import tensorflow as tf

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


def write_run_dir(cfg, model, model_dir):
    """Writes the run directory ``model_dir`` of the converted ``model``.

    ``config.yaml`` (``cfg``), ``checkpoints/ckpt-0`` (the trainer's
    checkpoint layout: ``model``, a fresh ``optimizer`` at step 0 and every
    weight by path) and
    the export (``saved_model/``, ``simclr.keras``). Everything goes into a
    temporary sibling directory that is renamed to ``model_dir`` only when
    complete; on any error it is removed and ``model_dir`` is left as it was.
    Returns the paths written.
    """
    import tensorflow as tf

    from simclr_tf import config as config_lib
    from simclr_tf import export as export_lib
    from simclr_tf import optimizers as optimizers_lib
    from simclr_tf import trainer as trainer_lib

    check_model_dir(model_dir)
    model_dir = model_dir.rstrip("/") or model_dir
    parent, base = os.path.split(model_dir)
    tmp = os.path.join(parent, f".{base}.convert-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if parent:
        tf.io.gfile.makedirs(parent)
    try:
        tf.io.gfile.makedirs(tmp)
        config_lib.save_yaml(cfg, os.path.join(tmp, "config.yaml"))
        # The trainer restores model_dir checkpoints strictly (every object of
        # its model and optimizer must be in the checkpoint), so save a fresh
        # optimizer of the config's kind, built as the trainer builds it.
        # A schedule, as the trainer's: a float rate would add a variable.
        schedule = optimizers_lib.WarmUpAndCosine(
            cfg.learning_rate, cfg.train_batch_size, cfg.train_batch_size,
            max(1, cfg.train_epochs), cfg.warmup_epochs, cfg.learning_rate_scaling,
            train_steps=cfg.train_steps or None)
        optimizer = optimizers_lib.build_optimizer(
            cfg.optimizer, schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        model.compile(optimizer=optimizer)
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                         weights=trainer_lib.weights_by_path(model))
        manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(tmp, trainer_lib.CHECKPOINT_SUBDIR), max_to_keep=1)
        with _quiet_tf_logs():
            manager.save(checkpoint_number=0)
        export_lib.export_model(model, tmp, cfg.image_size)
        check_model_dir(model_dir)  # nobody wrote there meanwhile
        if tf.io.gfile.exists(model_dir):
            tf.io.gfile.rmtree(model_dir)  # empty (checked above)
        tf.io.gfile.rename(tmp, model_dir)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    checkpoint = tf.train.latest_checkpoint(
        os.path.join(model_dir, trainer_lib.CHECKPOINT_SUBDIR))
    return {"config": os.path.join(model_dir, "config.yaml"), "checkpoint": checkpoint,
            "saved_model": os.path.join(model_dir, "saved_model"),
            "keras": os.path.join(model_dir, "simclr.keras")}


# ------------------------------------------------------------------- driver
def convert(official_saved_model, model_dir, image_size=None, log=print):
    """Converts ``official_saved_model`` into the run directory ``model_dir``.

    Returns a dict with the inferred ``architecture``, the ``config``, the
    ``differences`` ({output: (max abs, max rel)}) and the ``paths`` written.
    Raises :class:`ConversionError` (and writes nothing) on any failure.
    """
    import tensorflow as tf

    from simclr_tf.models import simclr_model

    check_model_dir(model_dir)
    loaded, variables = load_official(official_saved_model)
    arch, parsed = infer_architecture(variables)
    log(f"official model: {arch.describe()} ({len(variables)} variables)")
    cfg = build_config(arch, model_dir, image_size)
    model = simclr_model.build_model(cfg, arch.num_classes)
    model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]), training=False)
    # The official layout decides where the shortcuts are; ours must agree.
    copy_variables(variables, parsed, model)
    selectors = [0]
    if arch.num_classes and arch.proj_head_mode != "none":
        dim = parsed.shapes[parsed.sup["kernel"]][0]
        h_dim = model.encoder.feature_dim
        max_sel = 1 if arch.proj_head_mode == "linear" else arch.num_proj_layers
        widths = [h_dim] + [h_dim] * (max_sel - 1) + [arch.proj_out_dim]
        selectors = [i for i in range(max_sel + 1) if widths[i] == dim] or [0]
    diffs, selector = parity(loaded, model, cfg.image_size, selectors=selectors)
    if selector != cfg.ft_proj_selector:
        cfg = dataclasses.replace(cfg, ft_proj_selector=selector).validate()
    log(f"parity on a random batch of 2 x {cfg.image_size} x {cfg.image_size} x 3 "
        "(official loaded(x, trainable=False) vs simclr_tf training=False; relative = "
        "max abs diff / max abs official value):")
    for key, (absolute, relative) in diffs.items():
        log(f"  {key:17s} max abs diff {absolute:.3e}   max rel diff {relative:.3e}")
    bad = {k: d for k, d in diffs.items() if not d[1] <= RELATIVE_TOLERANCE}
    if bad or "final_avg_pool" not in diffs:
        detail = ", ".join(f"{k} {d[1]:.3e}" for k, d in bad.items()) or (
            "the official model returned no final_avg_pool")
        raise ConversionError(
            f"Parity check failed: the converted model differs from the official one "
            f"by more than relative {RELATIVE_TOLERANCE:g} ({detail}). Nothing was "
            f"written to {model_dir!r}.")
    paths = write_run_dir(cfg, model, model_dir)
    log(f"wrote {model_dir}: config.yaml, checkpoint {paths['checkpoint']}, "
        "saved_model/ (serve, serve_training, serve_uint8), simclr.keras")
    return {"architecture": arch, "config": cfg, "differences": diffs, "paths": paths}


def main(argv):
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"simclr_tf.convert: error: unexpected arguments {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS.official_saved_model or not FLAGS.model_dir:
        print("simclr_tf.convert: error: --official_saved_model and --model_dir are "
              "required.", file=sys.stderr)
        sys.exit(2)
    try:
        convert(FLAGS.official_saved_model, FLAGS.model_dir, FLAGS.image_size)
    except ConversionError as e:
        print(f"simclr_tf.convert: error: {e}", file=sys.stderr)
        sys.exit(1)


def _define_flags():
    from absl import flags

    flags.DEFINE_string("official_saved_model", None,
                        "An official SimCLR TF2 SavedModel directory (local or gs://).")
    flags.DEFINE_string("model_dir", None, "The new run directory to write.")
    flags.DEFINE_integer("image_size", None, "Image side of the export's serve endpoint "
                         "and the config (default: 224, or 32 for a CIFAR-stem model).")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
