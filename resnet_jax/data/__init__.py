"""Input data: DALI pipelines, folder scanning, synthetic batches, the demo data set."""

from resnet_jax.errors import ConfigError

# Where training images come from (config.data.backend): DALI decoding on the GPUs or on
# the CPU, or one random device-resident batch (benchmarks without I/O).
BACKENDS = ("dali_gpu", "dali_cpu", "synthetic")

# The input normalization by default: ImageNet's channel statistics on the 0..255 scale, as
# torchvision and NVIDIA's PyTorch ConvNets give them. A recipe may set others
# (config.mean_rgb / std_rgb); checkpoints record the ones their weights were trained with.
MEAN_RGB = tuple(255.0 * m for m in (0.485, 0.456, 0.406))
STD_RGB = tuple(255.0 * s for s in (0.229, 0.224, 0.225))


def steps_per_epoch(num_images: int, batch: int) -> int:
    """Full batches per epoch (the remainder is dropped, as NVIDIA's loaders do)."""
    steps = num_images // batch
    if steps == 0:
        raise ConfigError(
            f"the training set has {num_images} images, fewer than one global batch of {batch}: "
            "lower --config.per_device_batch_size or set --config.global_batch_size"
        )
    return steps
