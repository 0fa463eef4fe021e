"""NVIDIA's published training throughput, to print beside what resnet_jax measures.

Images per second per GPU, mixed precision, from NVIDIA's own tables: the
Deep Learning Examples READMEs (PyTorch ConvNets, MXNet RN50 v1.5; 90-epoch
recipes) and MLPerf Training results (a different, large-batch recipe, noted
as such). Multi-GPU figures are divided by the number of GPUs.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Published:
    """One published figure."""

    arch: str
    device: str  # matched against jax's device_kind, case-insensitively
    images_per_sec_per_gpu: float
    source: str


PUBLISHED = (
    Published("resnet50_v15", "A100", 2470, "NVIDIA PyTorch ConvNets, 1x A100-80GB, AMP"),
    Published("resnet50_v15", "A100", 16621 / 8, "NVIDIA PyTorch ConvNets, 8x A100-80GB, AMP"),
    Published("resnet50_v15", "A100", 3410.52, "NVIDIA MXNet RN50v1.5 22.10, 1x A100-80GB, AMP"),
    Published("resnet50_v15", "A100", 26673.72 / 8,
              "NVIDIA MXNet RN50v1.5 22.10, 8x A100-80GB, AMP"),
    Published("resnet50_v15", "H100", 56000 / 8,
              "MLPerf Training v3.0, NVIDIA MXNet + DALI, 8x H100 (MLPerf recipe)"),
    Published("resnet50_v15", "H200", 7950,
              "MLPerf Training v4.0, NVIDIA MXNet + DALI, 8x H200 (MLPerf recipe)"),
    Published("se_resnext101_32x4d", "A100", 855, "NVIDIA PyTorch ConvNets, 1x A100-80GB, AMP"),
    Published("se_resnext101_32x4d", "A100", 5779 / 8,
              "NVIDIA PyTorch ConvNets, 8x A100-80GB, AMP"),
)


def published(arch: str, device_kind: str) -> list[Published]:
    """The figures for `arch` on this kind of device; where there are none, the A100's (the
    GPU NVIDIA's recipe tables use), so that every report has a yardstick."""
    same_arch = [p for p in PUBLISHED if p.arch == arch]
    here = [p for p in same_arch if p.device.lower() in device_kind.lower()]
    return here or [p for p in same_arch if p.device == "A100"]


def best(arch: str, device_kind: str) -> Published | None:
    """The highest published figure per GPU for `arch` on this device (see `published`)."""
    figures = published(arch, device_kind)
    return max(figures, key=lambda p: p.images_per_sec_per_gpu) if figures else None
