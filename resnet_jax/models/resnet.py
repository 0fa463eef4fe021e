"""ResNet v1.5 family in Flax Linen, NHWC, as NVIDIA's ConvNets define it.

v1.5 puts the stride-2 of a downsampling bottleneck on the 3x3 convolution
(v1 has it on the first 1x1). ResNeXt widens the 3x3 into grouped
convolutions; SE-ResNeXt rescales each block's output channels with a
squeeze-and-excitation gate before the residual add.

Padding is explicit and symmetric (PyTorch's) by default, so that converted
PyTorch weights give the same logits. `padding='same'` is TensorFlow's
'SAME' instead, which NVIDIA's TensorFlow ResNet50 uses in every layer (20.06
and later): a stride-2 layer pads one row and column more at the bottom and
right than at the top and left. Parameter shapes are the same either way.
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.batchnorm import BatchNorm

ModuleDef = Any


CONV_INITS = ("fan_in", "fan_out", "mxnet")
# How the stem convolution, the max pool and each block's 3x3 convolution pad:
# 'symmetric': PyTorch's explicit padding; 'same': TensorFlow's 'SAME' everywhere (NVIDIA's
# TF ResNet50 from 20.06 on, model/resnet.py); 'symmetric_same_pool': symmetric convolutions
# and a 'SAME' max pool (NVIDIA's TF RN50v1.5 of 2019, whose convolutions pad explicitly).
PADDINGS = ("symmetric", "same", "symmetric_same_pool")


def conv_kernel_init(mode: str, groups: int = 1):
    """Kaiming-normal (He) initialisation for ReLU networks, untruncated as in PyTorch.

    'mxnet': NVIDIA's MXNet ResNet (models.py, `Xavier(rnd_type='gaussian',
    factor_type='in', magnitude=2 * groups**0.5)`): a normal of variance
    2*sqrt(groups)/fan_in, fan_in counting the inputs of one group; for
    ungrouped layers the same as 'fan_in'.
    """
    if mode not in CONV_INITS:
        raise ValueError(f"conv_init must be one of {', '.join(CONV_INITS)}, got {mode!r}")
    if mode == "mxnet":
        return nn.initializers.variance_scaling(2.0 * groups**0.5, "fan_in", "normal")
    return nn.initializers.variance_scaling(2.0, mode, "normal")


def torch_linear_init(fan_in: int):
    """PyTorch's default nn.Linear initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in**-0.5
    return lambda key, shape, dtype=jnp.float32: nn.initializers.uniform(2 * bound)(
        key, shape, dtype
    ) - jnp.asarray(bound, dtype)


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid.

    `hidden` units in the middle, or channels // `reduction` when hidden is 0.
    `linear_init`: both layers initialised as PyTorch's nn.Linear, which
    NVIDIA's gate is (weights and biases U(+-1/sqrt(fan_in))); otherwise the
    convolutions' init and zero biases.
    """

    reduction: int
    hidden: int
    conv: ModuleDef
    linear_init: bool = False

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        squeezed = self.hidden or max(channels // self.reduction, 1)

        def layer(features, fan_in, name):
            init = {}
            if self.linear_init:
                init = dict(kernel_init=torch_linear_init(fan_in),
                            bias_init=torch_linear_init(fan_in))
            return self.conv(features, (1, 1), use_bias=True, name=name, **init)

        # Pool in fp32: a half-precision mean over 56x56 positions loses digits.
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
        s = nn.relu(layer(squeezed, channels, "reduce")(s))
        return nn.sigmoid(layer(channels, squeezed, "expand")(s))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, grouped), 1x1 expand; optional SE; residual add."""

    width: int
    out_channels: int
    strides: int
    groups: int
    se_reduction: int  # SE gate of channels // se_reduction units (0 and se_hidden 0: none)
    se_hidden: int  # SE gate of this many units (NVIDIA's: 16)
    conv: ModuleDef
    norm: ModuleDef
    zero_init_last_bn: bool
    # The 3x3's; 'SAME': TensorFlow's. (The strided 1x1 shortcut pads nothing in either.)
    conv2_padding: Any = ((1, 1), (1, 1))

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.width, (1, 1), name="conv1")(x)
        y = self.norm(relu=True, name="bn1")(y)
        y = self.conv(
            self.width,
            (3, 3),
            strides=(self.strides, self.strides),
            padding=self.conv2_padding,
            feature_group_count=self.groups,
            name="conv2",
        )(y)
        y = self.norm(relu=True, name="bn2")(y)
        y = self.conv(self.out_channels, (1, 1), name="conv3")(y)
        scale_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
        y = self.norm(scale_init=scale_init, name="bn3")(y)
        if self.se_reduction or self.se_hidden:
            y = y * SqueezeExcite(self.se_reduction, self.se_hidden, self.conv,
                                  linear_init=bool(self.se_hidden), name="se")(y)
        if residual.shape != y.shape:
            residual = self.conv(
                self.out_channels,
                (1, 1),
                strides=(self.strides, self.strides),
                name="downsample_conv",
            )(residual)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """Stem, four stages of bottlenecks, global average pool, linear classifier.

    `stage_widths` are the bottleneck (3x3) widths of each stage; a block's
    output has `width * expansion` channels.
    """

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    expansion: int
    num_classes: int
    groups: int = 1
    se_reduction: int = 0
    se_hidden: int = 0
    stem_width: int = 64
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    conv_init: str = "fan_out"  # see conv_kernel_init; 'mxnet' also sets the classifier's init
    zero_init_last_bn: bool = True
    # MXNet's ResNet also starts the running variance of each block's last BN at 0
    # (running_variance_initializer = its gamma initializer); see models.init_variables.
    zero_var_last_bn: bool = False
    padding: str = "symmetric"  # see PADDINGS

    @nn.compact
    def __call__(self, x, train: bool = True):
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        tf_convs = self.padding == "same"
        stem_padding = "SAME" if tf_convs else ((3, 3), (3, 3))
        pool_padding = "SAME" if self.padding != "symmetric" else ((1, 1), (1, 1))

        def conv(features, kernel_size, *, feature_group_count=1, use_bias=False,
                 padding="VALID", kernel_init=None, **kwargs):
            # The default kernel init knows the group count ('mxnet' scales with it); a layer
            # may bring its own (the SE gates' nn.Linear init).
            kernel_init = kernel_init or conv_kernel_init(self.conv_init, feature_group_count)
            return nn.Conv(features, kernel_size, feature_group_count=feature_group_count,
                           use_bias=use_bias, padding=padding, dtype=self.dtype,
                           param_dtype=jnp.float32, kernel_init=kernel_init, **kwargs)
        norm = functools.partial(
            BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            axis_name=self.bn_axis_name if train else None,
        )
        x = jnp.asarray(x, self.dtype)
        x = conv(self.stem_width, (7, 7), strides=(2, 2), padding=stem_padding, name="conv1")(x)
        x = norm(relu=True, name="bn1")(x)
        # Both frameworks' max pools pad with -inf.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_padding)
        stages = zip(self.stage_sizes, self.stage_widths, strict=True)
        for stage, (num_blocks, width) in enumerate(stages):
            for block in range(num_blocks):
                x = Bottleneck(
                    width=width,
                    out_channels=width * self.expansion,
                    strides=2 if stage > 0 and block == 0 else 1,
                    groups=self.groups,
                    se_reduction=self.se_reduction,
                    se_hidden=self.se_hidden,
                    conv=conv,
                    norm=norm,
                    zero_init_last_bn=self.zero_init_last_bn,
                    conv2_padding="SAME" if tf_convs else ((1, 1), (1, 1)),
                    name=f"layer{stage + 1}_{block}",
                )(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        features = x.shape[-1]
        if self.conv_init == "mxnet":  # MXNet's Dense: the Xavier init above, zero bias
            fc_init = dict(kernel_init=conv_kernel_init("mxnet"),
                           bias_init=nn.initializers.zeros)
        else:  # PyTorch's nn.Linear
            fc_init = dict(kernel_init=torch_linear_init(features),
                           bias_init=torch_linear_init(features))
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="fc",
            **fc_init,
        )(x.astype(self.dtype))
        # The loss and softmax run in fp32 whatever the compute precision.
        return x.astype(jnp.float32)
