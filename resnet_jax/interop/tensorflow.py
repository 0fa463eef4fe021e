"""NVIDIA's TensorFlow ResNet50 v1.5 to resnet_jax: `tf_to_flax`, `load_tf_checkpoint`.

The command line is `python -m resnet_jax.convert --tf-checkpoint PREFIX`
(resnet_jax/convert.py). What follows is read from NVIDIA's code
(DeepLearningExamples, TensorFlow/Classification/ConvNets; before 20.06
TensorFlow/Classification/RN50v1.5), not from its documentation.

Names (mapped in resnet_jax.models.naming.tf_name). Every variable sits under
the model's scope, the `--arch` of NVIDIA's main.py: `resnet50/` (20.06 on,
the NGC checkpoint rn50_tf_amp_ckpt 20.06.0) or `resnet50_v1.5/` (the 2019
releases). Each convolution with its BN is a
`conv2d_block` (model/blocks/conv2d_block.py): a `tf.layers.conv2d` named
`conv2d` (kernel HWIO, as Flax's) and a `tf.contrib.layers.batch_norm` with
its default scope `BatchNorm` (gamma, beta, moving_mean, moving_variance):

    resnet50/conv2d/conv2d/kernel                            stem 7x7
    resnet50/conv2d/BatchNorm/gamma
    resnet50/btlnck_block_0_0/bottleneck_1/conv2d/kernel     1x1 (2: 3x3, 3: 1x1)
    resnet50/btlnck_block_0_0/bottleneck_1/BatchNorm/gamma
    resnet50/btlnck_block_0_0/shortcut/conv2d/conv2d/kernel  first block of a stage
    resnet50/output/dense/kernel, .../bias                   (2048, 1001), (1001,)

Blocks are `btlnck_block_{stage}_{block}` from 0 (model/resnet.py); the 2019
code numbers them from 1 (`btlnck_block_1_1` .. `btlnck_block_4_3`). A
classifier turned into a 1x1 convolution by NVIDIA's postprocess_ckpt.py
(kernel (1, 1, 2048, 1001)) is read as the dense one.

Padding. From 20.06 on every convolution and the max pool pad 'SAME' (TF's:
a stride-2 layer pads one more row and column at the bottom and right):
`padding='same'`. The 2019 code pads the stem and the strided 3x3s explicitly
and symmetrically (its 'SAME_RESNET' mode), but its max pool is 'SAME':
`padding='symmetric_same_pool'`. The converted checkpoint records which.

Classes. The classifier has 1001 outputs, but the training labels are the
TFRecords' 1..1000 minus one (utils/image_processing.py `label -= 1`, and
the same in utils/dali_utils.py; dataprep leaves 0 empty): output i is ImageNet
class i (sorted WordNet ids) and the last output, 1000, is never a target.
It is dropped by default; kept, it is named UNUSED_CLASS.

Also left out, never an error: optimizer slots (`<variable>/Momentum`) and
`<variable>/ExponentialMovingAverage` shadows (NVIDIA's TF code keeps no
moving average; the raw weights are converted, the count is reported), and
everything outside the model scope (global_step, the AMP loss scale's
variables). Variables are stored in fp32 under AMP (utils/var_storage.py
casts to fp16 in the graph, outside the checkpoint); an fp16 or bf16 tensor
would be widened to fp32 exactly.

BN epsilon is 1e-5 in both. Inputs are RGB on the 0..255 scale, normalized
(x - mean) / std: from 20.06 on mean (123.68, 116.28, 103.53) and std
(58.395, 57.12, 57.385), in both input paths (utils/data_utils.py,
utils/dali_utils.py); in 2019 mean (123.68, 116.78, 103.94) and 255 for every
channel (utils/data_utils.py, the input of its scripts, which do not pass
--use_dali; its DALI path normalized otherwise). Evaluation resizes the
shorter side to 256 with TF's bilinear resize, not antialiased, and crops 224
in the center (utils/image_processing.py).
"""

from collections.abc import Mapping
import dataclasses
import glob
import os
import re

import numpy as np

from resnet_jax import models
from resnet_jax.errors import ConfigError, ConversionError, describe_mismatch, first_items
from resnet_jax.interop import matching
from resnet_jax.models.naming import tf_name

BN_EPSILON = 1e-5
EVAL_RESIZE_SIZE, EVAL_IMAGE_SIZE, EVAL_ANTIALIAS = 256, 224, False
# The name of output 1000 with --keep-background: no label of NVIDIA's training is 1000.
UNUSED_CLASS = "unused output (never a training label)"


@dataclasses.dataclass(frozen=True)
class Layout:
    """One release's way of naming and padding the network."""

    scope: str
    first_index: int  # of btlnck_block_{stage}_{block}
    padding: str  # models.resnet.PADDINGS
    mean_rgb: tuple[float, float, float]  # the input normalization, 0..255 scale
    std_rgb: tuple[float, float, float]


LAYOUTS = (
    Layout("resnet50", 0, "same", (123.68, 116.28, 103.53), (58.395, 57.12, 57.385)),
    Layout("resnet50_v1.5", 1, "symmetric_same_pool", (123.68, 116.78, 103.94),
           (255.0, 255.0, 255.0)),
)

_EMA_SLOT = "ExponentialMovingAverage"


@dataclasses.dataclass
class Converted:
    """The variables for `models.create(arch, num_classes, padding=layout.padding)` and what
    was read to make them."""

    variables: dict
    layout: Layout
    num_tensors: int  # model variables converted
    optimizer_slots: int = 0
    moving_averages: int = 0
    other_variables: int = 0  # outside the model scope
    dropped_unused_class: bool = False

    @property
    def num_classes(self) -> int:
        """The classifier's outputs after conversion."""
        return int(self.variables["params"]["fc"]["bias"].shape[0])

    def class_names(self, imagenet: list[str]) -> list[str] | None:
        """ImageNet's names for NVIDIA's 1000 (+ the unused) outputs; None for other counts."""
        if self.num_classes == 1000:
            return list(imagenet)
        if self.num_classes == 1001:
            return [*imagenet, UNUSED_CLASS]
        return None

    def summary(self) -> str:
        """'scope resnet50/, padding 'same'; left out: 161 optimizer slots, ...'."""
        left_out = [f"{n} {one if n == 1 else many}" for n, one, many in (
            (self.optimizer_slots, "optimizer slot", "optimizer slots"),
            (self.moving_averages, "moving average", "moving averages"),
            (self.other_variables, "variable outside the model scope",
             "variables outside the model scope")) if n]
        if self.moving_averages:  # not NVIDIA's: say which weights were taken
            left_out.append("the raw weights converted")
        return (f"scope {self.layout.scope}/, padding {self.layout.padding!r}"
                + (f"; left out: {', '.join(left_out)}" if left_out else "")
                + ("; dropped output 1000, which no label trained" if self.dropped_unused_class
                   else ""))


def layout_of(names) -> Layout:
    """The layout whose scope holds the checkpoint's variables; a one-line error otherwise."""
    names = list(names)
    found = [layout for layout in LAYOUTS if any(n.startswith(layout.scope + "/") for n in names)]
    if len(found) == 1:
        return found[0]
    scopes = sorted({n.split("/", 1)[0] + ("/" if "/" in n else "") for n in names})
    scopes_of = [f"{layout.scope}/" for layout in LAYOUTS]
    expected = " or ".join(scopes_of)
    if found:
        raise ConversionError(f"the checkpoint holds variables under both "
                              f"{' and '.join(scopes_of)}: convert a checkpoint of one model")
    raise ConversionError(
        f"the checkpoint is not NVIDIA's TensorFlow ResNet50: no variables under {expected} "
        f"(its top-level names: {first_items(scopes, ', ')})")


def check_arch(arch: str) -> str:
    """The project's name of `arch` if NVIDIA's TensorFlow checkpoints convert to it."""
    arch = models.canonical(arch, flag="--arch")
    if arch != "resnet50_v15":
        raise ConfigError(
            f"--tf-checkpoint reads NVIDIA's TensorFlow ResNet50 v1.5 only: pass --arch "
            f"resnet50_v15, not {arch} (NVIDIA's TensorFlow ResNeXt and SE-ResNeXt are not "
            "supported)")
    return arch


def tf_to_flax(arch: str, tensors, *, keep_unused_class: bool = False) -> Converted:
    """{'params', 'batch_stats'} from NVIDIA's TensorFlow ResNet50 variables.

    `tensors` maps checkpoint names to arrays (a dict, or `load_tf_checkpoint`'s
    lazy reader). The classifier's 1001st output (index 1000, never a training
    label) is dropped unless `keep_unused_class`. Raises ConversionError naming
    every model variable that is missing, unexpected or of the wrong shape
    (the first few of each, and how many in all).
    """
    arch = check_arch(arch)
    layout = layout_of(tensors)
    fc_bias = f"{layout.scope}/output/dense/bias"
    if fc_bias not in tensors:
        raise ConversionError(f"the checkpoint has no {fc_bias!r}: is it a classification "
                              "model of NVIDIA's TensorFlow ConvNets?")
    num_classes = int(np.shape(tensors[fc_bias])[0])
    targets = matching.targets(models.abstract_variables(arch, num_classes),
                               lambda path, _: tf_name(path, layout))
    unexpected, left_out = _others(tensors, targets, layout.scope)
    matched = matching.match(targets, tensors, _to_flax_layout)
    if problems := describe_mismatch(matched.missing, unexpected, matched.wrong_shape):
        raise ConversionError(
            f"the checkpoint ({layout.scope}/) does not fit arch {arch} with {num_classes} "
            f"classes: " + problems + ". Is it NVIDIA's TensorFlow ResNet50 v1.5?")

    variables = matched.variables
    drop = num_classes == 1001 and not keep_unused_class
    if drop:
        fc = variables["params"]["fc"]
        fc["kernel"], fc["bias"] = fc["kernel"][:, :1000], fc["bias"][:1000]
    return Converted(variables, layout, len(targets), **left_out, dropped_unused_class=drop)


def _to_flax_layout(value, target: matching.Target) -> np.ndarray:
    """A checkpoint's tensor as numpy float32 in its Flax variable's layout (TensorFlow's
    kernels are HWIO and (in, out) already)."""
    value = np.asarray(value, np.float32)
    if target.path[-2:] == ("fc", "kernel") and value.ndim == 4 and value.shape[:2] == (1, 1):
        value = value[0, 0]  # postprocess_ckpt.py's 1x1-convolution classifier
    return value


def _others(tensors, names, scope: str) -> tuple[list[str], dict]:
    """The checkpoint's names that are not model variables: those under the model scope that
    belong to no variable (an error), and counts of what is left out."""
    unexpected, counts = [], dict(optimizer_slots=0, moving_averages=0, other_variables=0)
    for name in tensors:
        if name in names:
            continue
        owner, _, slot = name.rpartition("/")
        if owner in names:
            counts["moving_averages" if slot == _EMA_SLOT else "optimizer_slots"] += 1
        elif name.startswith(scope + "/"):
            unexpected.append(name)
        else:
            counts["other_variables"] += 1
    return sorted(unexpected), counts


class _Reader(Mapping):
    """A checkpoint's names -> tensors, each read from disk when asked for (the optimizer's
    slots, as large as the weights, are never read)."""

    def __init__(self, reader):
        self._reader = reader
        self._names = reader.get_variable_to_shape_map()

    def __getitem__(self, name):
        if name not in self._names:
            raise KeyError(name)
        return self._reader.get_tensor(name)

    def __contains__(self, name):
        return name in self._names

    def __iter__(self):
        return iter(sorted(self._names))

    def __len__(self):
        return len(self._names)


def checkpoint_prefix(path: str) -> str:
    """The checkpoint prefix a user meant: PREFIX from PREFIX, PREFIX.index or a data shard."""
    return re.sub(r"\.(index|data-\d+-of-\d+|meta)$", "", path)


def load_tf_checkpoint(path: str):
    """NVIDIA's checkpoint at `path` (PREFIX of PREFIX.index + PREFIX.data-*, or a folder
    with a `checkpoint` file) as a name -> array mapping, read lazily."""
    prefix = checkpoint_prefix(path)
    if os.path.isdir(prefix) and not os.path.isfile(os.path.join(prefix, "checkpoint")):
        found = sorted(glob.glob(os.path.join(prefix, "*.index")))
        raise ConfigError(
            f"--tf-checkpoint {path!r} is a folder without a 'checkpoint' file: pass the prefix "
            f"of one of its checkpoints (found: "
            f"{first_items([f[:-len('.index')] for f in found], ', ') or 'none'})")
    if not (os.path.isfile(prefix + ".index") or os.path.isdir(prefix)):
        raise ConfigError(
            f"--tf-checkpoint {path!r}: there is no {prefix + '.index'!r}: pass the "
            f"checkpoint's prefix (PREFIX of PREFIX.index and PREFIX.data-00000-of-00001) or "
            f"its folder")
    try:
        import tensorflow as tf  # here, not above: only reading a checkpoint needs TensorFlow
    except ImportError as error:
        raise ConfigError("reading a TensorFlow checkpoint needs TensorFlow: pip install "
                          "tensorflow-cpu") from error
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as error:  # TF raises NotFoundError, DataLossError, ValueError, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"--tf-checkpoint {path!r} is not a TensorFlow checkpoint "
                          f"TensorFlow can read: {type(error).__name__}: {first}") from error
    return _Reader(reader)
