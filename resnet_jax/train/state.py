"""The training state: everything a train step needs, as one pytree."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from resnet_jax.models import init_variables


@flax.struct.dataclass
class TrainState:
    """Parameters, BN statistics, optimizer state, fp16 loss scale, step counter, and the
    exponential moving average of the weights ({'params', 'batch_stats'}; None: off)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    loss_scale: jax.Array
    good_steps: jax.Array  # finite steps in a row since the loss scale last changed
    ema: Any = None


def create(model, tx, rng, *, image_size: int, loss_scale: float,
           ema: bool = False) -> TrainState:
    """A step-0 state; call under jax.jit with out_shardings to place it on the devices.

    With `ema` the moving average starts as a copy of the initial weights.
    """
    variables = init_variables(model, rng, image_size)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        loss_scale=jnp.asarray(loss_scale, jnp.float32),
        good_steps=jnp.zeros((), jnp.int32),
        ema=ema_start(params, variables["batch_stats"]) if ema else None,
    )


def ema_start(params, batch_stats):
    """The moving average as it starts: copies of the weights and BN statistics (copies, so
    that no two leaves of the state share a buffer)."""
    return jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})


def ema_decay(decay: float, step):
    """NVIDIA's EMA rate after update number `step` (0-based): min(decay, (1+t)/(10+t)).

    (ConvNets image_classification/models/common.py, EMA.__call__, called with
    epoch*steps_per_epoch + i after every optimizer step.) Early on the rate
    is small, so the average follows the fast-moving first weights.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema, params, batch_stats, decay: float, step):
    """mu*ema + (1-mu)*new for every weight and BN statistic, mu = ema_decay(decay, step)."""
    mu = ema_decay(decay, step)
    new = {"params": params, "batch_stats": batch_stats}
    return jax.tree.map(lambda e, n: mu * e + (1.0 - mu) * n, ema, new)
