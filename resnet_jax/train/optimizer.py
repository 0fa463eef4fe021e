"""NVIDIA's optimizers: masked weight decay, SGD with momentum (PyTorch's and MXNet's forms),
MLPerf's LARS; warmup + cosine (PyTorch's and MXNet's variants) or polynomial decay."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from resnet_jax.config import OPTIMIZERS, SCHEDULE_UNITS, SCHEDULES, WEIGHT_DECAY_RULES
from resnet_jax.models.naming import torch_key


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int):
    """Learning rate per step: linear warmup to `peak`, then cosine decay towards 0.

    Warmup gives peak*(s+1)/warmup_steps at step s (no step runs at 0, as in
    NVIDIA's schedule); the cosine runs from `peak` at the end of warmup to 0
    at step `total_steps`, one past the last step a run of `total_steps` steps
    takes (0..total_steps-1): its last step runs at a small rate, not at 0.
    """
    return schedule(peak, warmup_epochs=warmup_steps, num_epochs=total_steps, steps_per_epoch=1)


def schedule(peak: float, *, warmup_epochs: int, num_epochs: int, steps_per_epoch: int,
             unit: str = "step", warmup_from_zero: bool = False, decay: str = "cosine",
             end: float = 0.0, power: float = 2.0):
    """Linear warmup over `warmup_epochs`, then decay, in the unit NVIDIA's code uses.

    unit 'step' (NVIDIA's MXNet fit.py, `cosine_schedule(epoch + i/epoch_size)`):
    with t = step / steps_per_epoch in epochs, W warmup and E total epochs,
    lr = peak*t/W in warmup and peak*(1 + cos(pi*(t - W)/(E - W)))/2 after.
    It would reach 0 at t = E, one step past the last one a run takes (its
    steps are 0..E*steps_per_epoch-1): neither NVIDIA's formula nor this one
    runs a step at 0. unit 'epoch' (NVIDIA's PyTorch `lr_cosine_policy`): t is
    the whole epoch e = step // steps_per_epoch, so the rate holds for an
    epoch and never reaches 0.

    Warmup starts at peak*(t+u)/W, u = one unit (`warmup_from_zero=False`:
    PyTorch's (e+1)/W, so no step runs at 0), or at 0 (MXNet's x/W).

    `decay` 'polynomial' (MLPerf's LARS schedule, the form of MXNet's
    PolyScheduler): end + (peak - end)*(1 - (t - W)/(E - W))**power after
    warmup. The cosine also ends at `end` (0 in NVIDIA's recipes):
    end + (peak - end)*(1 + cos(pi*(t - W)/(E - W)))/2.
    """
    if unit not in SCHEDULE_UNITS:
        raise ValueError(f"schedule unit {unit!r}: use one of {', '.join(SCHEDULE_UNITS)}")
    if decay not in SCHEDULES:
        raise ValueError(f"schedule {decay!r}: use one of {', '.join(SCHEDULES)}")
    per_unit = steps_per_epoch if unit == "step" else 1
    warmup, total = warmup_epochs * per_unit, num_epochs * per_unit

    def rate(step):
        step = jnp.asarray(step, jnp.float32)
        t = step if unit == "step" else jnp.floor(step / steps_per_epoch)
        warm = peak * (t + (0.0 if warmup_from_zero else 1.0)) / max(warmup, 1)
        progress = jnp.clip((t - warmup) / max(total - warmup, 1), 0, 1)
        if decay == "cosine":
            shape = 0.5 * (1 + jnp.cos(jnp.pi * progress))
        else:
            shape = (1 - progress) ** power
        return jnp.where(t < warmup, warm, end + (peak - end) * shape)

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
    'kernels_and_fc_bias': the kernels and the classifier's bias, NVIDIA's
    MLPerf LARS rule (SGDwFASTLARS.set_wd_mult: names ending in `_weight`, or
    with 'fc' and 'bias'); BN scale and bias and other biases are not decayed.
    """
    if rule not in WEIGHT_DECAY_RULES:
        raise ValueError(f"weight decay rule {rule!r}: use one of "
                         f"{', '.join(WEIGHT_DECAY_RULES)}")
    if rule == "all":
        return jax.tree.map(lambda _: True, params)
    if rule in ("kernels", "kernels_and_fc_bias"):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: _is_kernel(path) or (
                rule == "kernels_and_fc_bias" and _keys(path) == ("fc", "bias")), params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "bn" not in torch_key(tuple(k.key for k in path), "params"), params)


def _keys(path) -> tuple:
    return tuple(getattr(k, "key", None) for k in path)


def _is_kernel(path) -> bool:
    return getattr(path[-1], "key", None) == "kernel"


def create(learning_rate, *, momentum: float, nesterov: bool, weight_decay: float,
           weight_decay_rule: str = "kernels", kind: str = "sgd", lars_eta: float = 0.001,
           lars_eps: float = 0.0):
    """The optimizer `kind` with L2 weight decay added to the gradient (d = g + wd*w on the
    parameters `weight_decay_rule` picks, see `decay_mask`), lr = `learning_rate(step)`:

    'sgd' (torch.optim.SGD): buf = m*buf + d; w -= lr*buf. The rate multiplies
    the momentum buffer, so a change of rate applies at once to all of it.
    'sgd_mxnet' (MXNet's sgd_mom_update): v = m*v - lr*d; w += v. The rate is
    inside the buffer; the two differ whenever the rate changes (warmup).
    'lars' (NVIDIA's MLPerf SGDwFASTLARS): d scaled by the trust ratio
    eta*|w|/(|g| + wd*|w| + eps) (1 when a norm is 0) on conv and dense kernels
    (BN scale and bias and every bias skipped), then buf = m*buf + trust*d;
    w -= lr*buf (see `mlperf_lars`).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer {kind!r}: use one of {', '.join(OPTIMIZERS)}")
    def mask(params):
        return decay_mask(params, weight_decay_rule)

    if kind == "lars":
        return optax.chain(
            mlperf_lars(weight_decay, mask, eta=lars_eta, eps=lars_eps),
            optax.trace(decay=momentum, nesterov=nesterov),
            optax.scale_by_learning_rate(learning_rate),
        )
    decay = optax.add_decayed_weights(weight_decay, mask=mask)
    if kind == "sgd_mxnet":
        return optax.chain(decay, optax.scale_by_learning_rate(learning_rate),
                           optax.trace(decay=momentum, nesterov=nesterov))
    return optax.chain(decay, optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


class _NoState(NamedTuple):
    pass


def mlperf_lars(weight_decay: float, decay_mask_fn, *, eta: float, eps: float = 0.0):
    """Weight decay and the LARS trust ratio as NVIDIA's MLPerf MXNet code computes them.

    For a kernel w with gradient g: trust = eta*|w| / (|g| + wd*|w| + eps), 1
    when |w| or |g| is 0 (SGDwFASTLARS._get_lars, multi_lars), and the update
    is trust*(g + wd*w). optax.lars differs: its ratio divides by |g + wd*w|.
    Other parameters (BN scale and bias, biases: names ending in gamma, beta
    or bias there) get g + wd*w with their own decay (`decay_mask_fn`) and no
    trust ratio. The rate comes after the momentum: SGDwFASTLARS keeps it
    inside MXNet's buffer but scales the momentum by lr_t/lr_(t-1) every step,
    which is the same as buf = m*buf + trust*d; w -= lr*buf.
    """

    def update(grads, state, params):
        decayed = decay_mask_fn(params)

        def one(path, g, w, decay):
            wd = weight_decay if decay else 0.0
            d = g + wd * w
            if not _is_kernel(path):
                return d
            w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
            trust = jnp.where((w_norm > 0) & (g_norm > 0),
                              eta * w_norm / (g_norm + wd * w_norm + eps), 1.0)
            return trust * d

        return jax.tree_util.tree_map_with_path(one, grads, params, decayed), state

    return optax.GradientTransformation(lambda params: _NoState(), update)
