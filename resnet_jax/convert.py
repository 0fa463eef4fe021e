"""Weights from elsewhere to a resnet_jax checkpoint: `python -m resnet_jax.convert`.

  python -m resnet_jax.convert --arch resnet50_v15 \
      --torch-checkpoint nvidia_resnet50_200821.pth.tar --output weights/rn50
  python -m resnet_jax.convert --arch resnet50_v15 \
      --tf-checkpoint rn50_tf_amp_ckpt --output weights/rn50_tf

writes an Orbax checkpoint that `--config.mode=eval --config.checkpoint=DIR`,
`--config.init_checkpoint=DIR` (fine-tuning) and `python -m resnet_jax.classify`
restore directly. Its metadata records what the weights expect (NVIDIA's
TensorFlow ResNet50 pads 'SAME' and normalizes with its own mean and std),
which evaluation and classify then use.

The PyTorch side (naming schemes, key mapping) is in resnet_jax/interop/torch.py;
the TensorFlow side (NVIDIA's variable names, padding, the 1001st output) in
resnet_jax/interop/tensorflow.py. `--tf-checkpoint` drops the classifier's
last output, which NVIDIA's training never uses (labels are shifted to 0..999);
`--keep-background` keeps it, as class 1000.
"""

import argparse
import os
import sys

import jax
import numpy as np

from resnet_jax import checkpoint, models, quiet
from resnet_jax.data import MEAN_RGB, STD_RGB
from resnet_jax.data.folders import imagenet_class_names
from resnet_jax.errors import ConfigError, exit_code
from resnet_jax.interop import tensorflow as tf_interop
from resnet_jax.interop import torch as torch_interop
from resnet_jax.models import naming


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
    meta = checkpoint.model_meta(
        arch=arch, num_classes=num_classes, class_names=class_names, image_size=224,
        eval_resize_size=eval_resize_size, eval_image_size=eval_image_size,
        eval_antialias=eval_antialias, mean_rgb=mean_rgb, std_rgb=std_rgb,
        model_options=model_options or {}, precision="fp32", epoch=0, source=source)
    return checkpoint.save_model(output, variables, meta)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.convert",
        description="Converts PyTorch ResNet weights (NVIDIA ConvNets, torchvision, timm) or "
                    "NVIDIA's TensorFlow ResNet50 v1.5 checkpoints to a resnet_jax checkpoint.")
    parser.add_argument("--arch", required=True,
                        help=f"one of {', '.join(models.names())}, or NVIDIA's name "
                             f"({', '.join(models.ALIASES)})")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--torch-checkpoint", metavar="FILE",
                        help=".pth / .pth.tar file: a state dict, or a training checkpoint "
                             "holding one under 'state_dict' or 'model'")
    source.add_argument("--tf-checkpoint", metavar="PREFIX",
                        help="a TensorFlow checkpoint of NVIDIA's ResNet50 v1.5 "
                             "(TensorFlow/Classification/ConvNets): the prefix of PREFIX.index "
                             "and PREFIX.data-*, or their folder")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="new folder for the checkpoint (DIR/checkpoints/0)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read files that hold Python objects besides tensors "
                             "(unpickling runs code from the file: only for files you trust)")
    parser.add_argument("--keep-background", action="store_true",
                        help="with --tf-checkpoint: keep all 1001 outputs; the last one is "
                             "never a training label of NVIDIA's, and is dropped by default")
    return parser


def _convert_torch(args, arch: str) -> tuple[str, dict, str]:
    """(folder, variables, what was read) for --torch-checkpoint."""
    state_dict = torch_interop.load_torch_state_dict(args.torch_checkpoint,
                                                     allow_pickle=args.allow_pickle)
    variables = torch_interop.torch_to_flax(arch, state_dict)
    folder = write_checkpoint(args.output, arch, variables,
                              source=os.path.abspath(args.torch_checkpoint))
    return folder, variables, (f"{len(state_dict)} tensors "
                               f"({naming.naming_scheme(state_dict)} naming)")


def _convert_tf(args, arch: str) -> tuple[str, dict, str]:
    """(folder, variables, what was read) for --tf-checkpoint."""
    tf_interop.check_arch(arch)  # before TensorFlow loads (seconds)
    converted = tf_interop.tf_to_flax(arch, tf_interop.load_tf_checkpoint(args.tf_checkpoint),
                                      keep_unused_class=args.keep_background)
    folder = write_checkpoint(
        args.output, arch, converted.variables, source=os.path.abspath(args.tf_checkpoint),
        class_names=converted.class_names(imagenet_class_names()),
        model_options={"padding": converted.layout.padding,
                       "bn_epsilon": tf_interop.BN_EPSILON},
        mean_rgb=converted.layout.mean_rgb, std_rgb=converted.layout.std_rgb,
        eval_resize_size=tf_interop.EVAL_RESIZE_SIZE, eval_image_size=tf_interop.EVAL_IMAGE_SIZE,
        eval_antialias=tf_interop.EVAL_ANTIALIAS)
    return folder, converted.variables, (f"{converted.num_tensors} tensors (NVIDIA TensorFlow, "
                                         f"{converted.summary()})")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    quiet.keep_own_lines()
    return exit_code(_run, args)


def _run(args) -> None:
    arch = models.canonical(args.arch, flag="--arch")
    if args.keep_background and not args.tf_checkpoint:
        raise ConfigError("--keep-background applies to --tf-checkpoint only: leave it out")
    if os.path.exists(os.path.join(args.output, "checkpoints")):
        raise ConfigError(f"--output {args.output!r} already holds checkpoints: "
                          "pass a new folder")
    convert = _convert_tf if args.tf_checkpoint else _convert_torch
    folder, variables, read = convert(args, arch)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    print(f"converted {read} to {arch}: {count:,} parameters, "
          f"{variables['params']['fc']['bias'].shape[0]} classes -> {folder}")


if __name__ == "__main__":
    sys.exit(main())
