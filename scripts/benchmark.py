"""Training and inference throughput of resnet_jax, next to a PyTorch reference in the same run.

  python scripts/benchmark.py [--archs resnet50_v15] [--precisions bf16] [--batch-sizes 256]
      [--image-size 224] [--modes train,infer] [--data synthetic,dali] [--data-root DIR]
      [--warmup-steps 5] [--steps 20] [--no-torch] [--onnx [--onnx-provider auto]]
      [--json FILE]

Each row is the trainer's own set-up (resnet_jax.train.setup.setup_train_loop)
of the arch's recipe (configs/<arch>.py) with the row's precision, batch and
image size, on a mesh of all devices: the same data source, model, state and
train step; inference is an eval-mode jitted `model.apply` of that state.
Data is the synthetic device-resident batch or the DALI training pipeline
(dali_gpu on GPUs, dali_cpu otherwise; the random crops of training also
feed the inference rows). Without --data-root a small JPEG tree is drawn
into a temporary folder.

Timing of training: the first step (compilation included) is timed alone,
then the warm-up steps run, then each timed step is dispatched before the
host waits for the previous step's result (the loss), so that one step is
queued as in the trainer. A step's time is the interval between two results;
img/s is the global batch over the median step time.

Timing of inference, as NVIDIA's inference tables give it: one batch at a
time, each call timed from taking the batch to its logits being ready (the
host blocks on them), over --steps calls after the warm-up; img/s is the
batch over the mean latency, and the latency's mean, 90th, 95th and 99th
percentiles are reported (with 20 steps the upper percentiles are close to
the slowest call). The default batch sizes are 1, 8, 32, 64, 128 and 256 on
GPUs (1 and 8 on CPUs); --batch-sizes sets those of both modes.

With --onnx, the inference rows also time the same model (the row's
freshly initialised weights) exported to ONNX (resnet_jax.interop.onnx, once
per arch and precision) in ONNX Runtime: TensorRT's provider when this
onnxruntime build has it and it starts, else CUDA's, else the CPU's
(--onnx-provider picks one). The graph is fp32 for fp32/tf32 rows (TF32
allowed for tf32 on CUDA) and fp16 for fp16 rows; bf16 rows have no ONNX
column. The batch stays on the device (IOBinding): the ONNX latency is the
model alone, on the synthetic rows' batch (the DALI rows have no ONNX
column). `onnx_max_rel_diff` in the JSON says how far its logits are from
resnet_jax's on the same images (max |difference| / max |logit|).

MFU counts model FLOPs only (resnet_jax.bench.hardware): 2 x the forward
multiply-accumulates per image, x3 for training, over the device's dense
peak (n/a for unknown devices and CPUs). 'peak mem' is the
device allocator's peak so far in this process (GPUs; rows run in order),
'xla mem' XLA's compiled size of the step (arguments, outputs, temporaries),
'others' the share of the cores that other processes used meanwhile.
The script sets XLA_PYTHON_CLIENT_PREALLOCATE=false (unless set), so that
PyTorch finds GPU memory in the same process.

The PyTorch reference (torchvision or timm when importable, else
resnet_jax.interop.torch_reference) runs the same rows on one device with the
per-device batch (inference timed as above): forward, cross-entropy with
label smoothing 0.1, backward, SGD with momentum 0.875; on GPUs
channels_last and autocast for bf16/fp16 (GradScaler for fp16), TF32 only
for tf32; on CPUs fp32 with torch.set_num_threads(cores) (autocast for
bf16/fp16 rows). The ratio is resnet_jax img/s per device over the
reference's img/s. A PyTorch that cannot use the device JAX runs on (a CUDA
13 build on a CUDA 12 driver, a CPU build on a GPU node) drops the PyTorch
column with a warning; with --torch it is an error instead.
"""

# isort: off
import resnet_jax  # noqa: F401  first, before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

import argparse
import datetime
import functools
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax import models, parallel, precision, quiet
from resnet_jax.bench.hardware import mfu, model_flops_per_image, peak_flops
from resnet_jax.data.source import num_threads
from resnet_jax.errors import ConfigError
from resnet_jax.interop import onnx as onnx_interop
from resnet_jax.models import flops, naming
from resnet_jax.train import setup

MODES = ("train", "infer")
DATA = ("synthetic", "dali")
# NVIDIA's inference tables' batch sizes (ConvNets' resnet50v1.5/README.md goes 1, 2, 4, ...).
INFER_BATCHES_GPU = (1, 8, 32, 64, 128, 256)
LATENCY_PERCENTILES = (90, 95, 99)
# The ONNX graph's precision for a row's (bf16 rows have none: ONNX Runtime's providers run
# no bf16 convolutions).
ONNX_PRECISIONS = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16"}

# timm's names for the models it has (torchvision has only ResNet50; NVIDIA's
# SE-ResNeXt, with 16-unit SE gates, is in neither: resnet_jax.interop.torch_reference has it).
_TIMM_NAMES = {"resnet50_v15": "resnet50", "resnext101_32x4d": "resnext101_32x4d",
               "seresnext101_32x4d": "seresnext101_32x4d"}


def _csv(choices=None, cast=str):
    def parse(text):
        values = [cast(v) for v in text.split(",") if v]
        bad = [v for v in values if choices is not None and v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a comma-separated list of {', '.join(choices or ['values'])}")
        return values
    return parse


def _archs(text: str) -> list[str]:
    """--archs: the project's names or NVIDIA's, as the project's."""
    try:
        return [models.canonical(name, flag="--archs") for name in _csv()(text)]
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process) so far; None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def others_load(start, end, wall: float) -> float | None:
    """The share of all cores that other processes kept busy between two _cpu_seconds().

    None when unknown, or for less than a second (the machine's counters tick at 10 ms).
    """
    if start is None or end is None or wall < 1.0:
        return None
    others = (end[0] - start[0]) - (end[1] - start[1])
    return min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1))))


def time_steps(dispatch, wait, warmup: int, steps: int) -> tuple[float, list[float], float]:
    """(first step's seconds, per-step seconds of the timed steps, others' load) of a step.

    `dispatch()` starts one step and returns what `wait` blocks on. Timed steps
    keep one step queued: step i+1 is dispatched before waiting for step i, and
    a step's time runs from the previous wait's end to its own. One more step
    than timed is dispatched, so that a framework that runs each step inside
    `dispatch` (eager PyTorch on a CPU) is timed on full steps too.
    """
    start = time.perf_counter()
    wait(dispatch())
    first = time.perf_counter() - start
    for _ in range(warmup):
        wait(dispatch())
    times = []
    pending = dispatch()
    cpu, last = _cpu_seconds(), time.perf_counter()
    start = last
    for _ in range(steps):
        handle = dispatch()
        wait(pending)
        now = time.perf_counter()
        times.append(now - last)
        last, pending = now, handle
    load = others_load(cpu, _cpu_seconds(), last - start)
    wait(pending)
    return first, times, load


def time_latency(run_once, warmup: int, steps: int) -> tuple[float, list[float], float]:
    """(first call's seconds, per-call seconds of the timed calls, others' load) of
    `run_once()`, which takes a batch and returns when its result is ready: one batch in
    flight at a time, so that each call's time is a latency."""
    start = time.perf_counter()
    run_once()
    first = time.perf_counter() - start
    for _ in range(warmup):
        run_once()
    times = []
    cpu, begin = _cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return first, times, others_load(cpu, _cpu_seconds(), time.perf_counter() - begin)


def latency_summary(first: float, times: list[float], load: float | None, batch: int) -> dict:
    """img/s over the mean latency, and the latency's mean and percentiles in ms."""
    mean = statistics.fmean(times)
    row = {"images_per_sec": batch / mean, "step_ms": 1e3 * mean, "latency_ms_avg": 1e3 * mean}
    for q in LATENCY_PERCENTILES:
        row[f"latency_ms_p{q}"] = 1e3 * float(np.percentile(times, q))
    return {**row, "step_ms_min": 1e3 * min(times), "step_ms_max": 1e3 * max(times),
            "compile_s": first, "others_load": load}


def _summary(first: float, times: list[float], load: float | None, batch: int) -> dict:
    median = statistics.median(times)
    times = sorted(times)
    return {"images_per_sec": batch / median, "step_ms": 1e3 * median,
            "step_ms_min": 1e3 * times[0], "step_ms_max": 1e3 * times[-1], "compile_s": first,
            "others_load": load}


def _config(args, arch: str, precision_name: str, batch: int, data: str):
    """The arch's recipe with the row's precision, batch, image size and data source."""
    # resnet_tiny (for dry runs) has no recipe of its own: it borrows RN50 v1.5's.
    config = config_lib.recipe(arch if arch in models.FULL_SIZE else "resnet50_v15")
    config.arch = arch
    config.precision = precision_name
    config.per_device_batch_size = batch
    config.image_size = args.image_size
    config.data.backend = "synthetic" if data == "synthetic" else args.dali_backend
    config.data.num_threads = args.dali_threads
    config.data.root = args.data_root or ""
    return config


def _memory(compiled) -> int | None:
    """XLA's compiled size: arguments + outputs + temporaries, less donated (aliased) buffers."""
    try:
        m = compiled.memory_analysis()
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def _peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_jax(args, arch: str, precision_name: str, batch: int, data: str, mode: str) -> dict:
    """One resnet_jax row: the trainer's train step, or an eval-mode apply of its state."""
    config = _config(args, arch, precision_name, batch, data)
    # The trainer's set-up, without a workdir (nothing read or written) and without val/.
    run = setup.setup_train_loop(config, None, with_eval=False)
    mesh, global_batch = run.mesh, run.train_batch
    batches = run.data.train(0)
    if mode == "train":
        box = {"state": run.state}

        def dispatch():
            box["batch"] = next(batches)
            box["state"], metrics = run.train_step(box["state"], box["batch"])
            return metrics["loss"]

        wait = jax.device_get  # a host sync on the loss
        step_fn, example = run.train_step, lambda: (box["state"], box["batch"])
    else:
        model = models.build(config, train=False)
        variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
        replicated = parallel.replicated(mesh)
        apply = jax.jit(lambda v, images: model.apply(v, images, train=False),
                        in_shardings=(replicated, parallel.batch_sharded(mesh)),
                        out_shardings=parallel.batch_sharded(mesh))

        box = {}

        def run_once():
            box["images"] = next(batches)["images"]
            box["logits"] = jax.block_until_ready(apply(variables, box["images"]))

        step_fn, example = apply, lambda: (variables, box["images"])
    if mode == "train":
        summary = _summary(*time_steps(dispatch, wait, args.warmup_steps, args.steps),
                           global_batch)
    else:
        summary = latency_summary(*time_latency(run_once, args.warmup_steps, args.steps),
                                  global_batch)
    xla_memory = _memory(step_fn.lower(*example()).compile())  # the jit cache: no recompilation
    row = {"arch": arch, "mode": mode, "data": data if data == "synthetic" else
           config.data.backend, "precision": precision_name, "per_device_batch": batch,
           "global_batch": global_batch, "devices": mesh.size, "image_size": args.image_size,
           **summary, "peak_memory_bytes": _peak_memory(), "xla_memory_bytes": xla_memory}
    if mode == "infer" and args.onnx and data == "synthetic" and precision_name in ONNX_PRECISIONS:
        # What the ONNX columns need: the weights, and one device's batch with its logits.
        images, logits = (np.asarray(jax.device_get(box[k][:batch]), np.float32)
                          for k in ("images", "logits"))
        row["_onnx_input"] = (config, variables, images, logits)
    return row


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


def _torch_batches(args, config, batch: int, data: str, device, on_gpu: bool):
    """Endless (images NCHW, labels) on `device`: random, or resnet_jax's DALI pipeline."""
    import torch

    size = config.image_size
    if data == "synthetic":
        images = torch.randn(batch, 3, size, size, device=device)
        if on_gpu:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, config.num_classes, (batch,), device=device)
        while True:
            yield images, labels
    from resnet_jax.data import dali, folders

    pipe = dali.single_train_pipeline(
        folders.scan_split(args.data_root, "train"), batch_size=batch, image_size=size,
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


def bench_torch(args, arch: str, precision_name: str, batch: int, data: str, mode: str) -> dict:
    """The PyTorch reference row: one device, the per-device batch."""
    import torch
    from torch import nn

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    config = _config(args, arch, precision_name, batch, data)
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
    model, description = torch_model(arch)
    layout = torch.channels_last if on_gpu else torch.contiguous_format
    model = model.to(device, memory_format=layout)
    batches = _torch_batches(args, config, batch, data, device, on_gpu)
    if mode == "train":
        model.train()
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              # A rate as small as the first warm-up steps' (speed only).
                              lr=config.base_learning_rate * batch / 256 / 1000,
                              momentum=config.momentum)
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        scaler = torch.amp.GradScaler(device.type) if precision_name == "fp16" else None

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

        wait = torch.Tensor.item
    else:
        model.eval()

        def run_once():
            with torch.inference_mode(), autocast():
                model(next(batches)[0])
            if on_gpu:
                torch.cuda.synchronize()

    if mode == "train":
        summary = _summary(*time_steps(dispatch, wait, args.warmup_steps, args.steps), batch)
    else:
        summary = latency_summary(*time_latency(run_once, args.warmup_steps, args.steps), batch)
    result = {f"torch_{k}": v for k, v in summary.items()}
    result["torch_peak_memory_bytes"] = torch.cuda.max_memory_allocated() if on_gpu else None
    result["torch_model"] = description
    result["torch_precision"] = precision_name
    return result


def _free_torch_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def torch_device_mismatch(jax_platform: str) -> str | None:
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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}G"


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _others(row: dict) -> str:
    loads = [v for v in (row["others_load"], row.get("torch_others_load")) if v is not None]
    return f"{100 * max(loads):.0f}%" if loads else "n/a"


def _infer_batches(args, on_gpu: bool) -> list[int]:
    return args.batch_sizes or (list(INFER_BATCHES_GPU) if on_gpu else [1, 8])


def _train_batches(args, on_gpu: bool) -> list[int]:
    return args.batch_sizes or [256 if on_gpu else 8]


def bench_onnx(args, sessions: dict, folder: str, row: dict, onnx_input) -> dict:
    """The ONNX columns of an inference row: the row's model exported once per arch and
    precision (`sessions` keeps them), run by ONNX Runtime on one device's batch."""
    onnx_precision = ONNX_PRECISIONS[row["precision"]]
    config, variables, images, logits = onnx_input
    key = (row["arch"], row["precision"])
    if key not in sessions:
        path = os.path.join(folder, f"{row['arch']}_{row['precision']}.onnx")
        start = time.perf_counter()
        onnx_interop.export_variables(
            row["arch"], jax.device_get(variables), path, num_classes=config.num_classes,
            image_size=args.image_size, precision=onnx_precision,
            model_options=models.options(config))
        export_s = time.perf_counter() - start
        sessions[key] = (onnx_interop.session(path, provider=args.onnx_provider,
                                             precision=row["precision"]), export_s)
    session, export_s = sessions[key]
    runner = onnx_interop.BoundRunner(session, images)
    summary = latency_summary(*time_latency(runner, args.warmup_steps, args.steps),
                              row["per_device_batch"])
    got = runner.logits()
    return {**{f"onnx_{k}": v for k, v in summary.items()}, "onnx_provider": runner.provider,
            "onnx_precision": onnx_precision, "onnx_export_s": export_s,
            "onnx_max_rel_diff": float(np.abs(got - logits).max() / np.abs(logits).max())}


def print_table(rows: list[dict]) -> None:
    """The training rows, then the inference rows, each kind in its own table."""
    train = [r for r in rows if r["mode"] == "train"]
    infer = [r for r in rows if r["mode"] == "infer"]
    if train:
        print_train_table(train)
    if infer:
        if train:
            print()
        print_infer_table(infer)


def print_train_table(rows: list[dict]) -> None:
    """One line per row; the ratio is resnet_jax img/s per device over the reference's.

    'others' is the largest share of the cores that other processes used while
    either framework's timed steps ran (Linux; a shared machine's noise).
    """
    head = (f"{'arch':<20} {'mode':<5} {'data':<9} {'prec':<4} {'batch':>5} {'img/s':>8} "
            f"{'step ms':>8} {'compile s':>9} {'peak mem':>8} {'xla mem':>8} {'MFU':>6} "
            f"{'torch img/s':>11} {'ratio':>6} {'others':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['arch']:<20} {r['mode']:<5} {r['data']:<9} {r['precision']:<4} "
              f"{r['per_device_batch']:>5} {r['images_per_sec']:>8.1f} {r['step_ms']:>8.1f} "
              f"{r['compile_s']:>9.1f} {_gib(r['peak_memory_bytes']):>8} "
              f"{_gib(r['xla_memory_bytes']):>8} {_mfu(r):>6} "
              f"{_fmt(r.get('torch_images_per_sec'), '.1f'):>11} "
              f"{_fmt(r.get('ratio'), '.2f'):>6} {_others(r):>6}")


def _latencies(row: dict, prefix: str = "") -> str:
    keys = ["latency_ms_avg"] + [f"latency_ms_p{q}" for q in LATENCY_PERCENTILES]
    return " ".join(f"{_fmt(row.get(prefix + k), '.1f'):>7}" for k in keys)


def print_infer_table(rows: list[dict]) -> None:
    """One line per row: resnet_jax's img/s and latency (ms: mean, p90, p95, p99), then
    ONNX Runtime's (with --onnx) and the PyTorch reference's img/s; the ratio is resnet_jax
    img/s per device over the reference's."""
    latency = " ".join(f"{h:>7}" for h in ("avg ms", "p90", "p95", "p99"))
    head = (f"{'arch':<20} {'mode':<5} {'data':<9} {'prec':<4} {'batch':>5} {'img/s':>8} "
            f"{latency} {'compile s':>9} {'MFU':>6} | {'onnx img/s':>10} {latency} | "
            f"{'torch img/s':>11} {'ratio':>6} {'others':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['arch']:<20} {r['mode']:<5} {r['data']:<9} {r['precision']:<4} "
              f"{r['per_device_batch']:>5} {r['images_per_sec']:>8.1f} {_latencies(r)} "
              f"{r['compile_s']:>9.1f} {_mfu(r):>6} | "
              f"{_fmt(r.get('onnx_images_per_sec'), '.1f'):>10} {_latencies(r, 'onnx_')} | "
              f"{_fmt(r.get('torch_images_per_sec'), '.1f'):>11} "
              f"{_fmt(r.get('ratio'), '.2f'):>6} {_others(r):>6}")
    providers = sorted({f"{r['onnx_provider']} ({r['onnx_precision']} graph)" for r in rows
                        if r.get("onnx_provider")})
    if providers:
        print(f"ONNX Runtime: {', '.join(providers)}; model alone, batch already on the device")


def _mfu(row: dict) -> str:
    return "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"


def _parser(on_gpu: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=_archs, default=["resnet50_v15"],
                        help=f"comma-separated, of {', '.join(models.FULL_SIZE)} (or NVIDIA's "
                        f"names: {', '.join(models.ALIASES)}; resnet_tiny for a dry run)")
    parser.add_argument("--precisions", type=_csv(precision.PRECISIONS),
                        default=["bf16" if on_gpu else "fp32"],
                        help="comma-separated, of fp32, tf32, bf16, fp16 (default: bf16 on "
                        "GPUs, fp32 otherwise)")
    parser.add_argument("--batch-sizes", type=_csv(cast=int),
                        help="per device, comma-separated, for both modes (default: train "
                        f"256 on GPUs, 8 otherwise; infer {','.join(map(str, INFER_BATCHES_GPU))} "
                        "on GPUs, 1,8 otherwise)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--modes", type=_csv(MODES), default=list(MODES),
                        help="comma-separated, of train, infer")
    parser.add_argument("--data", type=_csv(DATA), default=list(DATA),
                        help="comma-separated, of synthetic, dali (dali_gpu on GPUs, else "
                        "dali_cpu)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="DIR/train/<class>/*.jpg for the dali rows (default: a generated "
                        "tree in a temporary folder)")
    parser.add_argument("--dali-threads", type=int, default=0,
                        help="DALI CPU threads per pipeline (0: the trainer's choice)")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                        help="run the PyTorch reference (default: when torch imports)")
    parser.add_argument("--onnx", action="store_true",
                        help="also time the inference rows' model exported to ONNX, in ONNX "
                        "Runtime (needs pip install -e '.[export]')")
    parser.add_argument("--onnx-provider", default="auto",
                        choices=("auto", "tensorrt", "cuda", "cpu"),
                        help="ONNX Runtime's execution provider (default: the first of "
                        "tensorrt, cuda, cpu that this onnxruntime build has)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    return parser


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = _parser(on_gpu)
    args = parser.parse_args()
    quiet.keep_own_lines()
    args.dali_backend = "dali_gpu" if on_gpu else "dali_cpu"
    torch_version = _torch_version()
    if args.torch and torch_version is None:
        parser.error("--torch: torch does not import; install it or pass --no-torch")
    run_torch = torch_version is not None if args.torch is None else args.torch
    if run_torch and (mismatch := torch_device_mismatch(jax.default_backend())):
        if args.torch:  # asked for by name: no comparison is better than a wrong one
            parser.exit(2, f"error: {mismatch}\n")
        # E.g. a CUDA 13 build of PyTorch on a CUDA 12 driver: the JAX rows are still worth
        # having, without the PyTorch column.
        print(f"warning: no PyTorch column: {mismatch}", file=sys.stderr, flush=True)
        run_torch = False
    if args.steps < 1 or args.warmup_steps < 0:
        parser.error("--steps must be at least 1 and --warmup-steps at least 0")
    onnx_versions = None
    if args.onnx:
        try:
            onnx_interop.require("torch", "onnx", "onnxruntime", purpose="--onnx")
            onnx_interop.providers(args.onnx_provider)
        except ConfigError as error:
            parser.exit(2, f"error: {error}\n")
        import onnx
        import onnxruntime

        onnx_versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                         "exporter": "torchscript",
                         "opset": onnx_interop.OPSETS["torchscript"]}

    batches = {"train": _train_batches(args, on_gpu), "infer": _infer_batches(args, on_gpu)}
    tmp = None
    if "dali" in args.data and not args.data_root:
        from resnet_jax.data import demo

        tmp = tempfile.TemporaryDirectory(prefix="benchmark_jpegs_")
        biggest = max(max(batches[m]) for m in args.modes) * jax.device_count()
        per_class = max(2, math.ceil(2 * biggest / 5))
        print(f"no --data-root: drawing 5 x {per_class} JPEGs of 384 px into {tmp.name}",
              flush=True)
        args.data_root = demo.make_demo_dataset(tmp.name, num_classes=5,
                                                train_per_class=per_class, val_per_class=1,
                                                image_size=384)

    device_kind = jax.devices()[0].device_kind
    rows = []
    onnx_folder = tempfile.TemporaryDirectory(prefix="benchmark_onnx_") if args.onnx else None
    sessions: dict = {}
    for arch in args.archs:
        macs = flops.forward_macs(models.create(arch), args.image_size)
        for precision_name in args.precisions:
            peak = peak_flops(device_kind, precision_name)
            for mode in args.modes:
                for batch in batches[mode]:
                    for data in args.data:
                        label = f"{arch} {mode} {data} {precision_name} batch {batch}"
                        print(f"running {label} ...", flush=True)
                        row = bench_jax(args, arch, precision_name, batch, data, mode)
                        onnx_input = row.pop("_onnx_input", None)
                        model_flops = model_flops_per_image(macs, train=mode == "train")
                        row["gflops_per_image"] = model_flops / 1e9
                        row["mfu"] = mfu(row["images_per_sec"], model_flops, peak,
                                         row["devices"])
                        if onnx_input is not None:
                            print(f"running {label} (ONNX Runtime) ...", flush=True)
                            row.update(bench_onnx(args, sessions, onnx_folder.name, row,
                                                  onnx_input))
                        del onnx_input
                        gc.collect()  # this row's state, batches and DALI pipeline
                        if run_torch:
                            print(f"running {label} (PyTorch reference) ...", flush=True)
                            row.update(bench_torch(args, arch, precision_name, batch, data,
                                                   mode))
                            _free_torch_memory()
                            row["torch_mfu"] = mfu(row["torch_images_per_sec"], model_flops,
                                                   peak)
                            row["ratio"] = (row["images_per_sec"] / row["devices"]
                                            / row["torch_images_per_sec"])
                        rows.append(row)
        sessions.clear()  # this arch's ONNX Runtime sessions
    header = {
        "device_kind": device_kind, "platform": jax.default_backend(),
        "devices": jax.device_count(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "jax": jax.__version__, "torch": torch_version, **(onnx_versions or {}),
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "timing": "train: median of per-step intervals, one step queued ahead; infer: "
                  "per-batch latency, blocking on each batch's logits",
    }
    onnx_note = (f", onnxruntime {onnx_versions['onnxruntime']}" if onnx_versions else "")
    print(f"\n{device_kind} x{jax.device_count()} ({jax.default_backend()}), "
          f"{_cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__}, torch {torch_version}"
          f"{onnx_note}; {args.image_size} px, batch per device")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    for folder in (tmp, onnx_folder):
        if folder is not None:
            folder.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch
    parallel.configure_runtime()  # the trainer's XLA flags and compilation cache
    main()
