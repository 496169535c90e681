"""Official SimCLR TF2 variables -> simclr_tf weights, and the parity check of the result."""

import numpy as np
import tensorflow as tf

from simclr_tf.errors import ConversionError
from simclr_tf.official.layout import _Scope

PARITY_KEYS = ("final_avg_pool", "proj_head_output", "logits_sup")


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
