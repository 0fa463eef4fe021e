"""NVIDIA's schedule and optimizer: warmup + cosine per step, masked weight decay, SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.train import optimizer


def test_schedule_at_start_end_of_warmup_middle_and_end():
    peak, warmup, total = 2.048, 100, 1100
    lr = optimizer.warmup_cosine(peak, warmup, total)
    assert float(lr(0)) == pytest.approx(peak / warmup)
    assert float(lr(warmup - 1)) == pytest.approx(peak)
    assert float(lr(warmup)) == pytest.approx(peak)
    assert float(lr(warmup + 500)) == pytest.approx(peak / 2, rel=1e-5)
    assert float(lr(total)) == pytest.approx(0, abs=1e-7)
    values = np.array([float(lr(s)) for s in range(warmup, total + 1, 50)])
    assert np.all(np.diff(values) < 0)


def test_weight_decay_only_on_conv_and_dense_kernels():
    model = models.create("resnet_tiny", num_classes=10, se_reduction=4)
    # The mask follows the names alone: the shapes of the variables, nothing computed.
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                               train=False))["params"]
    flat = jax.tree_util.tree_flatten_with_path(optimizer.decay_mask(params))[0]
    decayed = {jax.tree_util.keystr(p) for p, v in flat if v}
    kept = {jax.tree_util.keystr(p) for p, v in flat if not v}
    assert "['fc']['kernel']" in decayed and "['conv1']['kernel']" in decayed
    assert "['layer1_0']['se']['reduce']['kernel']" in decayed
    assert "['fc']['bias']" in kept and "['layer1_0']['se']['reduce']['bias']" in kept
    assert "['bn1']['scale']" in kept and "['layer1_0']['bn3']['bias']" in kept
    assert all(k.endswith("['kernel']") for k in decayed)
    assert not any(k.endswith("['kernel']") for k in kept)


def test_sgd_matches_pytorch_update_rule():
    # torch.optim.SGD(momentum=m, weight_decay=wd): d = g + wd*p; buf = m*buf + d; p -= lr*buf
    lr, m, wd = 0.1, 0.875, 0.01
    tx = optimizer.create(lambda step: lr, momentum=m, nesterov=False, weight_decay=wd)
    params = {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])}
    opt_state = tx.init(params)
    p, buf = dict(params), {k: np.zeros_like(v) for k, v in params.items()}
    for g in ([0.3, 0.1], [-0.2, 0.4]):
        grads = {"kernel": jnp.array(g), "bias": jnp.array([1.0])}
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda a, b: a + b, params, updates)
        for k in p:
            d = np.asarray(grads[k]) + (wd * np.asarray(p[k]) if k == "kernel" else 0)
            buf[k] = m * buf[k] + d
            p[k] = np.asarray(p[k]) - lr * buf[k]
    for k in p:
        np.testing.assert_allclose(params[k], p[k], rtol=1e-6)


# NVIDIA's two schedules, written out from their sources, for a 90-epoch run at batch 256.
STEPS_PER_EPOCH, EPOCHS, WARMUP, BASE = 1281167 // 256, 90, 8, 0.256


def pytorch_lr(step):
    """ConvNets optimizers.py lr_cosine_policy, applied per epoch (training.py)."""
    epoch = step // STEPS_PER_EPOCH
    if epoch < WARMUP:
        return BASE * (epoch + 1) / WARMUP
    return 0.5 * (1 + np.cos(np.pi * (epoch - WARMUP) / (EPOCHS - WARMUP))) * BASE


def mxnet_lr(step):
    """MXNet RN50v1.5 fit.py cosine_schedule(epoch + nbatch / epoch_size), no lr_steps."""
    x = step / STEPS_PER_EPOCH
    if x < WARMUP:
        return BASE * x / WARMUP
    return BASE * 0.5 * (1 + np.cos(np.pi * (x - WARMUP) / (EPOCHS - WARMUP)))


@pytest.mark.parametrize("unit, from_zero, formula", [
    ("epoch", False, pytorch_lr), ("step", True, mxnet_lr)], ids=["pytorch", "mxnet"])
def test_schedules_equal_nvidia_formulas(unit, from_zero, formula):
    lr = optimizer.schedule(BASE, warmup_epochs=WARMUP, num_epochs=EPOCHS,
                            steps_per_epoch=STEPS_PER_EPOCH, unit=unit,
                            warmup_from_zero=from_zero)
    last = EPOCHS * STEPS_PER_EPOCH - 1
    steps = [0, 1, 2501, 5003, 5004, 12345, WARMUP * STEPS_PER_EPOCH - 1,
             WARMUP * STEPS_PER_EPOCH, WARMUP * STEPS_PER_EPOCH + 1, 200_000, 300_017,
             last - STEPS_PER_EPOCH, last]
    got = np.array(jax.vmap(lr)(jnp.array(steps)))
    want = np.array([formula(s) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)  # float32 near the end
    if unit == "epoch":  # constant through an epoch, and never 0
        assert got[1] == got[0] == got[3] and got[-1] > 1e-5
    else:  # from 0, to 0
        assert got[0] == 0 and got[-1] < 1e-9


def test_nvidia_pytorch_weight_decay_rule_on_resnet50():
    """bn_weight_decay=False: every parameter whose PyTorch name lacks 'bn' is decayed."""
    model = models.create("resnet50_v15")
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                               train=False))["params"]

    def decayed(rule):
        mask = optimizer.decay_mask(params, rule)
        leaves = zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
        return sum(int(np.prod(p.shape)) for p, m in leaves if m)

    assert decayed("not_bn") == 25_511_592  # all but bn1/bn2/bn3: downsample.1 is decayed
    assert decayed("kernels") == 25_557_032 - 53_120 - 1000  # no BN, no fc bias
    assert decayed("all") == 25_557_032  # every trainable parameter
    mask = optimizer.decay_mask(params, "not_bn")
    assert mask["layer1_0"]["downsample_bn"]["scale"] and mask["fc"]["bias"]
    assert not mask["layer1_0"]["bn3"]["scale"] and not mask["bn1"]["bias"]
