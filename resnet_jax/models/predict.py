"""The one inference step: an eval-mode jitted apply, for classify and the benchmarks."""

import jax

from resnet_jax import parallel


def predict_step(model, mesh=None):
    """`predict(variables, images) -> logits`: `model.apply` in eval mode (BatchNorm's
    running statistics), jitted. With a mesh, the variables are replicated and the images
    and logits split over its devices on the batch axis."""

    def predict(variables, images):
        return model.apply(variables, images, train=False)

    if mesh is None:
        return jax.jit(predict)
    return jax.jit(predict, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                   out_shardings=parallel.batch_sharded(mesh))
