"""A resnet_jax checkpoint out to PyTorch, ONNX or Triton: `python -m resnet_jax.export`.

  python -m resnet_jax.export --checkpoint runs/rn50 --format torch --output rn50.pth \
      [--naming nvidia|nvidia_ngc|nvidia_trt|torchvision|timm] [--ema]
  python -m resnet_jax.export --checkpoint runs/rn50 --format onnx --output rn50.onnx \
      [--precision fp32|fp16] [--ema] [--exporter torchscript|dynamo]
  python -m resnet_jax.export --checkpoint runs/rn50 --format triton --output model_repository \
      [--name rn50] [--max-batch-size 256] [--precision ...] [--ema]

torch: a `state_dict` (torch tensors, float32) that NVIDIA's ConvNets models,
torchvision's resnet50 or timm's models load with `load_state_dict(...,
strict=True)`, in the naming asked for (NVIDIA's by default).
onnx: a graph from `images` float32 NHWC [N, H, W, 3], normalized as in
training, to `logits` float32 [N, classes], N dynamic, H = W = the
checkpoint's evaluation crop (see resnet_jax/interop/onnx.py).
triton: that graph in a Triton model repository, OUTPUT/NAME/1/model.onnx
with OUTPUT/NAME/config.pbtxt (ONNX Runtime backend, dynamic batching, one
GPU instance) and OUTPUT/NAME/labels.txt (the class names).
`--ema` exports the checkpoint's moving average of the weights instead of the weights.
`--checkpoint WORKDIR/best` exports the best evaluation's checkpoint of a training run.
"""

import argparse
import os
import sys

import jax
import numpy as np

from resnet_jax import checkpoint, quiet
from resnet_jax.data.folders import display_names
from resnet_jax.errors import ConfigError, exit_code
from resnet_jax.interop import onnx as onnx_interop
from resnet_jax.interop import torch as torch_interop
from resnet_jax.models.naming import TORCH_NAMINGS

FORMATS = ("torch", "onnx", "triton")
# Options that mean something for some formats only, and their defaults.
_FORMAT_OPTIONS = {"naming": (("torch",), "nvidia"), "precision": (("onnx", "triton"), "fp32"),
                   "exporter": (("onnx", "triton"), "torchscript"), "name": (("triton",), None),
                   "max_batch_size": (("triton",), 256)}


def restore(saved: checkpoint.Saved, *, ema: bool = False) -> dict:
    """The checkpoint's model (or its EMA), {'params', 'batch_stats'}, as numpy arrays."""
    return jax.device_get(saved.restore_variables(
        jax.sharding.SingleDeviceSharding(jax.devices()[0]), ema=ema))


def _output_folder(output: str) -> None:
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConfigError(f"--output {output!r}: the folder {folder!r} does not exist")


def export_torch(checkpoint_path: str, output: str, *, naming: str = "nvidia",
                 ema: bool = False) -> tuple[str, int]:
    """Writes the checkpoint's model as a PyTorch state dict; returns (arch, tensors)."""
    saved = checkpoint.Saved(checkpoint_path)
    arch = saved.meta["arch"]
    padding = saved.meta.get("model_options", {}).get("padding", "symmetric")
    if padding != "symmetric":
        raise ConfigError(
            f"checkpoint {checkpoint_path!r} holds a model with TensorFlow's padding "
            f"({padding!r}), which PyTorch's ResNets do not have: their logits would differ. "
            "Export it with --format onnx instead")
    variables = restore(saved, ema=ema)
    state_dict = torch_interop.flax_to_torch(arch, variables, naming=naming)
    try:
        import torch  # here, not above: only --format torch needs PyTorch
    except ImportError as error:
        raise ConfigError("writing a .pth file needs PyTorch: pip install torch "
                          "(the CPU build is enough)") from error
    _output_folder(output)
    # Copies: arrays read back from a checkpoint are read-only, which torch warns about.
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, output)
    return arch, len(state_dict)


def _write_onnx(saved: checkpoint.Saved, output: str, *, precision: str, ema: bool,
                exporter: str) -> None:
    meta = saved.meta
    onnx_interop.reference_options(meta.get("model_options"))  # refused before the restore
    onnx_interop.export_variables(
        meta["arch"], restore(saved, ema=ema), output, num_classes=meta["num_classes"],
        image_size=meta["eval_image_size"], precision=precision,
        model_options=meta.get("model_options"), exporter=exporter,
        metadata={"checkpoint": saved.directory, "step": saved.step, "ema": ema,
                  **{k: meta[k] for k in ("mean_rgb", "std_rgb") if k in meta}})


def export_onnx(checkpoint_path: str, output: str, *, precision: str = "fp32",
                ema: bool = False, exporter: str = "torchscript") -> dict:
    """Writes the checkpoint's model as an ONNX file; returns the checkpoint's meta."""
    onnx_interop.require("torch", "onnx")
    _output_folder(output)
    saved = checkpoint.Saved(checkpoint_path)
    _write_onnx(saved, output, precision=precision, ema=ema, exporter=exporter)
    return saved.meta


def export_triton(checkpoint_path: str, repository: str, *, name: str | None = None,
                  max_batch_size: int = 256, precision: str = "fp32", ema: bool = False,
                  exporter: str = "torchscript") -> tuple[dict, dict]:
    """Writes REPOSITORY/NAME/{config.pbtxt, labels.txt, 1/model.onnx}; returns (the
    checkpoint's meta, those paths). NAME defaults to the arch; a model of that name
    already in the repository is replaced."""
    onnx_interop.require("torch", "onnx")
    if max_batch_size < 1:
        raise ConfigError(f"--max-batch-size {max_batch_size}: give 1 or more")
    _output_folder(repository)
    saved = checkpoint.Saved(checkpoint_path)
    meta = saved.meta
    name = onnx_interop.check_triton_name(name or meta["arch"])
    paths = onnx_interop.triton_paths(repository, name)
    os.makedirs(os.path.dirname(paths["model"]), exist_ok=True)
    _write_onnx(saved, paths["model"], precision=precision, ema=ema, exporter=exporter)
    with open(paths["labels"], "w") as f:
        f.write("".join(f"{label}\n" for label in display_names(meta)))
    with open(paths["config"], "w") as f:
        f.write(onnx_interop.triton_config(
            name, image_size=meta["eval_image_size"], num_classes=meta["num_classes"],
            max_batch_size=max_batch_size, mean_rgb=meta.get("mean_rgb"),
            std_rgb=meta.get("std_rgb"), labels=os.path.basename(paths["labels"])))
    return meta, paths


def _format_options(args) -> None:
    """Fills in the defaults of the format's options; refuses another format's."""
    for option, (formats, default) in _FORMAT_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            setattr(args, option, default)
        elif args.format not in formats:
            flag = "--" + option.replace("_", "-")
            raise ConfigError(f"{flag} is for --format {' or '.join(formats)}, not "
                              f"{args.format}: drop it")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.export",
        description="Writes a resnet_jax checkpoint's model for another framework.")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a training workdir, its checkpoints folder, one step folder, or "
                             "WORKDIR/best (the best evaluation's checkpoint)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="torch: a PyTorch state dict; onnx: an ONNX graph; triton: a "
                        "Triton model repository holding that graph")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="e.g. model.pth, model.onnx, or the Triton repository folder")
    parser.add_argument("--ema", action="store_true",
                        help="the moving average of the weights (trained with "
                             "--config.ema_decay) instead of the weights")
    parser.add_argument("--naming", choices=TORCH_NAMINGS,
                        help="torch: the state dict's key names (default: NVIDIA ConvNets')")
    parser.add_argument("--precision", choices=onnx_interop.PRECISIONS,
                        help="onnx, triton: the graph's weights and computation (default: fp32; "
                        "input and output are float32 either way)")
    parser.add_argument("--exporter", choices=onnx_interop.EXPORTERS,
                        help="onnx, triton: torch.onnx's TorchScript-based exporter (default, "
                        "opset 17) or its torch.export-based one (opset 18, needs onnxscript)")
    parser.add_argument("--name", help="triton: the model's name and folder (default: the arch)")
    parser.add_argument("--max-batch-size", type=int, metavar="N",
                        help="triton: the largest batch Triton forms (default: 256)")
    args = parser.parse_args(argv)
    quiet.keep_own_lines()
    return exit_code(_run, args)


def _run(args) -> None:
    ema = " (EMA)" if args.ema else ""
    _format_options(args)
    if args.format == "torch":
        arch, count = export_torch(args.checkpoint, args.output, naming=args.naming,
                                   ema=args.ema)
        print(f"exported {arch}{ema}: {count} tensors, {args.naming} naming -> {args.output}")
    elif args.format == "onnx":
        meta = export_onnx(args.checkpoint, args.output, precision=args.precision,
                           ema=args.ema, exporter=args.exporter)
        print(f"exported {meta['arch']}{ema} to ONNX in {args.precision}: {_signature(meta)}, "
              f"opset {onnx_interop.OPSETS[args.exporter]} -> {args.output} "
              f"({os.path.getsize(args.output) / 2**20:.1f} MiB)")
    else:
        meta, paths = export_triton(args.checkpoint, args.output, name=args.name,
                                    max_batch_size=args.max_batch_size,
                                    precision=args.precision, ema=args.ema,
                                    exporter=args.exporter)
        print(f"exported {meta['arch']}{ema} for Triton in {args.precision}: "
              f"{_signature(meta)}, max_batch_size {args.max_batch_size} -> "
              f"{', '.join(paths.values())}")


def _signature(meta: dict) -> str:
    size = meta["eval_image_size"]
    return (f"{onnx_interop.INPUT} [N, {size}, {size}, 3] float32 -> {onnx_interop.OUTPUT} "
            f"[N, {meta['num_classes']}] float32")


if __name__ == "__main__":
    sys.exit(main())
