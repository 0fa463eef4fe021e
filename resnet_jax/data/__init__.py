"""Input data: DALI pipelines, folder scanning, synthetic batches, the demo data set."""

# Where training images come from (config.data.backend): DALI decoding on the GPUs or on
# the CPU, or one random device-resident batch (benchmarks without I/O).
BACKENDS = ("dali_gpu", "dali_cpu", "synthetic")

# The input normalization by default: ImageNet's channel statistics on the 0..255 scale, as
# torchvision and NVIDIA's PyTorch ConvNets give them. A recipe may set others
# (config.mean_rgb / std_rgb); checkpoints record the ones their weights were trained with.
MEAN_RGB = tuple(255.0 * m for m in (0.485, 0.456, 0.406))
STD_RGB = tuple(255.0 * s for s in (0.229, 0.224, 0.225))
