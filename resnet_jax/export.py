"""A resnet_jax checkpoint out to PyTorch: `python -m resnet_jax.export`.

  python -m resnet_jax.export --checkpoint runs/rn50 --format torch --output rn50.pth \
      [--naming nvidia|nvidia_ngc|nvidia_trt|torchvision|timm] [--ema]

writes a `state_dict` (torch tensors, float32) that NVIDIA's ConvNets models,
torchvision's resnet50 or timm's models load with `load_state_dict(...,
strict=True)`, in the naming asked for (NVIDIA's by default). `--ema` exports
the checkpoint's moving average of the weights instead of the weights.
"""

import argparse
import os
import sys

import jax
import numpy as np

from resnet_jax import checkpoint, quiet
from resnet_jax.errors import ConfigError
from resnet_jax.torch import convert as torch_convert
from resnet_jax.train.state import abstract_variables

FORMATS = ("torch",)


def export_torch(checkpoint_path: str, output: str, *, naming: str = "nvidia",
                 ema: bool = False) -> tuple[str, int]:
    """Writes the checkpoint's model as a PyTorch state dict; returns (arch, tensors)."""
    saved = checkpoint.Saved(checkpoint_path)
    arch, num_classes = saved.meta["arch"], saved.meta["num_classes"]
    variables = saved.restore_model(abstract_variables(arch, num_classes),
                                    jax.sharding.SingleDeviceSharding(jax.devices()[0]), ema=ema)
    state_dict = torch_convert.flax_to_torch(arch, jax.device_get(variables), naming=naming)
    try:
        import torch
    except ImportError as error:
        raise ConfigError("writing a .pth file needs PyTorch: pip install torch "
                          "(the CPU build is enough)") from error
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConfigError(f"--output {output!r}: the folder {folder!r} does not exist")
    # Copies: arrays read back from a checkpoint are read-only, which torch warns about.
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, output)
    return arch, len(state_dict)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.export",
        description="Writes a resnet_jax checkpoint's model for another framework.")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a training workdir, its checkpoints folder, or one step folder")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, metavar="FILE", help="e.g. model.pth")
    parser.add_argument("--naming", default="nvidia", choices=torch_convert.NAMINGS,
                        help="the state dict's key names (default: NVIDIA ConvNets')")
    parser.add_argument("--ema", action="store_true",
                        help="the moving average of the weights (trained with "
                             "--config.ema_decay) instead of the weights")
    args = parser.parse_args(argv)
    quiet.keep_own_lines()
    try:
        arch, count = export_torch(args.checkpoint, args.output, naming=args.naming, ema=args.ema)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {arch}{' (EMA)' if args.ema else ''}: {count} tensors, {args.naming} "
          f"naming -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
