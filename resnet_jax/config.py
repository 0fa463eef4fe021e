"""The configuration: plumbing shared by every recipe, checks, derived values.

A recipe is a file in configs/ (`configs/resnet50_v15.py`, ...): it starts from
`defaults()`, which holds plumbing only (data, bookkeeping, numerics
safeguards), and writes every number of the recipe itself, in sections.
`recipe(name)` loads one by name. Every field can be set on the command line,
e.g. `--config.num_epochs=50`; durations are given in epochs and converted to
steps here, in one place.
"""

import importlib.util
import os

import ml_collections

from resnet_jax import models
from resnet_jax.data import BACKENDS, MEAN_RGB, STD_RGB
from resnet_jax.data.records import FORMATS
from resnet_jax.errors import ConfigError
from resnet_jax.models.resnet import CONV_INITS, PADDINGS
from resnet_jax.precision import PRECISIONS

MODES = ("train", "eval")
# The optimizer's choices (resnet_jax/train/optimizer.py): when the warmup + cosine schedule
# changes, and which parameters are decayed.
SCHEDULE_UNITS = ("step", "epoch")
SCHEDULES = ("cosine", "polynomial")
WEIGHT_DECAY_RULES = ("kernels", "not_bn", "all", "kernels_and_fc_bias")
# 'sgd': PyTorch's SGD (the rate multiplies the momentum buffer); 'sgd_mxnet': MXNet's (the
# rate is inside the buffer); 'lars': NVIDIA's MLPerf LARS (resnet_jax/train/optimizer.py).
OPTIMIZERS = ("sgd", "sgd_mxnet", "lars")
# The recipe files, beside the package in a checkout.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def defaults() -> ml_collections.ConfigDict:
    """The fields every recipe has: plumbing with its defaults, recipe fields zero or empty.

    A recipe file sets the recipe fields (model, batch, optimizer, schedule,
    loss, images, precision); `validate` refuses the ones left zero or empty.
    """
    config = ml_collections.ConfigDict()
    config.mode = "train"  # train | eval
    config.seed = 0

    # --- recipe fields: set by each configs/*.py -------------------------------------------
    config.arch = ""
    config.num_classes = 1000
    config.per_device_batch_size = 0
    config.num_epochs = 0
    config.warmup_epochs = 0
    config.base_learning_rate = 0.0  # for learning_rate_batch_size images; scaled linearly
    # The batch base_learning_rate is given for; the run's rate is scaled linearly from it to
    # the optimizer batch. 0: base_learning_rate is the peak rate whatever the batch (LARS).
    config.learning_rate_batch_size = 256
    config.optimizer = "sgd"  # sgd | sgd_mxnet | lars
    config.lars_eta = 0.001  # lars: the trust coefficient
    config.lars_eps = 0.0  # lars: added to the trust ratio's denominator
    config.momentum = 0.0
    config.nesterov = False
    config.weight_decay = 0.0
    # Which parameters are decayed: 'kernels' (conv and dense kernels), 'not_bn' (NVIDIA's
    # PyTorch rule: every parameter whose PyTorch name lacks "bn"), 'all' (every parameter).
    config.weight_decay_rule = "kernels"
    # The warmup + cosine schedule changes every 'step' (NVIDIA's MXNet) or every 'epoch'
    # (NVIDIA's PyTorch lr_cosine_policy); warmup starts at 0 (MXNet) or one unit in (PyTorch).
    config.lr_schedule_unit = "step"
    config.warmup_from_zero = False
    # After warmup: 'cosine' (NVIDIA's recipes) or 'polynomial' (MLPerf's LARS), from the peak
    # to end_learning_rate; lr_decay_power is the polynomial's power.
    config.lr_schedule = "cosine"
    config.lr_decay_power = 2.0
    config.end_learning_rate = 0.0
    config.label_smoothing = 0.0
    config.mixup_alpha = 0.0  # 0: off
    config.mixup_per_sample = False  # one mixup weight per image (MXNet) or per device batch
    config.image_size = 0
    config.eval_resize_size = 0
    config.eval_image_size = 0
    config.eval_antialias = True  # antialiased eval resize (DALI); NVIDIA's PyTorch: False
    config.train_antialias = False  # the train crop's resize: NVIDIA's PyTorch False, MXNet True
    config.crop_attempts = 100  # random-resized-crop draws: NVIDIA's PyTorch 100, MXNet 10
    # The input normalization, per RGB channel on the 0..255 scale: (x - mean) / std.
    config.mean_rgb = MEAN_RGB
    config.std_rgb = STD_RGB
    config.precision = ""  # fp32 | tf32 | bf16 | fp16 (fp16 uses dynamic loss scaling)
    config.model = ml_collections.ConfigDict()
    config.model.conv_init = "fan_out"  # fan_in | fan_out (Kaiming-normal) | mxnet (Xavier)
    config.model.zero_init_last_bn = True
    config.model.zero_var_last_bn = False  # running variance 0 in each block's last BN
    # 'symmetric': PyTorch's explicit padding; 'same': TensorFlow's, one more row and column
    # at the bottom and right of the stride-2 layers (weights converted from NVIDIA's TF);
    # 'symmetric_same_pool': NVIDIA's TF code of 2019 (see models/resnet.py PADDINGS).
    config.model.padding = "symmetric"
    config.model.bn_momentum = 0.0
    config.model.bn_epsilon = 0.0
    # False: BN statistics per device, as NVIDIA trains. True: over the global batch.
    config.model.sync_batch_norm = False
    # An exponential moving average of the weights and BN statistics (NVIDIA's --use-ema
    # DECAY), kept beside the model, checkpointed and evaluated with it. 0: off.
    config.ema_decay = 0.0
    # mode=eval: evaluate the checkpoint's moving average instead of its weights.
    config.eval_ema = False

    # --- batch plumbing ----------------------------------------------------------------------
    # The global batch wins over per_device_batch_size when set (> 0).
    config.global_batch_size = 0
    config.eval_per_device_batch_size = 0  # 0: same as per_device_batch_size
    # Images per optimizer step (NVIDIA's --optimizer-batch-size): a multiple k of the
    # global batch accumulates the gradients of k batches per update. 0: the global batch.
    config.optimizer_batch_size = 0

    # --- numerics safeguards -----------------------------------------------------------------
    config.loss_scale_init = 2.0**16
    config.loss_scale_growth_interval = 2000
    config.loss_scale_max = 2.0**24  # the ceiling of the dynamic scale (NVIDIA's apex: 2**24)
    # Steps in a row with non-finite gradients that stop an fp16 run (bf16/fp32: the first).
    config.max_nonfinite_steps = 20
    # The data order, crops and flips always follow `seed` (a restart replays them);
    # deterministic=True also makes XLA's GPU kernels deterministic (somewhat slower).
    config.deterministic = False
    # The share of each GPU's memory JAX takes at start-up; the rest is left to DALI's GPU
    # decoders. 0: 0.70 with data.backend=dali_gpu, 0.90 otherwise. XLA_CLIENT_MEM_FRACTION (or
    # XLA_PYTHON_CLIENT_MEM_FRACTION, _PREALLOCATE, _ALLOCATOR) in the environment wins.
    config.gpu_memory_fraction = 0.0

    # --- data --------------------------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    config.data.root = ""  # ImageNet layout: ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG
    config.data.backend = "dali_gpu"  # dali_gpu | dali_cpu | synthetic
    # folder | recordio (ROOT/train.rec, val.rec) | tfrecord (ROOT/train-*-of-*,
    # validation-*-of-*) | webdataset (ROOT/train/*.tar, val/*.tar): docs/data.md
    config.data.format = "folder"
    # The label TFRecord files give class 0: 1 in TF-slim's (0 is its background class).
    config.data.tfrecord_first_label = 1
    config.data.num_threads = 0  # DALI CPU threads per pipeline; 0: chosen from the core count
    config.data.synthetic_train_images = 1281167  # epoch length for the synthetic backend
    # Image files that are truncated or not images at all (checked at start-up): False stops
    # with the first one's name; True leaves them out and logs how many.
    config.data.skip_bad_images = False

    # --- bookkeeping -------------------------------------------------------------------------
    config.log_every_steps = 100
    # False: metrics go to the log and metrics.jsonl only; TensorFlow (which clu's TensorBoard
    # writer needs) is then never loaded, which saves seconds at start and exit.
    config.tensorboard = True
    config.eval_every_epochs = 1
    # Evaluate after epoch e (counted from 1) when e >= offset and (e - offset) is a multiple of
    # eval_every_epochs, and after the last step. NVIDIA's MLPerf EVAL_OFFSET counts epochs
    # from 0: its EVAL_OFFSET=2, EVAL_PERIOD=4 are eval_offset_epochs=3, eval_every_epochs=4.
    config.eval_offset_epochs = 0
    # Stop after the evaluation whose top-1 reaches this fraction (e.g. 0.759, MLPerf's), with
    # a checkpoint and the time to it logged and recorded. 0: train to the last epoch.
    config.target_top1 = 0.0
    config.checkpoint_every_epochs = 1
    config.keep_checkpoints = 3
    # eval: a checkpoint step folder or workdir; default: --workdir. 'best': the workdir's
    # best evaluation (WORKDIR/best, kept apart from the rotation of the latest checkpoints).
    config.checkpoint = ""
    # train: start from these weights (fine-tuning; e.g. from python -m resnet_jax.convert).
    # A workdir that already has a checkpoint resumes from it instead.
    config.init_checkpoint = ""
    return config


def recipe(name: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """The config of configs/<name>.py (a recipe file's name, or an arch name or alias), with an
    optional preset."""
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    if not os.path.isfile(path):
        path = os.path.join(CONFIGS_DIR, f"{models.canonical(name, flag='recipe')}.py")
    spec = importlib.util.spec_from_file_location(f"resnet_jax_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def apply_epoch_preset(config: ml_collections.ConfigDict, preset: str | None,
                       allowed: tuple[str, ...], recipe: str) -> ml_collections.ConfigDict:
    """Sets the epochs a recipe preset names ('90' by default); '250' adds mixup 0.2.

    NVIDIA trains its 250-epoch recipes with mixup (alpha 0.2), the shorter ones without.
    """
    preset = preset or "90"
    if preset not in allowed:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(allowed)}: "
                         f"use e.g. configs/{recipe}.py:{allowed[-1]}")
    config.num_epochs = int(preset)
    config.mixup_alpha = 0.2 if preset == "250" else 0.0
    return config


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{name} {value!r} is not supported: use one of {', '.join(allowed)} "
            f"(--config.{name}=...)"
        )


def validate(config: ml_collections.ConfigDict) -> None:
    """Stops at start-up, with one line naming the value and the fix, on a bad config."""
    config.arch = models.canonical(config.arch)  # NVIDIA's names become the project's
    _choice("precision", config.precision, PRECISIONS)
    _choice("data.backend", config.data.backend, BACKENDS)
    _choice("data.format", config.data.format, FORMATS)
    _choice("mode", config.mode, MODES)
    _choice("lr_schedule_unit", config.lr_schedule_unit, SCHEDULE_UNITS)
    _choice("weight_decay_rule", config.weight_decay_rule, WEIGHT_DECAY_RULES)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("lr_schedule", config.lr_schedule, SCHEDULES)
    _choice("model.conv_init", config.model.conv_init, CONV_INITS)
    _choice("model.padding", config.model.padding, PADDINGS)
    for name in ("mean_rgb", "std_rgb"):
        value = config[name]
        if (len(value) != 3 or not all(isinstance(v, int | float) for v in value)
                or (name == "std_rgb" and min(value) <= 0)):
            raise ConfigError(f"{name}={value!r} must be 3 numbers, one per RGB channel on the "
                              f"0..255 scale{', all positive' if name == 'std_rgb' else ''} "
                              f"(--config.{name}='(R, G, B)')")
    for name in ("num_classes", "image_size", "eval_image_size", "eval_resize_size",
                 "crop_attempts",
                 "num_epochs", "per_device_batch_size", "base_learning_rate",
                 "model.bn_momentum", "model.bn_epsilon"):
        value = config.model[name[6:]] if name.startswith("model.") else config[name]
        if value <= 0:
            raise ConfigError(f"{name}={value} must be positive (--config.{name}=N)")
    if config.eval_resize_size < config.eval_image_size:
        raise ConfigError(
            f"eval_resize_size={config.eval_resize_size} is smaller than "
            f"eval_image_size={config.eval_image_size}: the center crop must fit in the "
            "resized image"
        )
    if not 1 <= config.loss_scale_init <= config.loss_scale_max:
        raise ConfigError(f"loss_scale_init={config.loss_scale_init:g} must be in [1, "
                          f"loss_scale_max={config.loss_scale_max:g}]: lower "
                          "--config.loss_scale_init or raise --config.loss_scale_max")
    if not 0 <= config.gpu_memory_fraction < 1:
        raise ConfigError(f"gpu_memory_fraction={config.gpu_memory_fraction} must be in [0, 1): "
                          "the share of each GPU JAX takes, 0 for the default "
                          "(--config.gpu_memory_fraction=0.8)")
    if not 0 <= config.ema_decay < 1:
        raise ConfigError(f"ema_decay={config.ema_decay} must be in [0, 1): 0 turns the EMA "
                          "off, NVIDIA's runs use e.g. 0.9999 (--config.ema_decay=0.9999)")
    if not 0 <= config.target_top1 <= 1:
        raise ConfigError(f"target_top1={config.target_top1} must be a fraction in [0, 1]: 0 "
                          "trains to the last epoch, MLPerf's target is 0.759 "
                          "(--config.target_top1=0.759)")
    if config.eval_offset_epochs < 0:
        raise ConfigError(f"eval_offset_epochs={config.eval_offset_epochs} must be 0 or more "
                          "(--config.eval_offset_epochs=N)")
    if not 0 <= config.warmup_epochs < config.num_epochs:
        raise ConfigError(
            f"warmup_epochs={config.warmup_epochs} must be in [0, num_epochs={config.num_epochs})"
        )
    if config.data.backend != "synthetic":
        if not config.data.root:
            raise ConfigError(
                "data.root is not set: pass --config.data.root=DIR with DIR/train/<class>/*.JPEG "
                "and DIR/val/<class>/*.JPEG, or --config.data.backend=synthetic for a benchmark"
            )
        if not os.path.isdir(config.data.root):
            raise ConfigError(
                f"data.root {config.data.root!r} does not exist: pass --config.data.root=DIR "
                "with DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG"
            )


def check_workdir(workdir: str) -> None:
    """Stops at start-up when training could not write to `workdir`; creates nothing."""
    path = os.path.abspath(workdir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == path else f"is under the file {existing!r}"
        raise ConfigError(f"--workdir {workdir!r} {where}, not a folder: pass --workdir=DIR "
                          "of a new folder or of an earlier run's folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir!r} is not writable ({existing!r} does not allow "
                          "writing): pass --workdir=DIR in a folder you can write to")


def global_batch_size(config: ml_collections.ConfigDict, num_devices: int) -> int:
    """The training batch over all devices: global_batch_size if set, else per device x devices."""
    batch = config.global_batch_size or config.per_device_batch_size * num_devices
    if batch % num_devices:
        raise ConfigError(
            f"global_batch_size={batch} is not divisible by the {num_devices} devices: "
            f"use a multiple of {num_devices}"
        )
    return batch


def accumulation_steps(config: ml_collections.ConfigDict, num_devices: int) -> int:
    """Batches whose gradients are summed per optimizer step (1: no accumulation)."""
    batch = global_batch_size(config, num_devices)
    wanted = config.optimizer_batch_size or batch
    if wanted < batch or wanted % batch:
        raise ConfigError(
            f"optimizer_batch_size={wanted} is not a multiple of the global batch {batch} "
            f"({num_devices} devices): use a multiple of {batch}, or 0 for no accumulation")
    return wanted // batch


def optimizer_batch_size(config: ml_collections.ConfigDict, num_devices: int) -> int:
    """Images per optimizer step: the global batch times the accumulation steps."""
    return global_batch_size(config, num_devices) * accumulation_steps(config, num_devices)


def eval_global_batch_size(config: ml_collections.ConfigDict, num_devices: int) -> int:
    """The evaluation batch over all devices."""
    per_device = config.eval_per_device_batch_size or (
        global_batch_size(config, num_devices) // num_devices
    )
    return per_device * num_devices


def learning_rate(config: ml_collections.ConfigDict, batch: int) -> float:
    """Peak learning rate: base_learning_rate is for learning_rate_batch_size images (256),
    scaled linearly to `batch`; with learning_rate_batch_size 0 it is the peak as it is."""
    if not config.learning_rate_batch_size:
        return config.base_learning_rate
    return config.base_learning_rate * batch / config.learning_rate_batch_size
