"""A device-resident random batch, repeated: training speed without I/O."""

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from resnet_jax.parallel import batch_sharded


def train_iterator(*, global_batch_size: int, image_size: int, image_dtype, num_classes: int,
                   mesh: Mesh, seed: int = 0):
    """Yields the same sharded batch of random images and labels forever."""
    sharding = batch_sharded(mesh)

    def make(key):
        k1, k2 = jax.random.split(key)
        images = jax.random.normal(k1, (global_batch_size, image_size, image_size, 3), image_dtype)
        labels = jax.random.randint(k2, (global_batch_size,), 0, num_classes, jnp.int32)
        return {"images": images, "labels": labels}

    batch = jax.jit(make, out_shardings=sharding)(jax.random.key(seed))
    while True:
        yield batch
