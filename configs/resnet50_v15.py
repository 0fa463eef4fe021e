r"""ResNet50 v1.5 on ImageNet, NVIDIA's recipe (Deep Learning Examples, ConvNets).

Command (all local GPUs, ImageNet in DIR/train/<class>/*.JPEG and DIR/val/...):

  python -m resnet_jax.main --config configs/resnet50_v15.py \
      --workdir runs/rn50 --config.data.root=DIR

Presets: `configs/resnet50_v15.py:50`, `:90` (default), `:250` (mixup 0.2).

Recipe: batch 256 per GPU; learning rate 0.256 per 256 images, scaled
linearly (2.048 on 8 GPUs); SGD momentum 0.875; weight decay 1/32768 on
conv/dense kernels; label smoothing 0.1; 8 warmup epochs then cosine decay
to zero; random-resized-crop 224 + flip; eval resize 256, center crop 224.

Hardware, time and result as NVIDIA publishes them for this recipe (PyTorch,
AMP): 90 epochs on 8x A100-80GB reach 77.12% top-1; 8 GPUs train at 16,621
img/s (1 GPU: 2,470), i.e. about 2 h of training per 90 epochs on 8 GPUs.
Measured figures for resnet_jax are in README.md and docs/benchmarks.md.
"""

from resnet_jax import config as config_lib


def get_config(preset: str | None = None):
    """The recipe; `preset` is the epoch count: '50', '90' or '250'."""
    config = config_lib.defaults()
    config.arch = "resnet50_v15"
    preset = preset or "90"
    if preset not in ("50", "90", "250"):
        raise ValueError(
            f"preset {preset!r} is not one of 50, 90, 250: use e.g. configs/resnet50_v15.py:250"
        )
    config.num_epochs = int(preset)
    if preset == "250":
        config.mixup_alpha = 0.2
    return config
