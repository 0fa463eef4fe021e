"""The configuration: recipe values, presets, derived sizes and start-up errors."""

import importlib.util
import pathlib
import re

import ml_collections
import pytest

from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax.errors import ConfigError

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def _load(preset="", recipe="resnet50_v15"):
    spec = importlib.util.spec_from_file_location("recipe", CONFIGS / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def test_resnet50_recipe_values_are_nvidias_mxnet():
    config = _load()
    assert config.arch == "resnet50_v15" and config.num_epochs == 90
    assert config.per_device_batch_size == 192 and config.warmup_epochs == 5
    assert config.base_learning_rate == 0.256 and config.momentum == 0.875
    assert not config.nesterov and config.label_smoothing == 0.1
    assert config.weight_decay == 1 / 32768 and config.mixup_alpha == 0
    assert (config.image_size, config.eval_resize_size, config.eval_image_size) == (224, 256, 224)
    assert config_lib.learning_rate(config, 8 * 192) == pytest.approx(1.536)
    # NVIDIA's MXNet code, value for value (see the config's comments).
    assert (config.lr_schedule_unit, config.warmup_from_zero) == ("step", True)
    assert config.weight_decay_rule == "all"
    assert config.optimizer == "sgd_mxnet" and config.mixup_per_sample
    assert (config.model.conv_init, config.model.zero_init_last_bn,
            config.model.zero_var_last_bn) == ("mxnet", True, True)
    assert (config.crop_attempts, config.train_antialias, config.eval_antialias) == (10, True, True)
    assert config.mean_rgb == (123.68, 116.779, 103.939)
    assert config.std_rgb == (58.393, 57.12, 57.375)
    config_lib.validate(ml_collections.ConfigDict(
        {**config.to_dict(), "data": {**config.data.to_dict(), "backend": "synthetic"}}))


@pytest.mark.parametrize("preset, epochs, mixup", [("50", 50, 0.0), ("90", 90, 0.0),
                                                   ("250", 250, 0.2)])
def test_presets_set_epochs_and_mixup(preset, epochs, mixup):
    config = _load(preset)
    assert config.num_epochs == epochs and config.mixup_alpha == mixup


@pytest.mark.parametrize("recipe", ["resnext101_32x4d", "se_resnext101_32x4d"])
def test_resnext_recipes_are_nvidias(recipe):
    config = _load(recipe=recipe)
    assert config.arch == recipe and config.num_epochs == 90 and config.mixup_alpha == 0
    assert config.per_device_batch_size == 128 and config.warmup_epochs == 8
    assert config.weight_decay == 6.103515625e-05 == 1 / 16384
    assert config.base_learning_rate == 0.256 and config.momentum == 0.875
    assert config.label_smoothing == 0.1
    assert config_lib.learning_rate(config, 8 * 128) == pytest.approx(1.024)
    # NVIDIA's PyTorch code, value for value (see the config's comments).
    assert (config.lr_schedule_unit, config.warmup_from_zero) == ("epoch", False)
    assert config.weight_decay_rule == "not_bn" and config.optimizer == "sgd"
    # data_backend pytorch: torchvision's crop (10 draws) and PIL's resizes, antialiased.
    assert (config.crop_attempts, config.train_antialias, config.eval_antialias) == (10, True, True)
    # NVIDIA's optimizer batch of 1,024 and lr 1.024 on any GPU count up to 8.
    for gpus, steps in ((8, 1), (4, 2), (1, 8)):
        assert config_lib.accumulation_steps(config, gpus) == steps
        assert config_lib.learning_rate(
            config, config_lib.optimizer_batch_size(config, gpus)) == pytest.approx(1.024)
    assert (config.loss_scale_init, config.loss_scale_growth_interval) == (128.0, 100)
    assert (config.model.conv_init, config.model.zero_init_last_bn) == ("fan_in", False)
    long = _load("250", recipe)
    assert long.num_epochs == 250 and long.mixup_alpha == 0.2
    with pytest.raises(ValueError, match="preset '50' is not one of 90, 250"):
        _load("50", recipe)


def test_optimizer_batch_size_sets_accumulation_and_learning_rate():
    config = _load()
    config.per_device_batch_size = 64
    assert config_lib.accumulation_steps(config, 8) == 1
    config.optimizer_batch_size = 2048  # NVIDIA's RN50 setting, on 8 GPUs of 64 images
    assert config_lib.accumulation_steps(config, 8) == 4
    assert config_lib.optimizer_batch_size(config, 8) == 2048
    config.optimizer_batch_size = 1000
    with pytest.raises(ConfigError, match="optimizer_batch_size=1000 is not a multiple of the "
                                          "global batch 512"):
        config_lib.accumulation_steps(config, 8)


def test_global_batch_size_overrides_per_device_and_must_divide():
    config = _load()
    assert config_lib.global_batch_size(config, 8) == 1536
    config.global_batch_size = 1024
    assert config_lib.global_batch_size(config, 8) == 1024
    with pytest.raises(ConfigError, match="global_batch_size=1024 is not divisible by the 3"):
        config_lib.global_batch_size(config, 3)


def _valid(tmp_path) -> ml_collections.ConfigDict:
    config = _load()
    config.data.root = str(tmp_path)
    return config


@pytest.mark.parametrize("field, value, message", [
    ("arch", "resnet51", r"arch 'resnet51' is not supported: use one of resnet50_v15, .* or "
     r"NVIDIA's names \(resnet50 = resnet50_v15, .*\) \(--config.arch=NAME\)"),
    ("precision", "fp8", r"precision 'fp8' is not supported: use one of fp32, tf32, bf16, fp16 "
     r"\(--config.precision=...\)"),
    ("data.backend", "pil", r"data.backend 'pil' is not supported: use one of dali_gpu, "
     r"dali_cpu, synthetic \(--config.data.backend=...\)"),
    ("mode", "test", r"mode 'test' is not supported: use one of train, eval"),
    ("lr_schedule_unit", "iter", r"lr_schedule_unit 'iter' is not supported: use one of step, "
     r"epoch"),
    ("weight_decay_rule", "bn", r"weight_decay_rule 'bn' is not supported: use one of "
     r"kernels, not_bn, all"),
    ("model.conv_init", "xavier", r"model.conv_init 'xavier' is not supported: use one of "
     r"fan_in, fan_out, mxnet"),
    ("ema_decay", 1.0, r"ema_decay=1.0 must be in \[0, 1\): 0 turns the EMA off"),
    ("model.padding", "valid", r"model.padding 'valid' is not supported: use one of "
     r"symmetric, same, symmetric_same_pool"),
    ("mean_rgb", (1.0, 2.0), r"mean_rgb=\(1.0, 2.0\) must be 3 numbers, one per RGB channel "
     r"on the 0..255 scale \(--config.mean_rgb='\(R, G, B\)'\)"),
    ("std_rgb", (58.0, 0.0, 57.0), r"std_rgb=\(58.0, 0.0, 57.0\) must be 3 numbers, .*, all "
     r"positive"),
    ("loss_scale_max", 1024.0, r"loss_scale_init=65536 must be in \[1, loss_scale_max=1024\]: "
     r"lower --config.loss_scale_init or raise --config.loss_scale_max"),
    ("gpu_memory_fraction", 1.0, r"gpu_memory_fraction=1.0 must be in \[0, 1\): the share of "
     r"each GPU JAX takes"),
])
def test_bad_choice_names_value_and_fix(tmp_path, field, value, message):
    config = _valid(tmp_path)
    parent, _, name = field.rpartition(".")
    (config[parent] if parent else config)[name] = value
    with pytest.raises(ConfigError, match=message) as error:
        config_lib.validate(config)
    assert "\n" not in str(error.value)  # `main` prints it as one line, `error: ...`


def test_missing_or_unset_data_root_names_it(tmp_path):
    config = _valid(tmp_path)
    config_lib.validate(config)
    config.data.root = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=rf"data.root '{re.escape(str(tmp_path))}/nowhere' does "
                                          r"not exist: pass --config.data.root=DIR"):
        config_lib.validate(config)
    config.data.root = ""
    with pytest.raises(ConfigError, match=r"data.root is not set: pass --config.data.root=DIR"):
        config_lib.validate(config)
    config.data.backend = "synthetic"
    config_lib.validate(config)


def test_training_set_smaller_than_a_batch_is_an_error():
    assert data_lib.steps_per_epoch(1000, 256) == 3
    with pytest.raises(ConfigError, match="200 images, fewer than one global batch of 256"):
        data_lib.steps_per_epoch(200, 256)


@pytest.mark.parametrize("alias, arch", [("resnet50", "resnet50_v15"),
                                         ("se-resnext101-32x4d", "se_resnext101_32x4d")])
def test_nvidia_arch_names_are_accepted_and_saved_as_the_projects(tmp_path, alias, arch):
    config = _load(recipe=arch)
    config.arch = alias
    config.data.root = str(tmp_path)
    config_lib.validate(config)
    assert config.arch == arch  # what checkpoints record and resumes compare
    assert config_lib.recipe(alias).arch == arch


def test_defaults_hold_plumbing_only_and_a_recipe_fills_them(tmp_path):
    config = config_lib.defaults()
    config.data.root = str(tmp_path)
    with pytest.raises(ConfigError, match=r"arch '' is not supported"):
        config_lib.validate(config)
    for recipe in ("resnet50_v15", "resnext101_32x4d", "se_resnext101_32x4d"):
        config = _load(recipe=recipe)
        config.data.root = str(tmp_path)
        config_lib.validate(config)

