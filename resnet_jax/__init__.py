"""NVIDIA's ImageNet classification recipes in JAX/Flax."""

__version__ = "0.1.0"
