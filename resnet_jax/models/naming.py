"""The models' variables under other names: Flax paths <-> PyTorch state-dict keys (NVIDIA
ConvNets, torchvision, timm) and NVIDIA's TensorFlow ResNet50 variable names.

The mapping sits beside the models, as timm keeps `checkpoint_filter_fn` beside each of
its models: the optimizer's `not_bn` weight-decay rule (NVIDIA's, which reads PyTorch
names) and both converters in resnet_jax/interop use this one. Names only: the tensors'
layouts are converted in resnet_jax/interop.

A Flax path is a tuple of keys, e.g. ('layer2_0', 'conv2', 'kernel'); its collection is
'params' or 'batch_stats'.
"""

import re

from resnet_jax import models

# --- PyTorch ------------------------------------------------------------------------------
#
# torchvision and timm: `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`; timm's SE
# gates `layer1.0.se.fc1/fc2`. NVIDIA ConvNets: stages `layers.0..3` (the NGC 20.06
# checkpoints: `layer1..4`), SE gates `squeeze.squeeze/expand`.

# The namings a PyTorch state dict is written in (`in_naming`).
TORCH_NAMINGS = ("nvidia", "nvidia_ngc", "nvidia_trt", "torchvision", "timm")

# Flax module -> PyTorch module, where they differ.
_TORCH_MODULES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1",
                  "reduce": "fc1", "expand": "fc2"}
_TORCH_PARAMS = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_TORCH_STATS = {"mean": "running_mean", "var": "running_var"}


def naming_scheme(keys) -> str:
    """'nvidia' or 'torchvision/timm', from a state dict's keys."""
    keys = list(keys)
    if any(k.startswith("layers.") or ".squeeze.squeeze." in k for k in keys):
        return "nvidia"
    return "torchvision/timm"


def torchvision_key(key: str) -> str:
    """A state-dict key of any naming in torchvision/timm naming: 'layers.0.squeeze.squeeze.weight'
    -> 'layer1.0.se.fc1.weight'; DistributedDataParallel's 'module.' prefix dropped."""
    if key.startswith("module."):
        key = key[len("module."):]
    match = re.match(r"layers\.(\d+)\.(.*)", key)
    if match:
        key = f"layer{int(match.group(1)) + 1}.{match.group(2)}"
    return key.replace(".squeeze.squeeze.", ".se.fc1.").replace(".squeeze.expand.", ".se.fc2.")


def torch_key(path: tuple[str, ...], collection: str) -> str:
    """The torchvision/timm key of one Flax variable, e.g. ('layer2_0', 'conv2', 'kernel')
    -> 'layer2.0.conv2.weight'."""
    *modules, leaf = path
    names = []
    for module in modules:
        block = re.fullmatch(r"layer(\d+)_(\d+)", module)
        if block:
            names += [f"layer{block.group(1)}", block.group(2)]
        else:
            names.append(_TORCH_MODULES.get(module, module))
    leaf = (_TORCH_STATS if collection == "batch_stats" else _TORCH_PARAMS)[leaf]
    return ".".join(names + [leaf])


def in_naming(key: str, naming: str) -> str:
    """A torchvision/timm key ('layer1.0.se.fc1.weight') in another of TORCH_NAMINGS."""
    if naming in ("nvidia", "nvidia_trt"):
        key = re.sub(r"^layer(\d+)\.", lambda m: f"layers.{int(m.group(1)) - 1}.", key)
    if naming.startswith("nvidia"):
        key = key.replace(".se.fc1.", ".squeeze.squeeze.").replace(".se.fc2.", ".squeeze.expand.")
    return key


def native_naming(arch: str) -> str:
    """The naming that holds `arch` as its family publishes it: NVIDIA's for 16-unit SE
    gates, timm's for channels/16 ones, torchvision's for the networks without SE."""
    spec = models.SPECS[models.canonical(arch)]
    return "nvidia" if spec.get("se_hidden") else "timm" if spec.get("se_reduction") else (
        "torchvision")


def path_str(path: tuple[str, ...]) -> str:
    """'layer1_0/conv1/kernel'."""
    return "/".join(path)


# --- NVIDIA's TensorFlow ResNet50 v1.5 ----------------------------------------------------
#
# `{scope}/btlnck_block_{stage}_{block}/bottleneck_{1,2,3}/{conv2d/kernel,BatchNorm/gamma}`
# (see resnet_jax/interop/tensorflow.py for the releases' scopes and numbering).

# Flax module -> NVIDIA's scope, at the top and inside a bottleneck.
_TF_TOP = {"conv1": "conv2d/conv2d", "bn1": "conv2d/BatchNorm", "fc": "output/dense"}
_TF_BLOCK = {**{f"conv{i}": f"bottleneck_{i}/conv2d" for i in (1, 2, 3)},
             **{f"bn{i}": f"bottleneck_{i}/BatchNorm" for i in (1, 2, 3)},
             "downsample_conv": "shortcut/conv2d/conv2d",
             "downsample_bn": "shortcut/conv2d/BatchNorm"}
_TF_BN_LEAVES = {"scale": "gamma", "bias": "beta", "mean": "moving_mean",
                 "var": "moving_variance"}


def tf_name(path: tuple[str, ...], layout) -> str:
    """NVIDIA's name of one Flax variable, e.g. ('layer2_0', 'bn2', 'mean') ->
    'resnet50/btlnck_block_1_0/bottleneck_2/BatchNorm/moving_mean'.

    `layout` (resnet_jax.interop.tensorflow.Layout) gives the release's `scope` and the
    `first_index` its blocks are numbered from.
    """
    *modules, leaf = path
    names, table = [layout.scope], _TF_TOP
    for module in modules:
        block = re.fullmatch(r"layer(\d+)_(\d+)", module)
        if block:
            stage, index = int(block.group(1)) - 1, int(block.group(2))
            names.append(f"btlnck_block_{stage + layout.first_index}_{index + layout.first_index}")
            table = _TF_BLOCK
        else:
            names.append(table[module])
    names.append(leaf if modules[-1] == "fc" or leaf == "kernel" else _TF_BN_LEAVES[leaf])
    return "/".join(names)
