"""PyTorch definitions of the three models, in each published naming scheme (needs torch).

The module structure (attribute names, Sequential indices, layer types)
reproduces the state-dict keys of:

* 'torchvision': torchvision.models.resnet50, also timm's resnet50 and
  resnext101_32x4d (the same keys): `layer1.0.conv1.weight`, `downsample.0/1`.
* 'timm': as above plus timm's SE gate `layer1.0.se.fc1/fc2` (1x1 convs).
* 'nvidia': NVIDIA ConvNets today: stages `layers.0..3`, SE gate
  `squeeze.squeeze/expand` as nn.Linear with 16 hidden units.

An arch with 16-unit SE gates (se_resnext101_32x4d) takes the NVIDIA schemes
only, one with channels/16 (seresnext101_32x4d) the 'timm' scheme only.
* 'nvidia_ngc': NVIDIA's NGC 20.06 checkpoints: stages `layer1..4`, same SE.
* 'nvidia_trt': NVIDIA's TensorRT variant: SE gate as 1x1 convs.

The forward passes follow the originals: stride on the 3x3 (v1.5), the SE
gate multiplies the block's bn3 output before the residual add. The
conversion tests check resnet_jax against them; the benchmark times them as
the PyTorch reference where torchvision and timm are not installed; the ONNX
export traces them. For that last use they also take the resnet_jax model
options that change what the weights compute: `padding` ('same' and
'symmetric_same_pool' pad as TensorFlow's 'SAME', see
resnet_jax.models.resnet.PADDINGS) and `bn_epsilon`; and they run in half
precision as resnet_jax does, pooling in fp32.
"""

import functools

import torch
from torch import nn
import torch.nn.functional as F

from resnet_jax import models
from resnet_jax.models.resnet import PADDINGS


class TFSamePad(nn.Module):
    """TensorFlow's 'SAME' padding of a k x k window of stride s, before a layer that pads
    nothing: ceil(size / s) outputs, the odd row or column at the bottom or right.

    `value` is what the border holds: 0 before a convolution, -inf before a max pool.
    The amounts follow the input's height and width, which the ONNX export fixes.
    """

    def __init__(self, kernel: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def amounts(self, size: int) -> tuple[int, int]:
        """(before, after) for one spatial dimension of `size`."""
        total = max((-(-size // self.stride) - 1) * self.stride + self.kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x):
        top, bottom = self.amounts(int(x.shape[-2]))
        left, right = self.amounts(int(x.shape[-1]))
        if not (top or bottom or left or right):
            return x
        return F.pad(x, (left, right, top, bottom), value=self.value)


def _pooled(x):
    """Global average pool in fp32 (a half-precision mean over 56x56 loses digits), returned
    in the input's precision, as resnet_jax pools."""
    if x.dtype == torch.float32:
        return x.mean((2, 3))
    return x.float().mean((2, 3)).to(x.dtype)


class TimmSqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 16, 1, bias=True)
        self.fc2 = nn.Conv2d(channels // 16, channels, 1, bias=True)

    def forward(self, x):
        s = _pooled(x)[:, :, None, None]
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class NvidiaSqueezeExcite(nn.Module):
    """Returns the gate only; the block multiplies (NVIDIA's addcmul)."""

    def __init__(self, channels, hidden, conv: bool):
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.conv = conv
        self.squeeze = layer(channels, hidden)
        self.expand = layer(hidden, channels)

    def forward(self, x):
        s = _pooled(x)
        s = s[:, :, None, None] if self.conv else s
        s = torch.sigmoid(self.expand(torch.relu(self.squeeze(s))))
        return s if self.conv else s[:, :, None, None]


class Bottleneck(nn.Module):
    def __init__(self, inplanes, width, out, stride, groups, se, scheme, *, tf_same=False,
                 bn_epsilon=1e-5):
        super().__init__()
        norm = functools.partial(nn.BatchNorm2d, eps=bn_epsilon)
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm(width)
        # TensorFlow's 'SAME' 3x3: as symmetric at stride 1, one more at the bottom/right at 2.
        self.pad2 = TFSamePad(3, stride) if tf_same else None
        self.conv2 = nn.Conv2d(width, width, 3, stride, 0 if tf_same else 1, groups=groups,
                               bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = norm(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                            norm(out))
        self.se = self.squeeze = None
        if se == "timm":
            self.se = TimmSqueezeExcite(out)
        elif se:
            self.squeeze = NvidiaSqueezeExcite(out, se, conv=scheme == "nvidia_trt")

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        if self.pad2 is not None:
            out = self.pad2(out)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        if self.se is not None:
            out = self.se(out)
        if self.squeeze is not None:
            return torch.relu(torch.addcmul(residual, out, self.squeeze(out)))
        return torch.relu(out + residual)


class ResNet(nn.Module):
    def __init__(self, arch: str, scheme: str, num_classes: int = 1000, *,
                 padding: str = "symmetric", bn_epsilon: float = 1e-5):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        spec = models.SPECS[models.canonical(arch)]  # the Flax model's keyword arguments
        sizes, widths, expansion = spec["stage_sizes"], spec["stage_widths"], spec["expansion"]
        groups, stem = spec.get("groups", 1), spec.get("stem_width", 64)
        # SE gates: NVIDIA's (hidden units, an int) or timm's ('timm'), or None.
        se = spec.get("se_hidden") or ("timm" if spec.get("se_reduction") else None)
        if se and (se == "timm") != (scheme == "timm"):
            raise ValueError(f"arch {arch} has {'timm' if se == 'timm' else 'NVIDIA'}'s SE "
                             f"gates, which scheme {scheme!r} does not name")
        tf_convs = padding == "same"
        self.stem_pad = TFSamePad(7, 2) if tf_convs else None
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 0 if tf_convs else 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=bn_epsilon)
        # PyTorch's max pool pads with -inf too: only the amounts differ.
        self.pool_pad = None if padding == "symmetric" else TFSamePad(3, 2, float("-inf"))
        self.maxpool = nn.MaxPool2d(3, 2, 1 if self.pool_pad is None else 0)
        stages, inplanes = [], stem
        for i, (n, width) in enumerate(zip(sizes, widths, strict=True)):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(inplanes, width, width * expansion,
                                         2 if i > 0 and b == 0 else 1, groups, se, scheme,
                                         tf_same=tf_convs, bn_epsilon=bn_epsilon))
                inplanes = width * expansion
            stages.append(nn.Sequential(*blocks))
        if scheme in ("nvidia", "nvidia_trt"):
            self.layers = nn.Sequential(*stages)
        else:
            for i, stage in enumerate(stages):
                setattr(self, f"layer{i + 1}", stage)
        self.stages = stages  # plain list: not registered twice
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
        if self.stem_pad is not None:
            x = self.stem_pad(x)
        x = torch.relu(self.bn1(self.conv1(x)))
        if self.pool_pad is not None:
            x = self.pool_pad(x)
        x = self.maxpool(x)
        for stage in self.stages:
            x = stage(x)
        return self.fc(_pooled(x))


class NHWCLogits(nn.Module):
    """What the ONNX export traces: float32 NHWC images in, float32 logits out, the model
    (already in `dtype`) computing in `dtype`; the layout change is part of the graph."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, images):
        if self.dtype == torch.float32:
            return self.model(images.permute(0, 3, 1, 2))
        return self.model(images.to(self.dtype).permute(0, 3, 1, 2)).float()


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and random BN statistics (not the identity), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            elif isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * (1.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()
