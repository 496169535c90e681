"""The sections of a config: what each part of the package reads (see simclr_tf.config)."""

import dataclasses
from typing import Optional, Tuple

from simclr_tf.config.choices import default_augmentations, parse_augmentations, preset
from simclr_tf.errors import ConfigError


def section(cls, cfg, **derived):
    """``cls`` filled from the same-named keys of ``cfg`` plus ``derived``."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in derived]
    return cls(**{n: getattr(cfg, n) for n in names}, **derived)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the input pipelines read."""

    dataset: str
    data_dir: Optional[str]
    train_split: str
    eval_split: str
    image_size: int
    cache_dataset: bool
    train_batch_size: int
    eval_batch_size: int
    seed: int
    label_fraction: float
    label_subset_file: Optional[str]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The pretraining views, parsed and resolved: op names per view (see
    simclr_tf.data.augment.OPS) and the colour settings.

    ``shared`` runs once per image, one draw for both views, before ``view1``
    and ``view2``. :meth:`of` is the one place the augmentation keys are
    parsed and checked; the pipeline applies these tuples as they are.
    """

    image_size: int
    view1: Tuple[str, ...]
    view2: Tuple[str, ...]
    shared: Tuple[str, ...]
    color_jitter_strength: float
    color_jitter_impl: str

    @classmethod
    def of(cls, cfg):
        """The views of ``cfg`` (a Config): each per-view key, else ``augmentations``,
        else the image-size preset's list; ConfigError naming the key for an
        unknown name or an ``augmentations`` list that contradicts ``use_blur``."""
        parsed = {key: parse_augmentations(getattr(cfg, key), key)
                  for key in ("augmentations", "view1_augmentations", "view2_augmentations",
                              "shared_augmentations") if getattr(cfg, key) is not None}
        size_preset = preset(cfg.image_size)
        both = parsed.get("augmentations")
        if both is None:
            both = default_augmentations(
                size_preset["use_blur"] if cfg.use_blur is None else cfg.use_blur)
        elif cfg.use_blur is not None and ("blur" in both) != cfg.use_blur:
            raise ConfigError(
                f"'use_blur' is {cfg.use_blur} but 'augmentations' "
                f"({cfg.augmentations!r}) {'lacks' if cfg.use_blur else 'has'} blur: "
                "list blur in augmentations (or not) and leave use_blur unset.")
        view1, view2 = (parsed.get(f"view{i}_augmentations") for i in (1, 2))
        strength = cfg.color_jitter_strength
        return cls(image_size=cfg.image_size,
                   view1=both if view1 is None else view1,
                   view2=both if view2 is None else view2,
                   shared=parsed.get("shared_augmentations", ()),
                   color_jitter_strength=(size_preset["color_jitter_strength"]
                                          if strength is None else strength),
                   color_jitter_impl=cfg.color_jitter_impl)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoder and heads (simclr_tf.models.simclr_model.build_model)."""

    resnet_depth: int
    width_multiplier: float
    sk_ratio: float
    cifar_stem: bool
    batch_norm_decay: float
    global_bn: bool
    proj_head_mode: str
    proj_out_dim: int
    num_proj_layers: int
    ft_proj_selector: int
    fine_tune_after_block: int
    zero_init_logits_layer: bool
    train_mode: str
    precision: str


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The objectives' settings (simclr_tf.tasks)."""

    temperature: float
    hidden_norm: bool
    lineareval_while_pretraining: bool
    probe_learning_rate: float
    probe_view: str
    distill_temperature: float
    distill_label_weight: float


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (simclr_tf.optimizers)."""

    optimizer: str
    learning_rate: float
    learning_rate_scaling: str
    warmup_epochs: float
    weight_decay: float
    momentum: float
    train_epochs: int
    train_steps: int
