"""Compute precision and fp16 dynamic loss scaling.

Parameters always stay fp32; `compute_dtype` is what convolutions and matmuls
run in. fp16 needs loss scaling: the loss is multiplied by a scale before the
backward pass so that small gradients do not flush to zero, and divided out
afterwards. A step whose gradients overflow is skipped and the scale halved;
after `growth_interval` finite steps in a row it doubles, up to a ceiling.
"""

import jax
import jax.numpy as jnp

_DTYPES = {"fp32": jnp.float32, "tf32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}
PRECISIONS = tuple(_DTYPES)


def compute_dtype(precision: str):
    """The dtype activations are computed in."""
    return _DTYPES[precision]


def image_dtype(precision: str):
    """The dtype the data pipeline delivers images in (DALI has no bfloat16)."""
    return jnp.float32 if compute_dtype(precision) == jnp.float32 else jnp.float16


def matmul_precision(precision: str) -> str | None:
    """jax_default_matmul_precision for an fp32 run; None (XLA's default) for fp16/bf16.

    On Ampere and newer GPUs XLA computes fp32 dots and convolutions in TF32 by
    default, so `fp32` asks for full precision and `tf32` for TF32 explicitly.
    """
    return {"fp32": "highest", "tf32": "tensorfloat32"}.get(precision)


def all_finite(tree) -> jax.Array:
    """True when every element of every array in `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all()


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
