"""Config precedence, validation messages and YAML round trips."""

import glob
import os

import pytest
import yaml

from simclr_tf import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_CONFIGS = os.path.join(REPO, "configs")


def _write(tmp_path, values, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    path = _write(tmp_path, {"train_batch_size": 64, "temperature": 0.2})
    cfg = config_lib.resolve(path, {"temperature": 0.7})
    assert cfg.train_batch_size == 64          # from YAML
    assert cfg.temperature == 0.7              # flag beats YAML
    assert cfg.resnet_depth == config_lib.Config().resnet_depth  # default kept


def test_every_shipped_config_is_valid_and_uses_known_keys():
    files = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
    assert {os.path.basename(f) for f in files} >= {
        "default.yaml", "smoke.yaml", "cifar10_resnet18.yaml",
        "imagenet_resnet50_tpu.yaml"}
    for f in files:
        config_lib.resolve(f)


def test_default_yaml_matches_builtin_defaults():
    from_file = config_lib.resolve(os.path.join(REPO, "configs", "default.yaml"))
    assert from_file == config_lib.Config()


def test_paper_recipes():
    cifar = config_lib.resolve(os.path.join(REPO, "configs", "cifar10_resnet18.yaml"))
    assert (cifar.train_batch_size, cifar.train_epochs, cifar.learning_rate,
            cifar.weight_decay, cifar.temperature) == (512, 1000, 1.0, 1e-4, 0.5)
    assert cifar.augment.color_jitter_strength == 0.5 and "blur" not in cifar.augment.view1
    cpu = config_lib.resolve("cifar10_cpu")  # the tuned CPU recipe (BENCHMARKS.md)
    assert (cpu.optimizer, cpu.learning_rate, cpu.weight_decay, cpu.temperature,
            cpu.train_batch_size, cpu.train_steps) == ("momentum", 0.3, 5e-4, 0.2, 128, 390)
    imnet = config_lib.resolve(
        os.path.join(REPO, "configs", "imagenet_resnet50_tpu.yaml"))
    assert (imnet.train_batch_size, imnet.learning_rate, imnet.weight_decay,
            imnet.temperature, imnet.train_epochs) == (4096, 0.3, 1e-6, 0.1, 100)
    assert "blur" in imnet.augment.view1 and imnet.augment.color_jitter_strength == 1.0
    assert imnet.learning_rate * imnet.train_batch_size / 256 == pytest.approx(4.8)


@pytest.mark.parametrize("values,fragment", [
    ({"train_batch_size": -4}, "'train_batch_size'"),
    ({"train_batch_size": 0}, ">= 1"),
    ({"temperature": 0.0}, "'temperature'"),
    ({"optimizer": "sgd"}, "lars, momentum, adam"),
    ({"resnet_depth": 20}, "18, 34, 50, 101, 152, 200"),
    ({"proj_head_mode": "mlp"}, "nonlinear, linear, none"),
    ({"mode": "fit"}, "train_then_eval"),
    ({"train_epochs": 0, "train_steps": 0}, "train_steps"),
    ({"dataset": "image_folder"}, "data_dir"),
    ({"proj_head_mode": "linear", "ft_proj_selector": 2}, "0..1"),
    ({"fine_tune_after_block": 7}, "fine_tune_after_block"),
    ({"learning_rate": "fast"}, "expected float"),
    ({"augmentations": "crop,solarize"}, "'augmentations': allowed names are crop, flip"),
    ({"view2_augmentations": ["crop", "spin"]}, "'spin' in 'view2_augmentations'"),
    ({"shared_augmentations": "crop,spin"}, "'spin' in 'shared_augmentations': allowed"),
    ({"augmentations": "crop,color", "use_blur": True}, "'use_blur'"),
    ({"batch_norm_decay": 1.0}, "'batch_norm_decay': it must be >= 0.0 and < 1.0"),
    ({"batch_norm_decay": -0.1}, "'batch_norm_decay': it must be >= 0.0 and < 1.0"),
    ({"color_jitter_impl": "v3"}, "'color_jitter_impl': allowed values are v1, v2"),
])
def test_invalid_values_name_the_key(values, fragment):
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.resolve(None, values)
    assert fragment in str(err.value)


def test_unknown_key_suggests_the_closest(tmp_path):
    path = _write(tmp_path, {"train_batchsize": 8})
    with pytest.raises(config_lib.ConfigError, match="Did you mean 'train_batch_size'"):
        config_lib.resolve(path)


def test_bad_files(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="not found"):
        config_lib.resolve(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(config_lib.ConfigError, match="not valid YAML"):
        config_lib.resolve(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(config_lib.ConfigError, match="mapping"):
        config_lib.resolve(str(lst))


def test_save_yaml_round_trip(tmp_path):
    cfg = config_lib.resolve(None, {"width_multiplier": 0.25, "use_blur": True})
    path = str(tmp_path / "config.yaml")
    config_lib.save_yaml(cfg, path)
    assert config_lib.resolve(path) == cfg
    assert not os.path.exists(path + ".tmp")


def test_derived_presets():
    small = config_lib.Config(image_size=32)
    large = config_lib.Config(image_size=224)
    assert small.cifar_stem and not large.cifar_stem
    assert (small.augment.color_jitter_strength, small.augment.view1) == (
        0.5, ("crop", "flip", "color"))
    assert (large.augment.color_jitter_strength, large.augment.view1) == (
        1.0, ("crop", "flip", "color", "blur"))


def test_flag_table_lists_every_field():
    table = config_lib.flag_table()
    for name in config_lib.FIELDS:
        assert f"`--{name}`" in table


def test_augmentation_lists(tmp_path):
    default = config_lib.Config()
    assert (default.augment.view1, default.augment.view2) == (("crop", "flip", "color"),) * 2
    assert config_lib.Config(image_size=64).augment.view2 == (
        "crop", "flip", "color", "blur")
    path = _write(tmp_path, {"augmentations": ["crop", "cutout"],
                             "view2_augmentations": []})
    cfg = config_lib.resolve(path, {"view1_augmentations": "crop, sobel"})
    assert cfg.augmentations == "crop,cutout"
    assert (cfg.augment.view1, cfg.augment.view2) == (("crop", "sobel"), ())
    saved = str(tmp_path / "saved.yaml")
    config_lib.save_yaml(cfg, saved)
    assert config_lib.resolve(saved) == cfg
    both = config_lib.resolve(None, {"augmentations": "crop,blur", "use_blur": True})
    assert (both.augment.view1, both.augment.view2) == (("crop", "blur"),) * 2
    assert default.augment.shared == () and cfg.augment.shared == ()
    path = _write(tmp_path, {"shared_augmentations": ["crop"]}, "shared.yaml")
    shared = config_lib.resolve(path, {"view2_augmentations": "none"})
    assert (shared.shared_augmentations, shared.augment.shared) == ("crop", ("crop",))
    assert shared.augment.view1 == ("crop", "flip", "color") and shared.augment.view2 == ()
    for unset in ("none", ""):
        assert config_lib.Config(shared_augmentations=unset).augment.shared == ()


def test_shipped_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    names = config_lib.yaml_io.shipped_configs()
    assert {"smoke", "default", "cifar10_resnet18", "imagenet_resnet50_tpu"} <= set(names)
    smoke = config_lib.resolve("smoke")
    by_file = config_lib.resolve(os.path.join(REPO_CONFIGS, "smoke.yaml"))
    assert smoke == by_file and smoke.train_steps == 6 and smoke.image_size == 16
    assert config_lib.resolve("cifar10_resnet18.yaml").dataset == "cifar10"
    with pytest.raises(config_lib.ConfigError, match=r"shipped config: .*smoke"):
        config_lib.resolve("no_such_config")
    # A file in the working directory wins over a shipped name.
    (tmp_path / "smoke").write_text("train_steps: 9\n")
    assert config_lib.resolve("smoke").train_steps == 9


# --------------------------------------------------------------------------
# The config owns the names and the checks; the TensorFlow modules import them.


def test_registries_have_exactly_the_config_names():
    from simclr_tf import optimizers
    from simclr_tf.data import augment
    from simclr_tf.models import heads, resnet
    from simclr_tf.runtime import steps

    # The registry's order matters too: a name's position is its seed slot.
    assert tuple(augment.OPS) == config_lib.AUGMENTATIONS
    assert tuple(sorted(resnet.BLOCK_CONFIGS)) == config_lib.RESNET_DEPTHS
    assert heads.PROJ_HEAD_MODES is config_lib.PROJ_HEAD_MODES
    assert optimizers.OPTIMIZERS is config_lib.OPTIMIZERS
    assert optimizers.LR_SCALINGS is config_lib.LR_SCALINGS
    assert steps.NONFINITE_POLICIES is config_lib.NONFINITE_POLICIES
    assert augment.preset is config_lib.preset
    assert augment.parse_augmentations is config_lib.parse_augmentations
    for depth in config_lib.RESNET_DEPTHS:  # every allowed depth builds
        resnet.ResNet(depth, 0.0625, cifar_stem=True)


def _message(call):
    with pytest.raises(config_lib.ConfigError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, float("nan")])
def test_batch_norm_decay_has_one_check(decay):
    """The layers taking it from users and the config refuse the same values, alike."""
    from simclr_tf.models import heads, resnet

    expected = _message(lambda: config_lib.Config(batch_norm_decay=decay).validate())
    assert _message(lambda: config_lib.check_batch_norm_decay(decay)) == expected
    assert _message(lambda: resnet.ResNet(18, batch_norm_decay=decay)) == expected
    assert _message(lambda: heads.ProjectionHead(batch_norm_decay=decay)) == expected


def test_color_jitter_impl_has_one_check():
    import numpy as np

    from simclr_tf.data import augment

    expected = _message(lambda: config_lib.Config(color_jitter_impl="v3").validate())
    image, seed = np.zeros((8, 8, 3), np.float32), [1, 2]
    for op in (lambda: augment.color_jitter(image, seed, impl="v3"),
               lambda: augment.random_color_distortion(image, seed, impl="v3"),
               lambda: augment.preprocess_for_train(image, seed, 8, color_jitter_impl="v3")):
        assert _message(op) == expected


def test_range_checks_and_their_words():
    assert config_lib.check_range("k", 0.5, minimum=0.0, maximum=1.0, exclusive_max=True) == 0.5
    assert config_lib.check_range("k", 0.0, minimum=0.0) == 0.0
    with pytest.raises(config_lib.ConfigError, match="'k': it must be > 0.0"):
        config_lib.check_range("k", 0.0, minimum=0.0, exclusive_min=True)
    with pytest.raises(config_lib.ConfigError, match="'k': it must be <= 2"):
        config_lib.check_range("k", 3, maximum=2)
    with pytest.raises(config_lib.ConfigError, match="'k' must be finite"):
        config_lib.check_range("k", float("inf"), minimum=0.0)
    table = config_lib.flag_table()
    assert "| `--batch_norm_decay` | `0.9` | >= 0.0 and < 1.0 |" in table
    assert "| `--temperature` | `0.2` | > 0.0 |" in table


def test_the_flat_config_has_no_runtime_section():
    cfg = config_lib.Config()
    assert not hasattr(cfg, "runtime")
    assert "cfg.runtime" not in config_lib.__doc__


def test_help_says_what_and_why_and_points_at_measurements():
    """Numbers measured on one machine go stale: help strings point at BENCHMARKS.md."""
    import re

    measured = re.compile(r"\d(\.\d+)?x\b|\d(\.\d+)? ?[GMT]B\b|\bs/step\b|img/s|"
                          r"\b(a|one) (half|third|quarter|fifth|sixth) (more|less|faster|slower)\b", re.I)
    for name, field in config_lib.FIELDS.items():
        assert not measured.search(field.metadata["help"]), (name, field.metadata["help"])
    for name in ("precision", "probe_view", "feature_linear_eval", "jit_compile"):
        assert "BENCHMARKS.md" in config_lib.FIELDS[name].metadata["help"], name
    assert os.path.isfile(os.path.join(REPO, "BENCHMARKS.md"))


def test_study_error_lives_with_the_other_errors():
    from simclr_tf import errors
    from simclr_tf.experiments import study

    assert study.StudyError is errors.StudyError
    assert issubclass(errors.StudyError, ValueError)
