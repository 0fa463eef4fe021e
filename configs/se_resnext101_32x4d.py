r"""SE-ResNeXt101-32x4d on ImageNet, NVIDIA's recipe (Deep Learning Examples, ConvNets).

Command (all local GPUs, ImageNet in DIR/train/<class>/*.JPEG and DIR/val/...):

  python -m resnet_jax.main --config configs/se_resnext101_32x4d.py \
      --workdir runs/se_rnx101 --config.data.root=DIR

Presets: `configs/se_resnext101_32x4d.py:90` (default), `:250` (mixup 0.2).

Recipe: ResNeXt101-32x4d's (configs/resnext101_32x4d.py), value for value, as
NVIDIA trains both; only the network differs. NVIDIA's DGX-A100 settings:
batch 128 per GPU; an optimizer batch of 1,024 on any GPU count (gradients
accumulated on fewer than 8) and so learning rate 1.024; SGD momentum 0.875;
weight decay 6.103515625e-05 (1/16384) on every parameter whose PyTorch name
lacks "bn"; label smoothing 0.1; 8 warmup epochs then cosine decay, set once
per epoch; random-resized-crop 224 (10 draws, antialiased) + flip; eval
resize 256 (antialiased), center crop 224.

Model: NVIDIA's SE-ResNeXt101-32x4d: ResNeXt101-32x4d with a
squeeze-and-excitation gate in every block (global average pool, linear
layer to 16 units, ReLU, linear layer back, sigmoid; nn.Linear's init),
scaling the block's output before the residual add; 45,251,128 parameters
(DeepLearningExamples, PyTorch/Classification/ConvNets/image_classification/
models/common.py, SqueezeAndExcitation(in_channels, squeeze=16)).

Hardware, time and result as NVIDIA publishes them (PyTorch, AMP, 8x
A100-80GB): 80.03% top-1 after 90 epochs, 80.9% after 250; 5,779 img/s on 8
GPUs (1 GPU: 855), about 6 h for 90 epochs. See README.md, "Models".

The SE paper's and timm's network, with channels/16 units per gate (48,955,416
parameters), is `--config.arch=seresnext101_32x4d`.
"""

from resnet_jax import config as config_lib


def get_config(preset: str | None = None):
    """The recipe; `preset` is the epoch count: '90' or '250'."""
    config = config_lib.recipe("resnext101_32x4d")  # the same recipe, another network
    config.arch = "se_resnext101_32x4d"
    return config_lib.apply_epoch_preset(config, preset, ("90", "250"), "se_resnext101_32x4d")
