"""The schema of a run's settings: :class:`Config`, one field per flag and YAML key."""

import dataclasses
import os
from typing import Optional

from simclr_tf.config.choices import (  # noqa: F401  (the config's names)
    AUGMENTATIONS, BATCH_NORM_DECAY_RANGE, COLOR_JITTER_IMPLS, LR_SCALINGS, NO_AUGMENTATION,
    NONFINITE_POLICIES, OPTIMIZERS, PROJ_HEAD_MODES, RESNET_DEPTHS, check_choice,
    check_range, default_augmentations, is_small_image, parse_augmentations, preset)
from simclr_tf.config.sections import (AugmentConfig, DataConfig, LossConfig, ModelConfig,
                                       OptimConfig, section)
from simclr_tf.errors import ConfigError

DATASET_SHORTCUTS = ("offline_shapes", "image_folder")
MODES = ("train", "eval", "train_then_eval", "export")
TRAIN_MODES = ("pretrain", "finetune", "distill")
PRECISIONS = ("float32", "bfloat16", "float16")
JIT_COMPILE = ("auto", "true", "false")
PROBE_VIEWS = ("augmented", "clean")
AUGMENTATION_KEYS = ("augmentations", "view1_augmentations", "view2_augmentations",
                     "shared_augmentations")
RANGE_KEYS = ("minimum", "maximum", "exclusive_min", "exclusive_max")


def files():
    """:mod:`simclr_tf.files`, imported when a file is touched: it imports TensorFlow
    (``tf.io.gfile``) at module level, which ``import simclr_tf.config`` must not."""
    import simclr_tf.files  # the one lazy import of the config (tests/test_package.py)
    return simclr_tf.files


def _field(default, help, choices=None, minimum=None, exclusive_min=False, maximum=None,
           exclusive_max=False):
    return dataclasses.field(
        default=default,
        metadata={"help": help, "choices": choices, "minimum": minimum,
                  "exclusive_min": exclusive_min, "maximum": maximum,
                  "exclusive_max": exclusive_max})


@dataclasses.dataclass
class Config:
    """All settings of a simclr_tf run (see the module docstring)."""

    # What to do.
    mode: str = _field("train_then_eval", "What to run.", MODES)
    train_mode: str = _field(
        "pretrain", "pretrain: SimCLR contrastive pretraining (plus the linear probe "
        "when labels exist); finetune: supervised training of the head (and the "
        "encoder above fine_tune_after_block); distill: a fresh student learns "
        "teacher_checkpoint's soft labels on train_split (SimCLR v2).", TRAIN_MODES)
    seed: int = _field(0, "Seed of the data order, augmentations and initialisation.")

    # Data.
    dataset: str = _field(
        "offline_shapes", "offline_shapes (built in, no download), image_folder "
        "(data_dir=ROOT with ROOT/<split>/<class>/<image>) or any TFDS image dataset "
        "name (cifar10, stl10, imagenet2012, ...).")
    data_dir: Optional[str] = _field(
        None, "TFDS data directory, or the root folder for dataset=image_folder.")
    train_split: str = _field("train", "Split to train on (any TFDS split string).")
    eval_split: str = _field("test", "Split to evaluate on.")
    image_size: int = _field(32, "Side of the square training/eval images. <= 32 "
                             "selects the CIFAR stem and preset.", minimum=8)
    cache_dataset: bool = _field(False, "Cache decoded images in memory.")

    # Augmentation.
    color_jitter_strength: Optional[float] = _field(
        None, "Colour distortion strength s. Default: 0.5 for image_size <= 32 "
        "(CIFAR preset), else 1.0.", minimum=0.0)
    use_blur: Optional[bool] = _field(
        None, "Gaussian blur augmentation. Default: off for image_size <= 32, else on.")
    color_jitter_impl: str = _field(
        "v2", "Brightness jitter: v2 multiplicative, v1 additive.", COLOR_JITTER_IMPLS)
    augmentations: Optional[str] = _field(
        None, "Pretraining view pipeline: ordered, comma-separated names from "
        f"{', '.join(AUGMENTATIONS)} (a YAML list works too; 'none' = resize only). "
        "Default: crop,flip,color plus blur when use_blur is on (the SimCLR views).")
    view1_augmentations: Optional[str] = _field(
        None, "Pipeline of the first view only (same names); default: augmentations. "
        "With view2_augmentations it gives asymmetric views (the paper's Figure 5 "
        "study: view1_augmentations=crop,color view2_augmentations=none).")
    view2_augmentations: Optional[str] = _field(
        None, "Pipeline of the second view only; default: augmentations.")
    shared_augmentations: Optional[str] = _field(
        None, "Applied once per image before the two views are made, one random draw "
        "shared by both; the view pipelines then work on its output (same names; "
        "default: none). The paper's Figure 5 protocol: shared_augmentations=crop "
        "view1_augmentations=t1,t2 view2_augmentations=none (view 2 is the shared crop).")

    # Batches and length.
    train_batch_size: int = _field(128, "Global training batch size.", minimum=1)
    eval_batch_size: int = _field(256, "Global eval batch size.", minimum=1)
    train_epochs: int = _field(4, "Training epochs (used when train_steps is 0).",
                               minimum=0)
    train_steps: int = _field(0, "Training steps; overrides train_epochs when > 0.",
                              minimum=0)

    # Optimisation.
    optimizer: str = _field("lars", "Optimizer.", OPTIMIZERS)
    learning_rate: float = _field(
        2.0, "Base learning rate, scaled by learning_rate_scaling.", minimum=0.0)
    learning_rate_scaling: str = _field(
        "linear", "linear: lr*B/256; sqrt: lr*sqrt(B).", LR_SCALINGS)
    warmup_epochs: float = _field(1.0, "Linear warmup epochs.", minimum=0.0)
    weight_decay: float = _field(1e-6, "Weight decay (not on BN and biases).",
                                 minimum=0.0)
    momentum: float = _field(0.9, "Momentum of lars and momentum optimizers.",
                             minimum=0.0)

    # Contrastive loss.
    temperature: float = _field(0.2, "NT-Xent temperature.", minimum=0.0,
                                exclusive_min=True)
    hidden_norm: bool = _field(True, "L2-normalise projections before the loss.")

    # Model.
    resnet_depth: int = _field(18, "ResNet depth.", RESNET_DEPTHS)
    width_multiplier: float = _field(
        0.25, "ResNet width multiplier (fractions such as 0.25 allowed).",
        minimum=0.0, exclusive_min=True)
    sk_ratio: float = _field(0.0, "Selective-kernel ratio (SimCLR v2 uses 0.0625; "
                             "0 disables).", minimum=0.0)
    batch_norm_decay: float = _field(0.9, "BatchNorm moving-average decay.",
                                     **BATCH_NORM_DECAY_RANGE)
    global_bn: bool = _field(True, "Synchronise BN statistics across replicas.")
    proj_head_mode: str = _field("nonlinear", "Projection head.", PROJ_HEAD_MODES)
    proj_out_dim: int = _field(128, "Projection output dimension.", minimum=1)
    num_proj_layers: int = _field(2, "Projection head layers (v1: 2, v2: 3).",
                                  minimum=1)
    ft_proj_selector: int = _field(
        0, "Projection-head layer the supervised head reads in finetune "
        "(0 = encoder output h).", minimum=0)
    lineareval_while_pretraining: bool = _field(
        True, "Train a linear probe on stop_gradient(h) during pretraining.")
    probe_learning_rate: float = _field(
        0.1, "Pretraining's linear probe: > 0 trains it with its own optimizer (SGD, "
        "momentum 0.9, this learning rate decayed by a cosine over the run, no weight "
        "decay); 0 trains it with the pretraining optimizer, schedule and weight "
        "decay, as the official code does.", minimum=0.0)
    probe_view: str = _field(
        "augmented", "What pretraining's linear probe learns from: augmented (the "
        "two training views, as the official code) or clean (a third view of each "
        "image, preprocessed as for evaluation, through the encoder in inference mode, "
        "so that the probe tracks the frozen-feature evaluation). clean costs one more "
        "forward pass of the batch per step (see BENCHMARKS.md).", PROBE_VIEWS)
    fine_tune_after_block: int = _field(
        -1, "Finetune: -1 trains everything, 0 freezes the stem, k in 1..4 "
        "also freezes block groups 1..k (4 = linear evaluation).", minimum=-1)
    zero_init_logits_layer: bool = _field(
        False, "Zero-initialise the supervised head.")
    # Semi-supervised learning and distillation (SimCLR v2).
    label_fraction: float = _field(
        1.0, "Fraction of train_split's labels to use, class-balanced (same number "
        "per class, at least 1; chosen from seed). finetune trains on that subset; "
        "distill (label loss), the pretraining probe and feature_linear_eval see "
        "only its labels. 1.0: all labels.", minimum=0.0, exclusive_min=True)
    label_subset_file: Optional[str] = _field(
        None, "Text file of the labelled examples, one id per line (like the "
        "official ImageNet 1%/10% files): image_folder paths relative to the split "
        "folder or bare file names, the TFDS file_name feature, else example "
        "indices. Used like label_fraction (exclusive with it).")
    teacher_checkpoint: Optional[str] = _field(
        None, "distill: the teacher, an exported run (model_dir or its "
        "saved_model/) whose outputs include logits_sup (a fine-tuned model).")
    distill_temperature: float = _field(
        1.0, "distill: temperature T of softmax(teacher/T) and "
        "log_softmax(student/T).", minimum=0.0, exclusive_min=True)
    distill_label_weight: float = _field(
        0.0, "distill: weight of the cross-entropy on true labels (where the "
        "example has one) added to the distillation loss; 0 = pure distillation.",
        minimum=0.0)
    knn_eval: bool = _field(
        True, "At every evaluation, also report the weighted kNN accuracy on frozen, "
        "L2-normalised features h (k=200, temperature 0.1; simclr_tf/knn.py): it needs "
        "no training. Costs one forward pass over both splits (shared with "
        "feature_linear_eval).")
    knn_every_epochs: int = _field(
        0, "During pretraining, also compute the kNN accuracy every N epochs "
        "(knn_top1 in train_log.jsonl and TensorBoard; 0: never).", minimum=0)
    feature_eval_every_epochs: int = _field(
        0, "During pretraining, also run the frozen-feature linear evaluation every N "
        "epochs (feature_linear_eval_top1 in train_log.jsonl and TensorBoard; 0: "
        "never): the accuracy-against-time curve. Costs what the final one costs "
        "(a forward pass over both splits and a logistic regression).", minimum=0)
    num_classes: Optional[int] = _field(
        None, "Classes of the supervised head; default: those of train_split (none "
        "without labels). python -m simclr_tf.convert sets it for the released "
        "models (1000 for ImageNet); a labelled train_split with other classes is "
        "refused.", minimum=0)
    feature_linear_eval: bool = _field(
        True, "After pretraining, also fit an l2-regularised logistic regression on "
        "frozen features h of train_split (l2 chosen on a held-out 10% of it, then "
        "refitted on all) and report its eval_split accuracy: the paper's frozen-feature "
        "protocol (simclr_tf/linear_eval/). Costs a forward pass over both splits and "
        "the fits; features above 1 GiB a split go to a temporary file in TMPDIR "
        "(time and disk it takes: see BENCHMARKS.md).")

    # Checkpoints and outputs.
    model_dir: str = _field("runs/default", "Where checkpoints, TensorBoard logs, "
                            "result.json, config.yaml and the export go.")
    checkpoint: Optional[str] = _field(
        None, "Pretrained checkpoint (directory or prefix) to fine-tune from.")
    checkpoint_epochs: int = _field(1, "Save a checkpoint every N epochs.",
                                    minimum=1)
    checkpoint_steps: int = _field(
        0, "Save a checkpoint every N steps; overrides checkpoint_epochs when > 0.",
        minimum=0)
    keep_checkpoint_max: int = _field(5, "Checkpoints kept.", minimum=1)
    log_every_steps: int = _field(
        50, "Report the training metrics (progress bar, TensorBoard, "
        "model_dir/train_log.jsonl) every N steps; the host waits for the devices "
        "only at these points and at checkpoints.", minimum=1)

    # Reliability.
    nonfinite_policy: str = _field(
        "stop", "A non-finite loss or gradient: stop ends the run with an error "
        "naming the step and keeps the last good checkpoint; skip leaves the weights "
        "unchanged for that step and counts it (skipped_steps in the logs). "
        "precision=float16 always skips (its loss scaling backs off on overflow).",
        NONFINITE_POLICIES)
    deterministic: bool = _field(
        False, "Bit-reproducible runs on the same machine and device setup: seeds "
        "Python, NumPy, TF and Keras from seed and enables TF op determinism "
        "(slower; see docs/distributed.md).")

    # Devices.
    use_tpu: bool = _field(False, "Train on a TPU.")
    tpu_name: Optional[str] = _field(
        None, "TPU name or address; 'local' on a TPU VM (Colab).")

    # Performance (see BENCHMARKS.md).
    precision: str = _field(
        "float32", "bfloat16: the encoder computes in bfloat16 (Keras policy "
        "mixed_bfloat16); variables, BN statistics, heads, loss and optimizer stay "
        "float32. Pays on TPUs, recent GPUs (A100, L4, H100) and CPUs with AMX or "
        "AVX512-BF16; slower on other CPUs (speed and accuracy measured: see "
        "BENCHMARKS.md). float16: the same with mixed_float16 plus dynamic loss scaling "
        "(overflowing steps are skipped and counted in skipped_steps, the scale is "
        "logged as loss_scale): for GPUs without bfloat16 (Colab's T4, V100). See "
        "README, 'Precision'.", PRECISIONS)
    jit_compile: str = _field(
        "auto", "XLA-compile the training step. auto: on for one GPU, off on CPU "
        "(slower there: see BENCHMARKS.md) and with several GPU replicas; a TPU compiles the step "
        "with XLA anyway.", JIT_COMPILE)

    def validate(self):
        """Raises ConfigError for any invalid value; returns self."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None:
                continue
            if meta["choices"] is not None:
                check_choice(f.name, value, meta["choices"])
            if meta["minimum"] is not None or meta["maximum"] is not None:
                check_range(f.name, value, **{k: meta[k] for k in RANGE_KEYS})
        if self.train_epochs == 0 and self.train_steps == 0 and self.mode in (
                "train", "train_then_eval"):
            raise ConfigError("Both 'train_epochs' and 'train_steps' are 0: set one "
                              "of them > 0 to train, or use --mode=eval.")
        if self.dataset == "image_folder" and not self.data_dir:
            raise ConfigError("dataset=image_folder needs 'data_dir' set to the root "
                              "folder holding <split>/<class>/<image> files.")
        if self.proj_head_mode == "none" and self.ft_proj_selector > 0:
            raise ConfigError("'ft_proj_selector' must be 0 when proj_head_mode=none "
                              "(there are no projection layers to read).")
        max_selector = {"none": 0, "linear": 1}.get(self.proj_head_mode,
                                                     self.num_proj_layers)
        if self.ft_proj_selector > max_selector:
            raise ConfigError(
                f"Invalid value {self.ft_proj_selector} for 'ft_proj_selector': the "
                f"projection head has {max_selector} layer(s), so it must be in "
                f"0..{max_selector}.")
        if self.probe_view == "clean" and not (
                self.train_mode == "pretrain" and self.lineareval_while_pretraining):
            raise ConfigError(
                "probe_view=clean needs the pretraining probe (train_mode=pretrain with "
                "lineareval_while_pretraining=true); there is no probe to feed here. "
                "Drop probe_view or set those two.")
        if self.fine_tune_after_block > 4:
            raise ConfigError("Invalid value for 'fine_tune_after_block': allowed "
                              "values are -1 (train all), 0 (stem frozen) .. 4.")
        self._validate_semi_supervised()
        self.augment  # parses and checks the augmentation keys
        return self

    def _validate_semi_supervised(self):
        if self.label_fraction > 1.0:
            raise ConfigError(f"Invalid value {self.label_fraction!r} for "
                              "'label_fraction': it must be in (0, 1].")
        if self.label_subset_file:
            if self.label_fraction < 1.0:
                raise ConfigError("Set either 'label_fraction' < 1 or "
                                  "'label_subset_file', not both.")
            if not files().is_remote(self.label_subset_file) and not os.path.isfile(
                    self.label_subset_file):
                raise ConfigError(f"Invalid value {self.label_subset_file!r} for "
                                  "'label_subset_file': the file does not exist.")
        if self.train_mode == "distill":
            if not self.teacher_checkpoint:
                raise ConfigError("train_mode=distill needs 'teacher_checkpoint': the "
                                  "model_dir (or saved_model/) of an exported, "
                                  "fine-tuned run whose outputs include logits_sup.")
        elif self.teacher_checkpoint:
            raise ConfigError(f"'teacher_checkpoint' is only used with "
                              f"train_mode=distill (train_mode is {self.train_mode!r}).")

    # Derived values and sections ---------------------------------------
    @property
    def cifar_stem(self):
        """The CIFAR stem (3x3 conv, no max-pool) for small images."""
        return is_small_image(self.image_size)

    @property
    def data(self):
        return section(DataConfig, self)

    @property
    def augment(self):
        """The views, parsed and with the image-size preset resolved (:class:`AugmentConfig`)."""
        return AugmentConfig.of(self)

    @property
    def model(self):
        return section(ModelConfig, self, cifar_stem=self.cifar_stem)

    @property
    def loss(self):
        return section(LossConfig, self)

    @property
    def optim(self):
        return section(OptimConfig, self)

    def to_dict(self):
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
