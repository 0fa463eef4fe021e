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
the PyTorch reference where torchvision and timm are not installed.
"""

import torch
from torch import nn

from resnet_jax import models


class TimmSqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 16, 1, bias=True)
        self.fc2 = nn.Conv2d(channels // 16, channels, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
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
        s = x.mean((2, 3), keepdim=self.conv)
        s = torch.sigmoid(self.expand(torch.relu(self.squeeze(s))))
        return s if self.conv else s[:, :, None, None]


class Bottleneck(nn.Module):
    def __init__(self, inplanes, width, out, stride, groups, se, scheme):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))
        self.se = self.squeeze = None
        if se == "timm":
            self.se = TimmSqueezeExcite(out)
        elif se:
            self.squeeze = NvidiaSqueezeExcite(out, se, conv=scheme == "nvidia_trt")

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        if self.se is not None:
            out = self.se(out)
        if self.squeeze is not None:
            return torch.relu(torch.addcmul(residual, out, self.squeeze(out)))
        return torch.relu(out + residual)


class ResNet(nn.Module):
    def __init__(self, arch: str, scheme: str, num_classes: int = 1000):
        super().__init__()
        spec = models.SPECS[models.canonical(arch)]  # the Flax model's keyword arguments
        sizes, widths, expansion = spec["stage_sizes"], spec["stage_widths"], spec["expansion"]
        groups, stem = spec.get("groups", 1), spec.get("stem_width", 64)
        # SE gates: NVIDIA's (hidden units, an int) or timm's ('timm'), or None.
        se = spec.get("se_hidden") or ("timm" if spec.get("se_reduction") else None)
        if se and (se == "timm") != (scheme == "timm"):
            raise ValueError(f"arch {arch} has {'timm' if se == 'timm' else 'NVIDIA'}'s SE "
                             f"gates, which scheme {scheme!r} does not name")
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inplanes = [], stem
        for i, (n, width) in enumerate(zip(sizes, widths, strict=True)):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(inplanes, width, width * expansion,
                                         2 if i > 0 and b == 0 else 1, groups, se, scheme))
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
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.mean((2, 3)))


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
