"""The training state: everything a train step needs, as one pytree."""

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """Parameters, BN statistics, optimizer state, fp16 loss scale and step counter."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    loss_scale: jax.Array
    good_steps: jax.Array  # finite steps in a row since the loss scale last changed


def init_variables(model, rng, image_size: int):
    """Fresh {'params', 'batch_stats'} for `model` at `image_size`."""
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return model.init(rng, dummy, train=False)


def create(model, tx, rng, *, image_size: int, loss_scale: float) -> TrainState:
    """A step-0 state; call under jax.jit with out_shardings to place it on the devices."""
    variables = init_variables(model, rng, image_size)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        loss_scale=jnp.asarray(loss_scale, jnp.float32),
        good_steps=jnp.zeros((), jnp.int32),
    )


def abstract_variables(arch: str, num_classes: int):
    """Shapes and dtypes of `models.create(arch, num_classes=...)`'s variables (nothing runs)."""
    from resnet_jax import models

    model = models.create(arch, num_classes=num_classes)
    return jax.eval_shape(functools.partial(init_variables, model, image_size=64),
                          jax.random.key(0))
