"""Multiply-accumulates of a forward pass, counted from the traced program (no compilation).

Every convolution and matrix product in the jaxpr of `model.apply` counts
(output elements x kernel elements per output); elementwise work (BN, ReLU,
pooling, the SE gate's sigmoid) is left out, as the published GMAC figures do.
"""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np


def _eqn_macs(eqn) -> int:
    if eqn.primitive.name == "conv_general_dilated":
        lhs, rhs = (v.aval for v in eqn.invars)
        out = eqn.outvars[0].aval
        dims = eqn.params["dimension_numbers"]
        # Kernel elements per output: spatial taps x input channels per group.
        kernel_in = rhs.shape[dims.rhs_spec[1]]
        taps = int(np.prod([rhs.shape[d] for d in dims.rhs_spec[2:]]))
        return int(np.prod(out.shape)) * kernel_in * taps
    if eqn.primitive.name == "dot_general":
        lhs = eqn.invars[0].aval
        (contract, _), _ = eqn.params["dimension_numbers"]
        out = eqn.outvars[0].aval
        return int(np.prod(out.shape)) * int(np.prod([lhs.shape[d] for d in contract]))
    return 0


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _jaxpr_macs(sub)
    return total


def forward_macs(model, image_size: int, batch: int = 1) -> int:
    """Multiply-accumulates of one eval-mode forward pass over `batch` images."""
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                           train=False))
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return _jaxpr_macs(closed.jaxpr)
