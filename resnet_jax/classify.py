"""Top classes of images from a checkpoint: `python -m resnet_jax.classify --checkpoint DIR IMG`.

DIR is a training workdir (its latest checkpoint), its checkpoints folder, one
step folder, WORKDIR/best (the best evaluation's checkpoint), or the output of
`python -m resnet_jax.convert`. Images are preprocessed as the
evaluation of the training config does (resize the shorter side, center
crop, normalize; sizes from the checkpoint), by the same DALI pipeline.
Class names come from the checkpoint: the folder names of the training data,
or ImageNet's names for a 1000-class model trained on ImageNet's WordNet-id
folders or converted from PyTorch.
"""

import argparse
import os
import sys

import jax
import numpy as np

from resnet_jax import checkpoint, models, quiet
from resnet_jax import precision as precision_lib
from resnet_jax.data import MEAN_RGB, STD_RGB
from resnet_jax.data.folders import display_names
from resnet_jax.errors import ConfigError, exit_code
from resnet_jax.models.predict import predict_step


def predict(checkpoint_path: str, images: list[str], *, precision: str = "fp32",
            on_gpu: bool = False, ema: bool = False) -> tuple[np.ndarray, list[str]]:
    """(probabilities (N, num_classes) in fp32, class names) for image files; with `ema`,
    from the checkpoint's moving average of the weights."""
    if precision not in precision_lib.PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not supported: use one of "
                          f"{', '.join(precision_lib.PRECISIONS)}")
    for image in images:
        if not os.path.isfile(image):
            raise ConfigError(f"image {image!r} does not exist: pass paths of image files")
    saved = checkpoint.Saved(checkpoint_path)
    meta = saved.meta
    model = models.from_meta(meta, dtype=precision_lib.compute_dtype(precision))
    size = meta["eval_image_size"]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    variables = saved.restore_variables(device, ema=ema)

    # Here, not above: DALI loads only once the checkpoint and the images are found.
    from resnet_jax.data import dali

    try:
        pixels = dali.preprocess_files(
            images, resize_size=meta["eval_resize_size"], image_size=size,
            image_dtype=precision_lib.image_dtype(precision), on_gpu=on_gpu,
            antialias=meta.get("eval_antialias", True),
            normalize=(meta.get("mean_rgb", MEAN_RGB), meta.get("std_rgb", STD_RGB)))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"could not read the images {images}: {first}") from error
    matmul = precision_lib.matmul_precision(precision)
    with jax.default_matmul_precision(matmul or "default"):
        logits = predict_step(model)(variables, pixels)
    return np.asarray(jax.nn.softmax(logits, axis=-1)), display_names(meta)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.classify",
        description="Prints the top classes of each image with their probabilities.")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a workdir, a checkpoints folder, a step folder, WORKDIR/best "
                             "(the best evaluation's), or a converted model's output folder")
    parser.add_argument("--precision", default="fp32", choices=precision_lib.PRECISIONS)
    parser.add_argument("--top", type=int, default=5, help="classes to print per image")
    parser.add_argument("--gpu", action="store_true", help="decode on the GPU (DALI mixed)")
    parser.add_argument("--ema", action="store_true",
                        help="use the checkpoint's moving average of the weights "
                        "(trained with --config.ema_decay)")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    args = parser.parse_args(argv)
    quiet.keep_own_lines()
    return exit_code(_run, args)


def _run(args) -> None:
    probabilities, names = predict(args.checkpoint, args.images, precision=args.precision,
                                   on_gpu=args.gpu, ema=args.ema)
    for image, probs in zip(args.images, probabilities, strict=True):
        print(image)
        for k in np.argsort(-probs, kind="stable")[:args.top]:
            print(f"  {probs[k]:.4f}  {names[k]}")


if __name__ == "__main__":
    sys.exit(main())
