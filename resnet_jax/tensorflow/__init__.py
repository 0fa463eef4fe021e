"""TensorFlow side: NVIDIA's TensorFlow ResNet50 v1.5 checkpoints to resnet_jax (convert.py).

Named after the framework like resnet_jax/torch; every import here is absolute,
so `import tensorflow` inside this package is TensorFlow itself.
"""
