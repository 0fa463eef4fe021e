"""Mixup: one weight per device batch (NVIDIA's PyTorch) or one per image (NVIDIA's MXNet)."""

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.train import step as step_lib


def test_mixup_per_sample_draws_one_weight_per_image_against_its_mirror():
    images = jax.random.normal(jax.random.key(1), (6, 4, 4, 3))
    targets = jax.nn.one_hot(jnp.arange(6) % 3, 3)
    key = jax.random.key(7)
    mixed, mixed_targets = step_lib.mixup(key, images, targets, 0.2, per_sample=True)
    lam = np.asarray(jax.random.beta(key, 0.2, 0.2, (6,)))
    assert len(set(np.round(lam, 6))) == 6  # six different weights
    want = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[::-1]
    np.testing.assert_allclose(mixed, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed_targets,
                               lam[:, None] * targets + (1 - lam[:, None]) * targets[::-1],
                               rtol=1e-6)
    np.testing.assert_allclose(mixed_targets.sum(axis=1), 1, rtol=1e-6)

    per_batch, _ = step_lib.mixup(key, images, targets, 0.2)
    one = float(jax.random.beta(key, 0.2, 0.2))
    np.testing.assert_allclose(per_batch, one * images + (1 - one) * images[::-1], rtol=1e-5,
                               atol=1e-6)
