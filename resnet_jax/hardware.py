"""Dense peak FLOP/s of the GPUs people train on, and model FLOPs utilisation (MFU): a leaf,
used by the training loop's progress line and by the benchmarks.

The peaks are NVIDIA's data-sheet figures for dense (not 2:4 sparse) tensor-core
math per GPU. MFU counts the model's FLOPs only: 2 x the forward
multiply-accumulates per image, x3 for a training step (forward, and the
backward pass's two products), over the devices' peak in the run's precision.
"""

# Per device kind (jax's `device_kind`, matched case-insensitively, first match wins, so a
# variant comes before its family), the dense peak in each precision.
_H100_SXM = {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}
_H100_NVL = {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}
PEAK_FLOPS = (
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 NVL", _H100_NVL),
    ("H100", _H100_SXM),
    ("H200 NVL", _H100_NVL),
    ("H200", _H100_SXM),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
)

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (gradients of activations and of weights)


def peak_flops(device_kind: str, precision_name: str) -> float | None:
    """The device's dense peak FLOP/s in this precision, or None when unknown (CPUs too)."""
    for name, peaks in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return peaks[precision_name]
    return None


def model_flops_per_image(forward_macs: int, *, train: bool) -> float:
    """Model FLOPs of one image: 2 per multiply-accumulate, 3 forwards' worth when training."""
    return 2.0 * forward_macs * (TRAIN_FLOPS_PER_FORWARD if train else 1)


def mfu(images_per_sec: float, flops_per_image: float, peak: float | None,
        devices: int = 1) -> float | None:
    """Model FLOPs utilisation of `devices` devices of `peak` FLOP/s each (None: peak unknown)."""
    if not peak:
        return None
    return images_per_sec * flops_per_image / (peak * devices)
