"""Typed experiment configuration: one flat schema, read in sections.

:class:`Config` holds every setting of a run. Its field names are the
command-line flag names of ``python -m simclr_tf.run`` (they follow the
official google-research/simclr ``tf2/run.py`` names so users can move over)
and the keys of the YAML files in ``configs/``: one key, one flag, one YAML
line, one row in the README's flag table (generated from :func:`flag_table`).

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
``cfg.runtime``    the flat config itself: mode, model_dir, checkpoints and
                   devices are read by the runtime, which sees everything
=================  ==========================================================

The image-size rule (<= 32 px is the CIFAR setting) is
:func:`simclr_tf.data.augment.is_small_image`; steps per epoch, total steps
and warm-up steps are :func:`simclr_tf.optimizers.step_counts`.

Precedence, lowest first: the defaults below < the ``--config`` YAML file <
flags given on the command line. Validation happens before any work: unknown
keys and invalid values raise :class:`ConfigError` naming the key, the value
and what is allowed.
The config checks types and values only: it loads no data and no model
(the teacher of a distillation run is checked when the run loads it).
"""


from simclr_tf.config.schema import (  # noqa: F401
    AUGMENTATION_KEYS, AUGMENTATIONS, COLOR_JITTER_IMPLS, DATASET_SHORTCUTS, FIELDS,
    JIT_COMPILE, MODES, NO_AUGMENTATION, NONFINITE_POLICIES, PRECISIONS, RESNET_DEPTHS,
    TRAIN_MODES, Config, default_augmentations, parse_augmentations)
from simclr_tf.config.sections import (  # noqa: F401
    AugmentConfig, DataConfig, LossConfig, ModelConfig, OptimConfig)
from simclr_tf.config.yaml_io import (  # noqa: F401
    flag_table, from_dict, load_yaml, resolve, save_yaml)
from simclr_tf.errors import ConfigError  # noqa: F401
