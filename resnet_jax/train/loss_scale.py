"""fp16 dynamic loss scaling.

The loss is multiplied by a scale before the backward pass so that small
gradients do not flush to zero in fp16, and the gradients are divided by it
afterwards. A step whose gradients overflow is skipped and the scale halved;
after `growth_interval` finite steps in a row it doubles, up to a ceiling.
"""

import jax.numpy as jnp

# The largest loss scale: NVIDIA's apex caps its dynamic scale at 2**24 (max_loss_scale).
# Without a cap, a run whose gradients never overflow doubles the scale until it is
# infinite, and every step after that is non-finite.
MAX_LOSS_SCALE = 2.0**24


def update_loss_scale(scale, good_steps, finite, *, growth_interval: int, enabled: bool,
                      max_scale: float = MAX_LOSS_SCALE):
    """The next (scale, good_steps) after a step whose gradients were `finite` or not.

    The scale halves after a non-finite step (down to 1), and doubles after
    `growth_interval` finite steps in a row, up to `max_scale`.
    """
    if not enabled:
        return scale, good_steps
    grow = finite & (good_steps + 1 >= growth_interval)
    grown = jnp.minimum(scale * 2, max_scale)
    new_scale = jnp.where(finite, jnp.where(grow, grown, scale), jnp.maximum(scale / 2, 1.0))
    new_good = jnp.where(finite & ~grow, good_steps + 1, 0)
    return new_scale, new_good.astype(good_steps.dtype)
