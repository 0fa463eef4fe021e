"""Weights in and out: PyTorch state dicts (torch.py), the models in PyTorch
(torch_reference.py), NVIDIA's TensorFlow checkpoints (tensorflow.py), ONNX and Triton
(onnx.py).

The modules are named after the frameworks; every import in them is absolute, so `import
torch` or `import tensorflow` inside this package is the framework itself. The names of the
weights on either side are in resnet_jax/models/naming.py.
"""
