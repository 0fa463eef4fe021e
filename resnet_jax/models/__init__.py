"""Models by name: `create(name, num_classes=..., dtype=...)`, or `build(config)`.

The same names are used by configs (`config.arch`), the command line and the
checkpoint metadata. Each arch is a set of keyword arguments of `ResNet`, so
`SPECS` is the one list of what exists. NVIDIA's scripts name the same
networks `resnet50`, `resnext101-32x4d` and `se-resnext101-32x4d`; those
names are accepted everywhere an arch is named and stand for the project's.
"""

import functools

import jax
import jax.numpy as jnp

from resnet_jax import precision
from resnet_jax.errors import ConfigError
from resnet_jax.models.resnet import ResNet
from resnet_jax.parallel import AXIS

_RESNEXT101_32X4D = dict(stage_sizes=(3, 4, 23, 3), stage_widths=(128, 256, 512, 1024),
                         expansion=2, groups=32)

SPECS = {
    "resnet50_v15": dict(stage_sizes=(3, 4, 6, 3), stage_widths=(64, 128, 256, 512),
                         expansion=4),
    "resnext101_32x4d": _RESNEXT101_32X4D,
    # NVIDIA's SE-ResNeXt101-32x4d: every SE gate has 16 hidden units, initialised as
    # nn.Linear (DeepLearningExamples ConvNets, image_classification/models/common.py,
    # SqueezeAndExcitation(in_channels, squeeze=16)). NVIDIA's published accuracy is this one's.
    "se_resnext101_32x4d": dict(_RESNEXT101_32X4D, se_hidden=16),
    # The SE paper's and timm's: channels/16 hidden units (timm's seresnext101_32x4d).
    "seresnext101_32x4d": dict(_RESNEXT101_32X4D, se_reduction=16),
    # A few thousand parameters with the same structure: tests and smoke runs.
    "resnet_tiny": dict(stage_sizes=(1, 1, 1, 1), stage_widths=(4, 8, 8, 16), expansion=4,
                        stem_width=8),
}

# NVIDIA ConvNets' --arch names (image_classification/models) for the same networks.
ALIASES = {
    "resnet50": "resnet50_v15",
    "resnext101-32x4d": "resnext101_32x4d",
    "se-resnext101-32x4d": "se_resnext101_32x4d",
}

# The ImageNet models (everything but the test model).
FULL_SIZE = ("resnet50_v15", "resnext101_32x4d", "se_resnext101_32x4d", "seresnext101_32x4d")


def names() -> list[str]:
    """The registered architecture names (aliases not included)."""
    return sorted(SPECS)


def canonical(name: str, *, flag: str = "--config.arch") -> str:
    """The project's name for `name` (itself or an alias); a one-line error for anything else."""
    if name in SPECS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    aliases = ", ".join(f"{alias} = {target}" for alias, target in ALIASES.items())
    raise ConfigError(f"arch {name!r} is not supported: use one of {', '.join(names())} "
                      f"or NVIDIA's names ({aliases}) ({flag}=NAME)")


def create(name: str, *, num_classes: int = 1000, dtype=jnp.float32, **kwargs) -> ResNet:
    """Builds the Flax module registered as `name` (or one of its aliases).

    Apply it with `module.apply(variables, images_nhwc, train=...)`; in
    training, pass `mutable=['batch_stats']`.
    """
    return ResNet(**SPECS[canonical(name)], num_classes=num_classes, dtype=dtype, **kwargs)


def options(config) -> dict:
    """What a checkpoint records of the model besides its arch: the ResNet keyword arguments
    that change what the weights compute (see `from_meta`)."""
    return {"padding": config.model.padding, "bn_epsilon": config.model.bn_epsilon}


def from_meta(meta: dict, *, dtype=jnp.float32) -> ResNet:
    """The inference model a checkpoint's metadata describes: its arch and classes, and
    the model options it records (older checkpoints have none: the defaults)."""
    return create(meta["arch"], num_classes=meta["num_classes"], dtype=dtype,
                  **meta.get("model_options", {}))


def build(config, *, train: bool = True) -> ResNet:
    """The configured model (config.arch, config.model.*) in the configured compute precision.

    With `model.sync_batch_norm` the BN layers of the training model reduce
    over the mesh axis 'data'; the evaluation model (`train=False`) never does.
    """
    sync = config.model.sync_batch_norm and train
    return create(
        config.arch, num_classes=config.num_classes,
        dtype=precision.compute_dtype(config.precision),
        conv_init=config.model.conv_init, zero_init_last_bn=config.model.zero_init_last_bn,
        zero_var_last_bn=config.model.zero_var_last_bn, padding=config.model.padding,
        bn_momentum=config.model.bn_momentum, bn_epsilon=config.model.bn_epsilon,
        bn_axis_name=AXIS if sync else None,
    )


def init_variables(model, rng, image_size: int):
    """Fresh {'params', 'batch_stats'} for `model` at `image_size`.

    A model with `zero_var_last_bn` gets running variance 0 in each block's
    last BN (bn3), as NVIDIA's MXNet ResNet initialises it.
    """
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init(rng, dummy, train=False)
    if getattr(model, "zero_var_last_bn", False):
        stats = dict(variables["batch_stats"])
        for name, block in stats.items():
            if "bn3" in block:
                stats[name] = {**block, "bn3": {**block["bn3"],
                                                "var": jnp.zeros_like(block["bn3"]["var"])}}
        variables = {**variables, "batch_stats": stats}
    return variables


def abstract_variables(arch: str, num_classes: int):
    """Shapes and dtypes of `models.create(arch, num_classes=...)`'s variables (nothing runs)."""
    model = create(arch, num_classes=num_classes)
    return jax.eval_shape(functools.partial(init_variables, model, image_size=64),
                          jax.random.key(0))
