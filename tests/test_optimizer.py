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
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
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
