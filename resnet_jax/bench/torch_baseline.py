"""The PyTorch reference rows of scripts/benchmark.py: the same rows on one device.

The model is torchvision's or timm's when importable, else
resnet_jax.interop.torch_reference, run with the per-device batch (inference
timed as resnet_jax's, resnet_jax.bench.timing): forward, cross-entropy with
label smoothing, backward, SGD with momentum and the recipe's weight decay;
on GPUs channels_last and autocast for bf16/fp16 (GradScaler for fp16), TF32
only for tf32; on CPUs torch.set_num_threads(cores) (autocast for bf16/fp16
rows). The images are random, or resnet_jax's own DALI training pipeline.

torch, torchvision, timm and DALI are imported inside the functions that use
them: the benchmark runs without them (--no-torch), and this module loads
none of them.
"""

import functools
import gc
import os

from resnet_jax import precision
from resnet_jax.bench.timing import latency_summary, step_summary, time_latency, time_steps
from resnet_jax.data.source import num_threads
from resnet_jax.models import naming

# timm's names for the models it has (torchvision has only ResNet50; NVIDIA's
# SE-ResNeXt, with 16-unit SE gates, is in neither: resnet_jax.interop.torch_reference has it).
_TIMM_NAMES = {"resnet50_v15": "resnet50", "resnext101_32x4d": "resnext101_32x4d",
               "seresnext101_32x4d": "seresnext101_32x4d"}


def version() -> str | None:
    """torch's version, None when it does not import."""
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def device_mismatch(jax_platform: str) -> str | None:
    """Why the PyTorch reference would run on another kind of device than JAX, or None."""
    import torch

    torch_platform = "gpu" if torch.cuda.is_available() else "cpu"
    if torch_platform == jax_platform:
        return None
    built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else "the CPU only"
    return (f"JAX runs on the {jax_platform.upper()} but PyTorch {torch.__version__} (built for "
            f"{built_for}) would run on the {torch_platform.upper()}, and the ratio would "
            "compare the two: install a PyTorch built for this machine's CUDA (e.g. pip install "
            "torch --index-url https://download.pytorch.org/whl/cu126), or pass --no-torch")


def torch_model(arch: str):
    """(module, description): torchvision or timm when importable, else torch_reference."""
    if arch == "resnet50_v15":
        try:
            import torchvision

            return torchvision.models.resnet50(), f"torchvision {torchvision.__version__} resnet50"
        except ImportError:
            pass
    try:
        import timm

        if arch in _TIMM_NAMES:
            name = _TIMM_NAMES[arch]
            return timm.create_model(name), f"timm {timm.__version__} {name}"
    except ImportError:
        pass
    from resnet_jax.interop import torch_reference

    scheme = naming.native_naming(arch)
    return (torch_reference.ResNet(arch, scheme),
            f"resnet_jax.interop.torch_reference ({scheme})")


def torch_batches(config, data: str, device, on_gpu: bool):
    """Endless (images NCHW, labels) of the config's per-device batch on `device`: random
    ('synthetic'), or resnet_jax's DALI training pipeline over config.data.root."""
    import torch

    size, batch = config.image_size, config.per_device_batch_size
    if data == "synthetic":
        images = torch.randn(batch, 3, size, size, device=device)
        if on_gpu:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, config.num_classes, (batch,), device=device)
        while True:
            yield images, labels
    from resnet_jax.data import dali, folders

    pipe = dali.single_train_pipeline(
        folders.scan_split(config.data.root, "train"), batch_size=batch, image_size=size,
        image_dtype=precision.image_dtype(config.precision), on_gpu=on_gpu,
        num_threads=num_threads(config, 1))
    if on_gpu:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        # The pipeline's stream is endless: one iterator, never reset.
        for (out,) in DALIGenericIterator([pipe], ["images", "labels"]):
            # NHWC viewed as NCHW is channels_last: no copy.
            yield out["images"].permute(0, 3, 1, 2), out["labels"].long()
    while True:
        images, labels = pipe.run()
        images = torch.from_numpy(images.as_array()).permute(0, 3, 1, 2).contiguous()
        yield images, torch.from_numpy(labels.as_array()).long()


def _train_step(model, config, batches, autocast, device):
    """(dispatch, wait) of one SGD step of the recipe's loss, for time_steps."""
    import torch
    from torch import nn

    model.train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          # A rate as small as the first warm-up steps' (speed only).
                          lr=config.base_learning_rate * config.per_device_batch_size / 256
                          / 1000, momentum=config.momentum)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None

    def dispatch():
        images, labels = next(batches)
        with autocast():
            loss = criterion(model(images), labels)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return loss.detach()

    return dispatch, torch.Tensor.item


def torch_row(config, data: str, mode: str, *, warmup: int, steps: int) -> dict:
    """The `torch_*` fields of a row ('train' or 'infer') of `config` (the row's recipe,
    precision, per-device batch and image size): one device, the per-device batch."""
    import torch

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    precision_name, batch = config.precision, config.per_device_batch_size
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = precision_name == "tf32"
        torch.backends.cudnn.allow_tf32 = precision_name == "tf32"
        torch.cuda.reset_peak_memory_stats()
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_name)
    autocast = functools.partial(torch.autocast, device.type, dtype=amp_dtype,
                                 enabled=amp_dtype is not None)
    model, description = torch_model(config.arch)
    layout = torch.channels_last if on_gpu else torch.contiguous_format
    model = model.to(device, memory_format=layout)
    batches = torch_batches(config, data, device, on_gpu)
    if mode == "train":
        dispatch, wait = _train_step(model, config, batches, autocast, device)
        summary = step_summary(*time_steps(dispatch, wait, warmup, steps), batch)
    else:
        model.eval()

        def run_once():
            with torch.inference_mode(), autocast():
                model(next(batches)[0])
            if on_gpu:
                torch.cuda.synchronize()

        summary = latency_summary(*time_latency(run_once, warmup, steps), batch)
    result = {f"torch_{k}": v for k, v in summary.items()}
    result["torch_peak_memory_bytes"] = torch.cuda.max_memory_allocated() if on_gpu else None
    result["torch_model"] = description
    result["torch_precision"] = precision_name
    return result


def free_memory() -> None:
    """Returns the last row's GPU memory to the device, for JAX's next row."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
