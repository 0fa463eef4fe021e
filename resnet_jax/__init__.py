"""NVIDIA's ImageNet classification recipes in JAX/Flax."""

from resnet_jax import quiet as _quiet

# Before TensorFlow or an XLA backend loads, whichever module of the package is run.
_quiet.quiet_native_logs()

__version__ = "0.1.0"
