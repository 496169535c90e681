"""The layout of an official SimCLR TF2 SavedModel: its variables and the architecture they imply.

The official google-research/simclr ``tf2/run.py`` saves its tf-keras model
with ``tf.saved_model.save``: no serving signature, variables named by
tf-keras scopes (``resnet/block_group1/bottleneck_block/conv2d_fixed_padding/
conv2d/kernel``). :func:`load_official` reads such an export and
:func:`infer_architecture` turns its variable names and shapes into simclr_tf
config values (see :mod:`simclr_tf.convert`).
"""

import contextlib
import dataclasses
import logging
import os
import re

import tensorflow as tf
from absl import logging as absl_logging

from simclr_tf.errors import ConversionError
from simclr_tf.official import releases
from simclr_tf.models import resnet as resnet_lib

# The official code's only selective-kernel ratio (SimCLRv2); used when the
# squeeze width sits at its floor of 32 channels and so does not reveal it.
_DEFAULT_SK_RATIO = 0.0625
_SK_MIN_DIM = 32


def load_official(path):
    """Loads an official SimCLR TF2 SavedModel; returns (loaded, {name: variable}).

    Names are the variables' ``name`` without the ``:0`` suffix, e.g.
    ``resnet/block_group1/bottleneck_block/conv2d_fixed_padding/conv2d/kernel``.
    Raises :class:`ConversionError` for a missing path, a remote path that
    cannot be reached (with how to download it by hand), a directory that is
    not a SavedModel, or a SavedModel that is not an official SimCLR export.
    """
    if not _exists(path):
        raise ConversionError(f"--official_saved_model={path!r} does not exist.")
    if not any(_exists(os.path.join(path, f))
               for f in ("saved_model.pb", "saved_model.pbtxt")):
        raise ConversionError(
            f"--official_saved_model={path!r} is not a SavedModel directory (it has no "
            "saved_model.pb). Pass the saved_model/ folder of an official SimCLR TF2 "
            "export, e.g. gs://simclr-checkpoints-tf2/simclrv2/pretrained/r50_1x_sk0/"
            "saved_model/.")
    try:
        with _quiet_tf_logs():
            loaded = _load_saved_model(path)
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


def _exists(path):
    """``tf.io.gfile.exists``, turning an unreachable remote path into a one-line error.

    Offline, ``gs://`` paths raise (``FailedPreconditionError``: could not
    resolve the host) rather than return False; the error says so and how
    to fetch the model by hand.
    """
    try:
        return tf.io.gfile.exists(path)
    except tf.errors.OpError as e:
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ConversionError(
            f"Cannot reach {path!r} ({type(e).__name__}: {reason}). Without network "
            f"access, download it by hand where there is: "
            f"{releases.download_hint(path)}.") from None


def _load_saved_model(path):
    """``tf.saved_model.load`` (one place, so tests can hand in a model already loaded)."""
    return tf.saved_model.load(path)


@contextlib.contextmanager
def _quiet_tf_logs():
    """Hides the loader's warnings about the official export's sync-BN gradients.

    Loading an official export that uses SyncBatchNormalization logs one
    "unsaved custom gradients" warning per function; they concern gradients
    of the official graph, which the converter never takes.
    """
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
    # How sk_ratio was found: "variables" (SK units or the deep stem show it),
    # "undecided" (ResNet-18/34 with the CIFAR stem: only the projection
    # shortcuts differ, and they hold the same variables), then "outputs" or
    # "flag" once the converter has decided (simclr_tf.convert).
    sk_ratio_source: str = "variables"

    def describe(self):
        width = (int(self.width_multiplier) if float(self.width_multiplier).is_integer()
                 else self.width_multiplier)
        head = ("no projection head" if self.proj_head_mode == "none" else
                f"{self.proj_head_mode} projection head, {self.num_proj_layers} layer(s) "
                f"-> {self.proj_out_dim}")
        sup = (f"supervised head {self.num_classes} classes" if self.num_classes
               else "no supervised head")
        sk = {"variables": "", "undecided": " (undecided by the variables)",
              "outputs": " (chosen by the official outputs)",
              "flag": " (from --sk_ratio)"}.get(self.sk_ratio_source, "")
        return (f"ResNet-{self.resnet_depth} {width}x, sk_ratio {self.sk_ratio}{sk}, "
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

    A ResNet-18/34 with the CIFAR stem has neither SK units (the official
    basic block has none) nor the deep stem, so its variables cannot tell
    ``sk_ratio`` 0 from > 0 (ResNet-D projection shortcuts, which add no
    variable): it is returned with ``sk_ratio`` 0 and ``sk_ratio_source``
    ``"undecided"``, for the converter to decide (:func:`sk_ratio_candidates`).
    """
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
    undecided = not sks and not deep and cifar_stem and block_type == "basic"
    return Architecture(depths[0], width, cifar_stem, sk_ratio, mode, num_layers,
                        out_dim, int(num_classes), p.sync_bn,
                        "undecided" if undecided else "variables"), p


def sk_ratio_candidates(arch, sk_ratio=None):
    """The architectures the export may be: one, or both sk_ratio layouts where undecided.

    ``sk_ratio`` (``--sk_ratio``) fixes the choice where the variables cannot;
    where they show the ratio, a different ``sk_ratio`` is a
    :class:`ConversionError`. Any ratio > 0 builds the same ResNet-18/34 (only
    the shortcuts change), so the candidates are 0 and the official 0.0625.
    """
    if arch.sk_ratio_source != "undecided":
        if sk_ratio is not None and float(sk_ratio) != float(arch.sk_ratio):
            raise ConversionError(
                f"--sk_ratio={sk_ratio:g} contradicts the export: its variables show "
                f"sk_ratio {arch.sk_ratio:g} ({arch.describe()}). Leave --sk_ratio out.")
        return [arch]
    if sk_ratio is not None:
        if sk_ratio < 0:
            raise ConversionError(f"--sk_ratio must be >= 0, got {sk_ratio:g}.")
        return [dataclasses.replace(arch, sk_ratio=float(sk_ratio), sk_ratio_source="flag")]
    return [dataclasses.replace(arch, sk_ratio=r, sk_ratio_source="outputs")
            for r in (0.0, _DEFAULT_SK_RATIO)]
