"""The grids of ``python -m simclr_tf.study``: one :class:`Cell` per run.

Each study reproduces one ablation of SimCLR (Chen et al. 2020,
arXiv:2002.05709) at CPU scale:

* ``augmentations``: the Figure 5 heat map. Seven transformations (crop,
  cutout, color, sobel, noise, blur, rotate); the diagonal applies one alone,
  cell (row t1, column t2) applies t1 then t2, to **one branch only**
  (``view1_augmentations = t1[,t2]``, ``view2_augmentations = none``). Two
  protocols (:data:`PROTOCOLS`) differ in what both branches start from:

  - ``paper`` (section 3): every image is first random-cropped and resized
    once (``shared_augmentations = crop``: one crop per image, shared by both
    branches); t1[,t2] then go to view 1, and view 2 is that shared crop
    (the "identity" branch). The two views therefore always differ by a
    crop-free transformation of the same crop, except in the crop cells.
  - ``identity``: no shared crop; view 1 is t1[,t2] of the whole image and
    view 2 the whole image resized to ``image_size``. The recorded results
    on ``offline_shapes`` (STUDIES.md) used it, so it stays that dataset's
    default (:func:`default_protocol`); every other dataset defaults to
    ``paper``.

  Flip is not part of the grid (the paper's Figure 5 has no flip).
* ``projection_head``: ``proj_head_mode`` none / linear / nonlinear (Figure 8);
  the frozen-feature linear evaluation reads h, the layer before the head.
* ``temperature``: the NT-Xent temperature with and without l2-normalised
  projections (``hidden_norm``; Table 5: tau in {0.05, 0.1, 0.5, 1} with
  normalisation, {1, 10, 100} without).
* ``batch_size``: ``train_batch_size`` x ``train_epochs`` (Figure 9), with
  the learning rate scaled by ``learning_rate_scaling`` as in the base config.

``priority`` orders the cells when ``--max_cells`` or
``--time_budget_minutes`` cut a grid: for the augmentation study the diagonal
first, then crop+colour pairs, then the other pairs with crop or colour, then
the rest. With several seeds (:func:`with_seeds`) each cell runs once per
seed, and the run order is seed-major within a priority: seed 0 of every
cell of the first priority, then seed 1 of those cells, ..., then the next
priority. A cut study thus has the most important cells with every seed
(their spread) before it spends time on less important ones, and within a
priority it covers every cell once before repeating any.
"""

import dataclasses

STUDIES = ("augmentations", "projection_head", "temperature", "batch_size")
#: The augmentation study's protocols (see the module docstring).
PROTOCOLS = ("paper", "identity")
#: What the two branches of an augmentation cell are, per protocol (plot titles).
PROTOCOL_VIEWS = {
    "paper": "a shared random crop; view 1: then 1st, 2nd transformation; view 2: the crop",
    "identity": "view 1: 1st then 2nd transformation; view 2: identity (no crop)",
}
#: The transformations of the paper's Figure 5, in its row/column order.
FIG5_TRANSFORMS = ("crop", "cutout", "color", "sobel", "noise", "blur", "rotate")
HEAD_MODES = ("none", "linear", "nonlinear")
#: (hidden_norm, temperature) cells of the temperature study.
TEMPERATURES = ((True, 0.05), (True, 0.1), (True, 0.5), (True, 1.0),
                (False, 1.0), (False, 10.0), (False, 100.0))
BATCH_SIZES = (32, 64, 128, 256)
EPOCHS = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a study.

    Attributes:
      name: the cell's name (the CSV's ``cell``; one plot position).
      params: the study's coordinates of the cell (CSV columns, plot axes).
      overrides: config keys set for this cell on top of the base config.
      priority: lower runs first when the grid is cut.
      seed_rank: position of the run's seed in the study's seeds (run order).
      suffix: appended to ``name`` for the run's directory (``_s<seed>``).
    """

    name: str
    params: dict
    overrides: dict
    priority: int = 0
    seed_rank: int = 0
    suffix: str = ""

    @property
    def run_name(self):
        """Directory of the run under the study directory."""
        return self.name + self.suffix


def default_protocol(dataset):
    """The augmentation study's default protocol on ``dataset``: ``identity`` for the
    built-in ``offline_shapes`` (its recorded results used it), else ``paper``."""
    return "identity" if dataset == "offline_shapes" else "paper"


def _augmentation_cells(protocol):
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}: allowed protocols are "
                         f"{', '.join(PROTOCOLS)}.")
    # identity sets no shared key, so the cells of studies run before the
    # protocols existed keep their configs (and resume).
    shared = {"shared_augmentations": "crop"} if protocol == "paper" else {}
    cells = []
    for first in FIG5_TRANSFORMS:
        for second in FIG5_TRANSFORMS:
            names = [first] if first == second else [first, second]
            pair = {first, second}
            if first == second:
                priority = 0
            elif pair == {"crop", "color"}:
                priority = 1
            elif pair & {"crop", "color"}:
                priority = 2
            else:
                priority = 3
            cells.append(Cell(
                name="+".join(names),
                params={"protocol": protocol, "first": first, "second": second},
                overrides={**shared, "view1_augmentations": ",".join(names),
                           "view2_augmentations": "none"},
                priority=priority))
    return cells


def _head_cells():
    return [Cell(name=f"head_{mode}", params={"proj_head_mode": mode},
                 overrides={"proj_head_mode": mode, "ft_proj_selector": 0})
            for mode in HEAD_MODES]


def _temperature_cells():
    return [Cell(name=f"tau{tau:g}_{'norm' if norm else 'nonorm'}",
                 params={"hidden_norm": norm, "temperature": tau},
                 overrides={"hidden_norm": norm, "temperature": tau})
            for norm, tau in TEMPERATURES]


def _batch_cells():
    return [Cell(name=f"bs{batch}_ep{epochs}",
                 params={"train_batch_size": batch, "train_epochs": epochs},
                 overrides={"train_batch_size": batch, "train_epochs": epochs,
                            "train_steps": 0},
                 priority=epochs)
            for epochs in EPOCHS for batch in BATCH_SIZES]


_GRIDS = {"projection_head": _head_cells, "temperature": _temperature_cells,
          "batch_size": _batch_cells}


def grid(study, protocol="paper"):
    """The cells of ``study`` in grid (CSV) order; ValueError for an unknown one.

    ``protocol`` (:data:`PROTOCOLS`) is read by the augmentation study only.
    """
    if study == "augmentations":
        return _augmentation_cells(protocol)
    if study not in _GRIDS:
        raise ValueError(f"Unknown study {study!r}: allowed studies are "
                         f"{', '.join(STUDIES)}.")
    return _GRIDS[study]()


def with_seeds(cells, seeds):
    """Each cell once per seed (``seed`` set in its overrides), a cell's seeds together.

    One seed keeps the cells' directory names, so study directories of one
    seed resume; several name each run ``<cell>_s<seed>``.
    """
    suffix = (lambda seed: f"_s{seed}") if len(seeds) > 1 else (lambda seed: "")
    return [dataclasses.replace(cell, overrides={**cell.overrides, "seed": seed},
                                seed_rank=rank, suffix=suffix(seed))
            for cell in cells for rank, seed in enumerate(seeds)]


def by_priority(cells):
    """``cells`` in run order: by priority, then seed rank, grid order within."""
    return sorted(cells, key=lambda c: (c.priority, c.seed_rank))
