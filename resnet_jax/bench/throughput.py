"""One row of scripts/benchmark.py: resnet_jax's training or inference speed on the trainer's
own set-up, its MFU, and the ONNX Runtime and PyTorch columns beside it.

A row is the trainer's set-up (resnet_jax.train.setup.setup_train_loop) of
the arch's recipe (configs/<arch>.py) with the row's precision, batch and
image size, on a mesh of all devices: the same data source, model, state and
train step; inference is the eval-mode jitted apply of that state
(resnet_jax.models.predict). Timing: resnet_jax.bench.timing.
"""

import dataclasses
import gc
import itertools
import sys

import jax
import numpy as np

from resnet_jax import models
from resnet_jax.bench import compiled as compiled_lib
from resnet_jax.bench import torch_baseline
from resnet_jax.bench.onnx_runtime import ONNX_PRECISIONS, OnnxColumns
from resnet_jax.bench.timing import latency_summary, step_summary, time_latency, time_steps
from resnet_jax.hardware import mfu, model_flops_per_image, peak_flops
from resnet_jax.models import flops
from resnet_jax.models.predict import predict_step
from resnet_jax.train import setup


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every row shares: the command line's image size, data and step counts."""

    image_size: int = 224
    dali_backend: str = "dali_cpu"  # the backend of the 'dali' rows
    dali_threads: int = 0  # per pipeline; 0: the trainer's choice
    data_root: str = ""  # root/train/<class>/*.jpg for the 'dali' rows
    warmup_steps: int = 5
    steps: int = 20


def row_config(settings: Settings, arch: str, precision_name: str, batch: int, data: str):
    """The arch's recipe with the row's precision, per-device batch, image size and data."""
    config = compiled_lib.arch_recipe(arch, precision_name, batch, settings.image_size)
    config.data.backend = "synthetic" if data == "synthetic" else settings.dali_backend
    config.data.num_threads = settings.dali_threads
    config.data.root = settings.data_root or ""
    return config


def xla_memory(compiled) -> int | None:
    """XLA's compiled size: arguments + outputs + temporaries, less donated (aliased) buffers."""
    try:
        m = compiled.memory_analysis()
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def peak_memory() -> int | None:
    """The device allocator's peak so far in this process (GPUs), else None."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def counted(compiled, config) -> dict:
    """On a GPU this project can count (resnet_jax.bench.compiled), the measured program's
    kernels, bytes per image and per-kernel roofline ceiling; else nothing."""
    name = compiled_lib.target_for(jax.devices()[0].device_kind)
    if jax.default_backend() != "gpu" or name is None:
        return {}
    try:
        counts = compiled_lib.count(compiled, compiled_lib.TARGETS[name],
                                    config.per_device_batch_size,
                                    precision_name=config.precision)
    except Exception as error:  # noqa: BLE001  a program the counter cannot read keeps its row
        print(f"warning: the compiled program was not counted: {type(error).__name__}: "
              f"{error}", file=sys.stderr, flush=True)
        return {}
    return {"kernels": counts.kernels, "bytes_per_image": counts.bytes_per_image,
            "ceiling_images_per_sec": counts.images_per_sec, "ceiling_target": name}


def jax_row(settings: Settings, config, data: str, mode: str, *, keep_batch: bool = False):
    """(row, kept): one resnet_jax row of `config` (row_config's); with `keep_batch`, the
    inference row's variables, one device's batch and its logits (on the host), else None."""
    # The trainer's set-up, without a workdir (nothing read or written) and without val/.
    run = setup.setup_train_loop(config, None, with_eval=False)
    mesh, global_batch = run.mesh, run.train_batch
    batches = run.data.train(0)
    warmup, steps = settings.warmup_steps, settings.steps
    box = {"state": run.state}
    if mode == "train":
        def dispatch():
            box["batch"] = next(batches)
            box["state"], metrics = run.train_step(box["state"], box["batch"])
            return metrics["loss"]

        # A host sync on the loss.
        summary = step_summary(*time_steps(dispatch, jax.device_get, warmup, steps),
                               global_batch)
        step_fn, example = run.train_step, (box["state"], box["batch"])
    else:
        apply = predict_step(models.build(config, train=False), mesh)
        variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}

        def run_once():
            box["images"] = next(batches)["images"]
            box["logits"] = jax.block_until_ready(apply(variables, box["images"]))

        summary = latency_summary(*time_latency(run_once, warmup, steps), global_batch)
        step_fn, example = apply, (variables, box["images"])
    compiled = step_fn.lower(*example).compile()  # the jit cache: no recompilation
    row = {"arch": config.arch, "mode": mode, "data": data if data == "synthetic" else
           config.data.backend, "precision": config.precision,
           "per_device_batch": config.per_device_batch_size, "global_batch": global_batch,
           "devices": mesh.size, "image_size": config.image_size, **summary,
           "peak_memory_bytes": peak_memory(), "xla_memory_bytes": xla_memory(compiled),
           **counted(compiled, config)}
    kept = None
    if mode == "infer" and keep_batch:
        images, logits = (np.asarray(jax.device_get(box[k][:config.per_device_batch_size]),
                                     np.float32) for k in ("images", "logits"))
        kept = (variables, images, logits)
    return row, kept


def measure(settings: Settings, arch: str, precision_name: str, batch: int, data: str,
            mode: str, *, macs: int, peak: float | None, onnx=None,
            with_torch: bool = False, partial=None) -> dict:
    """A whole row: resnet_jax's figures and MFU, then ONNX Runtime's (`onnx`, an
    OnnxColumns, for synthetic fp32/tf32/fp16 inference rows) and the PyTorch reference's
    with the ratio (`with_torch`); prints a line before each. `partial(row)` is called with
    resnet_jax's figures before the PyTorch reference runs."""
    label = f"{arch} {mode} {data} {precision_name} batch {batch}"
    print(f"running {label} ...", flush=True)
    config = row_config(settings, arch, precision_name, batch, data)
    with_onnx = (onnx is not None and mode == "infer" and data == "synthetic"
                 and precision_name in ONNX_PRECISIONS)
    row, kept = jax_row(settings, config, data, mode, keep_batch=with_onnx)
    model_flops = model_flops_per_image(macs, train=mode == "train")
    row["gflops_per_image"] = model_flops / 1e9
    row["mfu"] = mfu(row["images_per_sec"], model_flops, peak, row["devices"])
    if kept is not None:
        print(f"running {label} (ONNX Runtime) ...", flush=True)
        row.update(onnx.columns(row, config, *kept, warmup=settings.warmup_steps,
                                steps=settings.steps))
    del kept
    gc.collect()  # this row's state, batches and DALI pipeline
    if with_torch and partial is not None:
        partial(dict(row))
    if with_torch:
        print(f"running {label} (PyTorch reference) ...", flush=True)
        row.update(torch_baseline.torch_row(config, data, mode, warmup=settings.warmup_steps,
                                            steps=settings.steps))
        torch_baseline.free_memory()
        row["torch_mfu"] = mfu(row["torch_images_per_sec"], model_flops, peak)
        row["ratio"] = row["images_per_sec"] / row["devices"] / row["torch_images_per_sec"]
    return row


def measure_rows(settings: Settings, archs, precisions, modes, batches: dict, data, *,
                 onnx_provider: str | None = None, with_torch: bool = False,
                 on_rows=None) -> list[dict]:
    """Every row, in the order arch, precision, mode, batch (`batches[mode]`), data; with
    `onnx_provider`, ONNX Runtime columns (each arch's sessions dropped after its rows).

    `on_rows(rows)` is called with the rows so far whenever one is finished, and with a
    row's resnet_jax figures before its PyTorch reference runs, so that a run killed
    part-way can keep what it measured."""
    on_rows = on_rows or (lambda rows: None)
    device_kind = jax.devices()[0].device_kind
    onnx = OnnxColumns(onnx_provider) if onnx_provider else None
    rows = []
    try:
        for arch in archs:
            macs = flops.forward_macs(models.create(arch), settings.image_size)
            for precision_name, mode in itertools.product(precisions, modes):
                peak = peak_flops(device_kind, precision_name)
                for batch, source in itertools.product(batches[mode], data):
                    rows.append(measure(
                        settings, arch, precision_name, batch, source, mode, macs=macs,
                        peak=peak, onnx=onnx, with_torch=with_torch,
                        partial=lambda row: on_rows([*rows, row])))
                    on_rows(list(rows))
            if onnx is not None:
                onnx.clear()  # this arch's ONNX Runtime sessions
    finally:
        if onnx is not None:
            onnx.close()
    return rows
