"""The SimCLR network and its one forward pass (what the objectives read)."""

import keras
import tensorflow as tf

from simclr_tf.models import heads, resnet
from simclr_tf.weight_decay import SUPERVISED_HEAD

#: The named views of a pretraining batch (``clean`` only with ``probe_view=clean``).
VIEWS = ("view1", "view2", "clean")

_SERIALIZE = keras.saving.serialize_keras_object
_DESERIALIZE = keras.saving.deserialize_keras_object


@keras.saving.register_keras_serializable(package="simclr_tf")
class SimCLRModel(keras.Model):
    """SimCLR's network: encoder f, projection head g and a supervised head.

    ``call(inputs)`` takes either images ``[B, H, W, 3]`` in [0, 1] or a dict
    of named views of the same B images: ``view1``, ``view2`` and optionally
    ``clean`` (a pretraining batch). It returns a dict: ``final_avg_pool``
    (the representation h = f(x)), ``proj_head_output`` (z = g(h)),
    ``proj_head_hidden_<i>`` for each projection layer i >= 1 and, with a
    supervised head, ``logits_sup``. For views, h and z have 2B rows (view 1
    first): both views go through the encoder as one batch, so BN statistics
    cover both, as in the paper. The supervised head reads projection layer
    ``ft_proj_selector`` (0 = h); as pretraining's linear probe (``probe``)
    it reads ``stop_gradient(h)`` instead, so it never changes the encoder,
    and with a ``clean`` view it classifies that view (B rows) through the
    encoder in inference mode, as the frozen-feature evaluation sees it.

    ``fine_tune_after_block`` freezes the stem and block groups up to that
    index (-1: nothing); frozen layers run in inference mode, so their BN
    statistics do not drift (4 is linear evaluation with a frozen encoder).

    Args:
        encoder: a ``simclr_tf.models.resnet.ResNet`` (any layer mapping images
            to h [B, C] works).
        projection_head: a ``simclr_tf.models.heads.ProjectionHead``.
        supervised_head: a ``simclr_tf.models.heads.SupervisedHead`` or None
            (pretraining on unlabelled data).
        ft_proj_selector: projection-head layer the supervised head reads
            outside pretraining.
        fine_tune_after_block: -1 trains the whole encoder; 0..4 freezes the
            stem and block groups up to that index.
        probe: True when the supervised head is pretraining's linear probe
            (it then reads ``stop_gradient(h)``, or of the clean view).

    Example:

    ```python
    from simclr_tf import SimCLRModel
    from simclr_tf.models import heads, resnet

    model = SimCLRModel(
        resnet.ResNet(18, width_multiplier=0.25, cifar_stem=True),
        heads.ProjectionHead("nonlinear", proj_out_dim=64, num_proj_layers=2),
        heads.SupervisedHead(10))
    outputs = model(images)            # images [B, 32, 32, 3] in [0, 1]
    h = outputs["final_avg_pool"]
    outputs = model({"view1": x1, "view2": x2})  # a pretraining batch: 2B rows
    ```

    Train it with a task (:mod:`simclr_tf.tasks`) and the loop of
    :mod:`simclr_tf.runtime`, or with ``python -m simclr_tf.run``.

    Reference: Chen et al., "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020 (arXiv:2002.05709); Chen et al., "Big
    Self-Supervised Models are Strong Semi-Supervised Learners", NeurIPS 2020
    (arXiv:2006.10029).
    """

    def __init__(self, encoder, projection_head, supervised_head=None, *,
                 ft_proj_selector=0, fine_tune_after_block=-1, probe=True, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.projection_head = projection_head
        self.supervised_head = supervised_head
        self.ft_proj_selector = ft_proj_selector
        self.fine_tune_after_block = fine_tune_after_block
        self.probe = probe
        if fine_tune_after_block >= 0:
            self.encoder.freeze(fine_tune_after_block)

    def call(self, inputs, training=False):
        clean = None
        if isinstance(inputs, dict):
            unknown = set(inputs) - set(VIEWS)
            if unknown or not {"view1", "view2"} <= set(inputs):
                raise ValueError(f"SimCLRModel takes images or a dict of views {VIEWS} "
                                 f"(view1 and view2 required), got keys {sorted(inputs)}.")
            clean = inputs.get("clean")
            images = tf.concat([inputs["view1"], inputs["view2"]], axis=0)
        else:
            images = inputs
        h = self.encoder(images, training=training)
        z, hiddens = self.projection_head(h, training=training)
        outputs = {"final_avg_pool": h, "proj_head_output": z}
        for i, hidden in enumerate(hiddens[1:], start=1):
            outputs[f"proj_head_hidden_{i}"] = hidden
        if self.supervised_head is not None:
            if not self.probe:
                features = hiddens[self.ft_proj_selector]
            elif clean is None:
                features = tf.stop_gradient(h)
            else:  # after the training pass, so it reads this step's BN statistics
                features = tf.stop_gradient(self.encoder(clean, training=False))
            outputs["logits_sup"] = self.supervised_head(features, training=training)
        return outputs

    def get_config(self):
        return {
            "name": self.name,
            "encoder": _SERIALIZE(self.encoder),
            "projection_head": _SERIALIZE(self.projection_head),
            "supervised_head": (_SERIALIZE(self.supervised_head)
                                if self.supervised_head is not None else None),
            "ft_proj_selector": self.ft_proj_selector,
            "fine_tune_after_block": self.fine_tune_after_block,
            "probe": self.probe,
        }

    # Keys that .keras files written before the tasks split (0.1.0) carry:
    # the objective's settings, which now live in simclr_tf.tasks.
    _LEGACY_KEYS = ("temperature", "hidden_norm", "weight_decay",
                    "lineareval_while_pretraining", "nonfinite_policy",
                    "distill_temperature", "distill_label_weight")

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        train_mode = config.pop("train_mode", None)
        if train_mode is not None:
            config.setdefault("probe", train_mode == "pretrain")
            if train_mode != "finetune":
                config["fine_tune_after_block"] = -1
        for key in cls._LEGACY_KEYS:
            config.pop(key, None)
        for key in ("encoder", "projection_head", "supervised_head"):
            if config.get(key) is not None:
                config[key] = _DESERIALIZE(config[key])
        return cls(**config)


def build_model(cfg, num_classes, *, probe=False, fine_tune_after_block=-1):
    """The SimCLRModel of ``cfg.model`` (a ``simclr_tf.config.ModelConfig``).

    Which head and which frozen blocks is the objective's choice: use
    ``simclr_tf.tasks.build_model(cfg, num_classes)`` for a run's model.
    ``num_classes`` of 0 builds no supervised head (unlabelled data). As the
    ``probe`` the supervised head reads ``stop_gradient(h)`` through a
    BatchNorm without scale and offset.

    With ``precision`` bfloat16 or float16 the encoder computes under the
    Keras policy ``mixed_<precision>`` (float32 variables and BN statistics)
    and the heads stay float32, so z, the logits and the losses are float32;
    no global policy is set.
    """
    encoder_dtype = head_dtype = None
    if cfg.precision in ("bfloat16", "float16"):
        encoder_dtype, head_dtype = f"mixed_{cfg.precision}", "float32"
    encoder = resnet.ResNet(
        cfg.resnet_depth, width_multiplier=cfg.width_multiplier,
        cifar_stem=cfg.cifar_stem, sk_ratio=cfg.sk_ratio,
        batch_norm_decay=cfg.batch_norm_decay, global_bn=cfg.global_bn,
        name="encoder", dtype=encoder_dtype)
    projection_head = heads.ProjectionHead(
        cfg.proj_head_mode, proj_out_dim=cfg.proj_out_dim,
        num_proj_layers=cfg.num_proj_layers, batch_norm_decay=cfg.batch_norm_decay,
        global_bn=cfg.global_bn, name="projection_head", dtype=head_dtype)
    supervised_head = None
    if num_classes > 0:
        supervised_head = heads.SupervisedHead(
            num_classes, zero_init=cfg.zero_init_logits_layer, input_batch_norm=probe,
            batch_norm_decay=cfg.batch_norm_decay, global_bn=cfg.global_bn,
            name=SUPERVISED_HEAD, dtype=head_dtype)
    return SimCLRModel(
        encoder, projection_head, supervised_head,
        ft_proj_selector=cfg.ft_proj_selector, fine_tune_after_block=fine_tune_after_block,
        probe=probe, name="simclr")
