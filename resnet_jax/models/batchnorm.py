"""BatchNorm, optionally with the ReLU after it, with a hand-written backward pass.

The variables and the forward computation are flax.linen.BatchNorm's (params
'scale' and 'bias', batch_stats 'mean' and 'var'; statistics in float32 with
its fast variance E[x^2] - E[x]^2; the running averages' update), so
checkpoints, conversions and results are the same. What differs is the
training step's backward pass: for y = relu(scale * xhat + bias), autodiff
of that formula gives XLA about seven kernels per layer; written out it is
one reduction pass over (dy, y, x), for sum(g) and sum(g * xhat) with
g = dy where y > 0, and one elementwise pass for

    dx = scale * rsqrt(var + eps) / n * (n * g - sum(g) - xhat * sum(g * xhat)),

the ReLU's mask read back from its output, which the next convolution's
backward keeps anyway. With `axis_name` (BN statistics over several
devices) autodiff is used, as in flax.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


def _sums(*arrays):
    """Each array summed over all but its last axis, in one reduction (stacked, so that XLA
    gives all of them one kernel rather than one final kernel each)."""
    axes = tuple(range(1, arrays[0].ndim))
    return jnp.stack(arrays).sum(axes)


def _stats(x):
    """flax's statistics: float32 mean and biased variance over all but the last axis."""
    x = x.astype(jnp.float32)
    n = x.size // x.shape[-1]
    mean, mean2 = _sums(x, lax.square(x)) / n
    return mean, jnp.maximum(0.0, mean2 - lax.square(mean))


def _normalize(x, mean, var, scale, bias, epsilon: float, dtype, relu: bool):
    """flax's _normalize, operation for operation, then the ReLU."""
    y = x - mean
    mul = lax.rsqrt(var + epsilon) * scale
    y = jnp.asarray(y * mul + bias, dtype)
    return nn.relu(y) if relu else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _train_norm(x, scale, bias, epsilon, dtype, relu):
    mean, var = _stats(x)
    return _normalize(x, mean, var, scale, bias, epsilon, dtype, relu)


def _train_norm_fwd(x, scale, bias, epsilon, dtype, relu):
    mean, var = _stats(x)
    y = _normalize(x, mean, var, scale, bias, epsilon, dtype, relu)
    return y, (x, y if relu else None, mean, var, scale)


def _train_norm_bwd(epsilon, dtype, relu, residuals, dy):
    x, y, mean, var, scale = residuals
    n = x.size // x.shape[-1]
    g = dy.astype(jnp.float32)
    if relu:
        g = jnp.where(y > 0, g, 0.0)
    rstd = lax.rsqrt(var + epsilon)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    dbias, dscale = _sums(g, g * xhat)
    dx = (scale * rstd / n) * (n * g - dbias - xhat * dscale)
    return dx.astype(x.dtype), dscale, dbias


_train_norm.defvjp(_train_norm_fwd, _train_norm_bwd)


class BatchNorm(nn.Module):
    """flax.linen.BatchNorm over the last axis, then a ReLU when `relu`."""

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    relu: bool = False

    @nn.compact
    def __call__(self, x):
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        if self.use_running_average:
            return _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, dtype,
                              self.relu)
        if self.axis_name is None or self.is_initializing():
            mean, var = _stats(lax.stop_gradient(x))  # the same reductions as the step's
            y = _train_norm(x, scale, bias, self.epsilon, dtype, self.relu)
        else:  # statistics over the devices of `axis_name`, as flax computes them
            xf = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            both = lax.pmean(jnp.stack([xf.mean(axes), lax.square(xf).mean(axes)]),
                             self.axis_name)
            mean, var = both[0], jnp.maximum(0.0, both[1] - lax.square(both[0]))
            y = _normalize(x, mean, var, scale, bias, self.epsilon, dtype, self.relu)
            mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
