"""Weights from elsewhere to a resnet_jax checkpoint: `python -m resnet_jax.convert`.

  python -m resnet_jax.convert --arch resnet50_v15 \
      --torch-checkpoint nvidia_resnet50_200821.pth.tar --output weights/rn50

writes an Orbax checkpoint that `--config.mode=eval --config.checkpoint=DIR`,
`--config.init_checkpoint=DIR` (fine-tuning) and `python -m resnet_jax.classify`
restore directly. The PyTorch side (naming schemes, key mapping) is in
resnet_jax/torch/convert.py.
"""

import argparse
import os
import sys

import jax
import numpy as np

from resnet_jax import checkpoint, models, quiet
from resnet_jax.data import MEAN_RGB, STD_RGB
from resnet_jax.data.folders import imagenet_class_names
from resnet_jax.errors import ConfigError
from resnet_jax.torch import convert as torch_convert


def write_checkpoint(output: str, arch: str, variables: dict, *, source: str,
                     class_names: list[str] | None = None, model_options: dict | None = None,
                     mean_rgb=MEAN_RGB, std_rgb=STD_RGB, eval_resize_size: int = 256,
                     eval_image_size: int = 224, eval_antialias: bool = True) -> str:
    """Saves converted variables as step 0 of OUTPUT/checkpoints; returns that folder.

    The metadata records what the weights expect: `model_options` (ResNet
    keyword arguments besides the arch's, e.g. padding='same'), the input
    normalization (0-255 RGB mean and std) and the evaluation resize and crop.
    """
    num_classes = int(variables["params"]["fc"]["bias"].shape[0])
    if class_names is None:
        class_names = imagenet_class_names() if num_classes == 1000 else [
            f"class_{i}" for i in range(num_classes)]
    meta = {"arch": arch, "num_classes": num_classes, "class_names": class_names,
            "image_size": 224, "eval_resize_size": eval_resize_size,
            "eval_image_size": eval_image_size, "eval_antialias": eval_antialias,
            "mean_rgb": [float(m) for m in mean_rgb], "std_rgb": [float(s) for s in std_rgb],
            "model_options": dict(model_options or {}),
            "precision": "fp32", "epoch": 0, "source": source}
    return checkpoint.save_model(output, variables, meta)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.convert",
        description="Converts PyTorch ResNet weights (NVIDIA ConvNets, torchvision, timm) "
                    "to a resnet_jax checkpoint.")
    parser.add_argument("--arch", required=True,
                        help=f"one of {', '.join(models.names())}, or NVIDIA's name "
                             f"({', '.join(models.ALIASES)})")
    parser.add_argument("--torch-checkpoint", required=True, metavar="FILE",
                        help=".pth / .pth.tar file: a state dict, or a training checkpoint "
                             "holding one under 'state_dict' or 'model'")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="new folder for the checkpoint (DIR/checkpoints/0)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read files that hold Python objects besides tensors "
                             "(unpickling runs code from the file: only for files you trust)")
    args = parser.parse_args(argv)
    quiet.keep_own_lines()
    try:
        arch = models.canonical(args.arch, flag="--arch")
        if os.path.exists(os.path.join(args.output, "checkpoints")):
            raise ConfigError(f"--output {args.output!r} already holds checkpoints: "
                              "pass a new folder")
        state_dict = torch_convert.load_torch_state_dict(args.torch_checkpoint,
                                                         allow_pickle=args.allow_pickle)
        variables = torch_convert.torch_to_flax(arch, state_dict)
        folder = write_checkpoint(args.output, arch, variables,
                                  source=os.path.abspath(args.torch_checkpoint))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    print(f"converted {len(state_dict)} tensors ({torch_convert.naming_scheme(state_dict)} "
          f"naming) to {arch}: {count:,} parameters, "
          f"{variables['params']['fc']['bias'].shape[0]} classes -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
