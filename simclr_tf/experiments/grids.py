"""The grids of ``python -m simclr_tf.study``: one :class:`Cell` per run.

Each study reproduces one ablation of SimCLR (Chen et al. 2020,
arXiv:2002.05709) at CPU scale:

* ``augmentations``: the Figure 5 heat map. Seven transformations (crop,
  cutout, color, sobel, noise, blur, rotate); the diagonal applies one alone,
  cell (row t1, column t2) applies t1 then t2. As in the paper's setup
  (section 3) the transformations go to **one branch only** and the other
  branch is the identity: ``view1_augmentations = t1[,t2]`` and
  ``view2_augmentations = none``. The paper first random-crops and resizes
  *both* branches to a common resolution only because ImageNet images differ
  in size (the "identity" branch is that shared crop, not a second random
  one); our datasets' images are resized to ``image_size`` before the
  augmentations instead, which is the identity for ``offline_shapes`` and
  CIFAR (already 32 px), so no shared random crop is applied. Flip is not
  part of the grid (the paper's Figure 5 has no flip).
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
the rest.
"""

import dataclasses

STUDIES = ("augmentations", "projection_head", "temperature", "batch_size")
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
      name: directory name of the run under the study directory.
      params: the study's coordinates of the cell (CSV columns, plot axes).
      overrides: config keys set for this cell on top of the base config.
      priority: lower runs first when the grid is cut.
    """

    name: str
    params: dict
    overrides: dict
    priority: int = 0


def _augmentation_cells():
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
                params={"first": first, "second": second},
                overrides={"view1_augmentations": ",".join(names),
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


_GRIDS = {"augmentations": _augmentation_cells, "projection_head": _head_cells,
          "temperature": _temperature_cells, "batch_size": _batch_cells}


def grid(study):
    """The cells of ``study`` in grid (CSV) order; ValueError for an unknown one."""
    if study not in _GRIDS:
        raise ValueError(f"Unknown study {study!r}: allowed studies are "
                         f"{', '.join(STUDIES)}.")
    return _GRIDS[study]()


def by_priority(cells):
    """``cells`` in run order: by priority, grid order within a priority."""
    return sorted(cells, key=lambda c: c.priority)
