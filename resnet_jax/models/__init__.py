"""Models by name: `create(name, num_classes=..., dtype=...)`.

The same names are used by configs (`config.arch`), the command line and the
checkpoint metadata.
"""

import functools

import jax.numpy as jnp

from resnet_jax.errors import ConfigError
from resnet_jax.models.resnet import ResNet

_REGISTRY = {
    "resnet50_v15": functools.partial(
        ResNet, stage_sizes=(3, 4, 6, 3), stage_widths=(64, 128, 256, 512), expansion=4
    ),
    "resnext101_32x4d": functools.partial(
        ResNet,
        stage_sizes=(3, 4, 23, 3),
        stage_widths=(128, 256, 512, 1024),
        expansion=2,
        groups=32,
    ),
    "se_resnext101_32x4d": functools.partial(
        ResNet,
        stage_sizes=(3, 4, 23, 3),
        stage_widths=(128, 256, 512, 1024),
        expansion=2,
        groups=32,
        se_reduction=16,
    ),
    # A few thousand parameters with the same structure: tests and smoke runs.
    "resnet_tiny": functools.partial(
        ResNet, stage_sizes=(1, 1, 1, 1), stage_widths=(4, 8, 8, 16), expansion=4, stem_width=8
    ),
}


def names() -> list[str]:
    """The registered architecture names."""
    return sorted(_REGISTRY)


def create(name: str, *, num_classes: int = 1000, dtype=jnp.float32, **kwargs) -> ResNet:
    """Builds the Flax module registered as `name`.

    Apply it with `module.apply(variables, images_nhwc, train=...)`; in
    training, pass `mutable=['batch_stats']`.
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"arch {name!r} is not a known model: use one of {', '.join(names())} "
            "(--config.arch=NAME)"
        )
    return _REGISTRY[name](num_classes=num_classes, dtype=dtype, **kwargs)
