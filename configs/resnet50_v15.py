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
AMP, 8x A100-80GB): 77.12% top-1 after 90 epochs, 78.43% after 250; 16,621
img/s on 8 GPUs (1 GPU: 2,470), about 3 h for 90 epochs.
Measured figures for resnet_jax are in README.md and docs/benchmarks.md.
"""

from resnet_jax import config as config_lib


def get_config(preset: str | None = None):
    """The recipe; `preset` is the epoch count: '50', '90' or '250'."""
    config = config_lib.defaults()

    # --- model ---------------------------------------------------------------------------
    config.arch = "resnet50_v15"
    config.num_classes = 1000
    config.model.conv_init = "fan_out"  # Kaiming-normal, fan-out
    config.model.zero_init_last_bn = True  # gamma 0 on each block's last BN
    config.model.bn_momentum = 0.9
    config.model.bn_epsilon = 1e-5

    # --- batch and optimizer -------------------------------------------------------------
    config.per_device_batch_size = 256
    config.base_learning_rate = 0.256  # per 256 images, scaled linearly with the batch
    config.momentum = 0.875
    config.nesterov = False
    config.weight_decay = 3.0517578125e-05  # 1/32768, on conv and dense kernels

    # --- schedule: warmup, then cosine decay to zero, per step ------------------------------
    config.num_epochs = 90
    config.warmup_epochs = 8

    # --- loss ----------------------------------------------------------------------------
    config.label_smoothing = 0.1
    config.mixup_alpha = 0.0

    # --- images: random-resized crop + flip; eval resize, center crop -----------------------
    config.image_size = 224
    config.eval_resize_size = 256
    config.eval_image_size = 224

    # --- numerics ------------------------------------------------------------------------
    config.precision = "bf16"
    return config_lib.apply_epoch_preset(config, preset, ("50", "90", "250"), "resnet50_v15")
