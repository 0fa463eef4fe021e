"""NVIDIA's optimizers: masked weight decay, SGD with momentum, warmup + cosine (PyTorch's and
MXNet's variants)."""

import jax
import jax.numpy as jnp
import optax

from resnet_jax.config import SCHEDULE_UNITS, WEIGHT_DECAY_RULES
from resnet_jax.models.naming import torch_key


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int):
    """Learning rate per step: linear warmup to `peak`, then cosine decay to 0.

    Warmup gives peak*(s+1)/warmup_steps at step s (no step runs at 0, as in
    NVIDIA's schedule); the cosine runs from `peak` at the end of warmup to 0
    at `total_steps`.
    """
    return schedule(peak, warmup_epochs=warmup_steps, num_epochs=total_steps, steps_per_epoch=1)


def schedule(peak: float, *, warmup_epochs: int, num_epochs: int, steps_per_epoch: int,
             unit: str = "step", warmup_from_zero: bool = False):
    """Linear warmup over `warmup_epochs`, then cosine decay, in the unit NVIDIA's code uses.

    unit 'step' (NVIDIA's MXNet fit.py, `cosine_schedule(epoch + i/epoch_size)`):
    with t = step / steps_per_epoch in epochs, W warmup and E total epochs,
    lr = peak*t/W in warmup and peak*(1 + cos(pi*(t - W)/(E - W)))/2 after,
    reaching 0 at the last step. unit 'epoch' (NVIDIA's PyTorch
    `lr_cosine_policy`): t is the whole epoch e = step // steps_per_epoch,
    so the rate holds for an epoch and never reaches 0.

    Warmup starts at peak*(t+u)/W, u = one unit (`warmup_from_zero=False`:
    PyTorch's (e+1)/W, so no step runs at 0), or at 0 (MXNet's x/W).
    """
    if unit not in SCHEDULE_UNITS:
        raise ValueError(f"schedule unit {unit!r}: use one of {', '.join(SCHEDULE_UNITS)}")
    per_unit = steps_per_epoch if unit == "step" else 1
    warmup, total = warmup_epochs * per_unit, num_epochs * per_unit

    def rate(step):
        step = jnp.asarray(step, jnp.float32)
        t = step if unit == "step" else jnp.floor(step / steps_per_epoch)
        warm = peak * (t + (0.0 if warmup_from_zero else 1.0)) / max(warmup, 1)
        progress = jnp.clip((t - warmup) / max(total - warmup, 1), 0, 1)
        cosine = 0.5 * peak * (1 + jnp.cos(jnp.pi * progress))
        return jnp.where(t < warmup, warm, cosine)

    return rate


def decay_mask(params, rule: str = "kernels"):
    """Which parameters get weight decay.

    'kernels': convolution and dense kernels; not BN scale/bias, not biases.
    'not_bn': NVIDIA's PyTorch rule (`optimizers.py`, bn_weight_decay=False):
    every parameter whose PyTorch name lacks "bn", so the downsample BN
    (`downsample.1.*`), the classifier bias and the SE biases are decayed too.
    'all': every parameter, BN scale and bias included: what NVIDIA's MXNet
    fit.py does as written (it passes `wd` to the optimizer and sets no
    `wd_mult`), though that code's README says BN gamma/beta are not decayed.
    """
    if rule not in WEIGHT_DECAY_RULES:
        raise ValueError(f"weight decay rule {rule!r}: use one of "
                         f"{', '.join(WEIGHT_DECAY_RULES)}")
    if rule == "all":
        return jax.tree.map(lambda _: True, params)
    if rule == "kernels":
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "bn" not in torch_key(tuple(k.key for k in path), "params"), params)


def create(learning_rate, *, momentum: float, nesterov: bool, weight_decay: float,
           weight_decay_rule: str = "kernels"):
    """SGD as PyTorch computes it with L2 weight decay added to the gradient.

    torch.optim.SGD adds wd*param to the gradient before the momentum buffer,
    so the decay goes first in the chain, then momentum, then the rate.
    `weight_decay_rule` picks the decayed parameters (see `decay_mask`).
    """
    return optax.chain(
        optax.add_decayed_weights(
            weight_decay, mask=lambda params: decay_mask(params, weight_decay_rule)),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )
