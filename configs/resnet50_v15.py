r"""ResNet50 v1.5 on ImageNet, NVIDIA's MXNet recipe (Deep Learning Examples, RN50v1.5).

Command (all local GPUs, ImageNet in DIR/train/<class>/*.JPEG and DIR/val/...):

  python -m resnet_jax.main --config configs/resnet50_v15.py \
      --workdir runs/rn50 --config.data.root=DIR

Presets: `configs/resnet50_v15.py:50`, `:90` (default), `:250` (mixup 0.2).

Recipe: batch 192 per GPU; learning rate 0.256 per 256 images, scaled
linearly (1.536 on 8 GPUs); SGD momentum 0.875 in MXNet's form (the rate
inside the momentum buffer); weight decay 1/32768 on every parameter; label
smoothing 0.1 (mixup drawn per image in the 250-epoch preset); 5 warmup
epochs from zero, then cosine decay towards zero, the rate set every step;
random-resized-crop 224 (10 draws, antialiased resize) + flip; eval resize
256, center crop 224; Xavier init, zero gamma and zero running variance on
each block's last BN; MXNet's RGB mean and std.

Every value follows NVIDIA's MXNet implementation
(DeepLearningExamples/MxNet/Classification/RN50v1.5 at commit 729963dd, "MXNet"
below), and its comment names the file and line. Where NVIDIA's PyTorch
implementation (PyTorch/Classification/ConvNets) does otherwise, its value is
one switch away: docs/recipes.md lists both.

Hardware, time and result as NVIDIA publishes them for this recipe (MXNet
README, 22.10 container, 8x A100-80GB, `./runner -b 512`, mixed precision):
77.185% top-1 after 90 epochs; 3,410 img/s on 1 GPU, 26,674 on 8. With the
default 192 per GPU on 8x V100-16GB: 77.15% after 90 epochs, 78.46% after 250.
Measured figures for resnet_jax are in docs/benchmarks.md.
"""

from resnet_jax import config as config_lib


def get_config(preset: str | None = None):
    """The recipe; `preset` is the epoch count: '50', '90' or '250'."""
    config = config_lib.defaults()

    # --- model ---------------------------------------------------------------------------
    config.arch = "resnet50_v15"
    config.num_classes = 1000
    # MXNet models.py:83-84,147,165: Xavier(gaussian, factor "in", magnitude 2*sqrt(groups))
    # for convs and the classifier (zero bias).
    config.model.conv_init = "mxnet"
    # MXNet models.py:82,97-98: gamma and running variance start at 0 in each block's last BN.
    config.model.zero_init_last_bn = True
    config.model.zero_var_last_bn = True
    config.model.bn_momentum = 0.9  # MXNet models.py:60
    config.model.bn_epsilon = 1e-5  # MXNet models.py:58

    # --- batch and optimizer -------------------------------------------------------------
    config.per_device_batch_size = 192  # MXNet runner:24 (NVIDIA's A100 runs: -b 512)
    # MXNet runner:26,44: lr = 0.256 * global batch / 256.
    config.base_learning_rate = 0.256
    config.momentum = 0.875  # MXNet fit.py:128
    config.nesterov = False  # MXNet fit.py:126, plain 'sgd'
    # MXNet's 'sgd' (sgd_mom_update): v = m*v - lr*(g + wd*w); w += v, the rate inside the
    # momentum buffer (the audit; MXNet's SGD docstring gives this update).
    config.optimizer = "sgd_mxnet"
    config.weight_decay = 3.0517578125e-05  # 1/32768, MXNet fit.py:130
    # MXNet fit.py:548-552 hands wd to Gluon's Trainer with no wd_mult anywhere: every
    # parameter is decayed (its README:76 says BN gamma/beta are not; the code decides).
    config.weight_decay_rule = "all"

    # --- schedule: warmup from 0, then cosine decay to zero, every step ---------------------
    # MXNet fit.py:176-192,391: lr(x) at x = epoch + i/epoch_size, lr*x/warmup during warmup.
    config.num_epochs = 90  # MXNet fit.py:112
    config.warmup_epochs = 5  # MXNet fit.py:124
    config.lr_schedule_unit = "step"
    config.warmup_from_zero = True

    # --- loss ----------------------------------------------------------------------------
    config.label_smoothing = 0.1  # MXNet fit.py:132
    config.mixup_alpha = 0.0  # MXNet fit.py:134; the 250-epoch preset uses 0.2 (README:621)
    # MXNet draws mixup's weight per image, not per batch (the line-by-line audit of
    # NVIDIA's MXNet code; its line was not checked here).
    config.mixup_per_sample = True

    # --- images: random-resized crop + flip; eval resize, center crop -----------------------
    config.image_size = 224  # MXNet runner:55
    # MXNet dali.py:67-79: ImageDecoderRandomCrop's defaults (area 8%-100%, aspect 3/4-4/3,
    # 10 attempts), then Resize with its default antialiasing.
    config.crop_attempts = 10
    config.train_antialias = True
    config.eval_resize_size = 256  # MXNet data.py:79, dali.py:127 (antialiased, the default)
    config.eval_image_size = 224
    config.eval_antialias = True
    config.mean_rgb = (123.68, 116.779, 103.939)  # MXNet data.py:63
    config.std_rgb = (58.393, 57.12, 57.375)  # MXNet data.py:65

    # --- numerics ------------------------------------------------------------------------
    # MXNet trains in float16 (fit.py:106) with no loss scaling (runner passes no --amp;
    # fit.py:411). Here bf16 needs none; precision=fp16 uses the dynamic loss scale.
    config.precision = "bf16"
    return config_lib.apply_epoch_preset(config, preset, ("50", "90", "250"), "resnet50_v15")
