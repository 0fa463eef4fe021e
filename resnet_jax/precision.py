"""The dtype policy of a precision name (fp32 | tf32 | bf16 | fp16): a leaf, used by the
models, the data pipelines, the config and the train step.

Parameters always stay fp32; `compute_dtype` is what convolutions and matmuls
run in, `image_dtype` what the data pipeline delivers. fp16's loss scaling is
training's business: resnet_jax/train/loss_scale.py.
"""

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
