"""NVIDIA's optimizer: masked weight decay, SGD with momentum, warmup + cosine."""

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int):
    """Learning rate per step: linear warmup to `peak`, then cosine decay to 0.

    Warmup gives peak*(s+1)/warmup_steps at step s (no step runs at 0, as in
    NVIDIA's schedule); the cosine runs from `peak` at the end of warmup to 0
    at `total_steps`.
    """

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (step + 1) / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0, 1)
        cosine = 0.5 * peak * (1 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def decay_mask(params):
    """True for convolution and dense kernels; False for BN scale/bias and all biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def create(schedule, *, momentum: float, nesterov: bool, weight_decay: float):
    """SGD as PyTorch computes it with L2 weight decay added to the gradient.

    torch.optim.SGD adds wd*param to the gradient before the momentum buffer,
    so the decay goes first in the chain, then momentum, then the rate.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
    )
