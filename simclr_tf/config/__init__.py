"""Typed experiment configuration: one flat schema, read in sections.

:class:`Config` holds every setting of a run. Its field names are the
command-line flag names of ``python -m simclr_tf.run`` (they follow the
official google-research/simclr ``tf2/run.py`` names so users can move over)
and the keys of the YAML files in ``configs/``: one key, one flag, one YAML
line, one row in the flag table (made by :func:`flag_table`; regenerate the
documentation's copy with ``python tests/update_readme.py``).

The rest of the package reads a run's settings in sections, each a small
frozen dataclass holding what one part needs, with the values derived from
other keys computed here and nowhere else:

=================  ==========================================================
``cfg.data``       :class:`DataConfig`: dataset, splits, image size, batches,
                   label subset (read by the input pipelines)
``cfg.augment``    :class:`AugmentConfig`: the two views' op lists, the shared
                   list run before both, and colour strength, with the
                   image-size preset resolved
``cfg.model``      :class:`ModelConfig`: encoder and heads (``cifar_stem``
                   derived from the image size)
``cfg.loss``       :class:`LossConfig`: contrastive, probe and distillation
                   loss settings
``cfg.optim``      :class:`OptimConfig`: optimizer, learning rate, schedule
                   length
=================  ==========================================================

The runtime (mode, model_dir, checkpoints, devices) reads the flat config
itself. Steps per epoch, total steps and warm-up steps need the dataset's
size: they are :func:`simclr_tf.optimizers.step_counts`.

The config owns every name and choice a setting may take
(:mod:`simclr_tf.config.choices`: the allowed values, the augmentation names,
the image-size rule :func:`is_small_image` with its :func:`preset`, and the
checks that layers and ops taking the same values from users share); the
TensorFlow modules import them from there. ``import simclr_tf.config`` loads
no TensorFlow: only reading or writing a file does (:mod:`simclr_tf.files`).

Precedence, lowest first: the defaults below < the ``--config`` YAML file <
flags given on the command line. Validation happens before any work: unknown
keys and invalid values raise :class:`ConfigError` naming the key, the value
and what is allowed.
The config checks types and values only: it loads no data and no model
(the teacher of a distillation run is checked when the run loads it).
"""


from simclr_tf.config.choices import (  # noqa: F401
    AUGMENTATIONS, COLOR_JITTER_IMPLS, LR_SCALINGS, NO_AUGMENTATION, NONFINITE_POLICIES,
    OPTIMIZERS, PROJ_HEAD_MODES, RESNET_DEPTHS, check_batch_norm_decay, check_choice,
    check_range, default_augmentations, is_small_image, parse_augmentations, preset)
from simclr_tf.config.schema import (  # noqa: F401
    AUGMENTATION_KEYS, DATASET_SHORTCUTS, FIELDS, JIT_COMPILE, MODES, PRECISIONS,
    PROBE_VIEWS, TRAIN_MODES, Config)
from simclr_tf.config.sections import (  # noqa: F401
    AugmentConfig, DataConfig, LossConfig, ModelConfig, OptimConfig)
from simclr_tf.config.yaml_io import (  # noqa: F401
    flag_table, from_dict, load_yaml, resolve, save_yaml)
from simclr_tf.errors import ConfigError  # noqa: F401
