"""PyTorch weights in and out: `torch_to_flax(arch, state_dict)`, `load_torch_state_dict`,
`flax_to_torch(arch, variables, naming=...)`.

The command lines are `python -m resnet_jax.convert` (resnet_jax/convert.py) and
`python -m resnet_jax.export --format torch` (resnet_jax/export.py).

Three naming schemes are read, and told apart by their keys:

* torchvision and timm: `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`;
  timm's SE gates are 1x1 convolutions `layer1.0.se.fc1/fc2`.
* NVIDIA ConvNets (the `nvidia_resnet50`, `nvidia_resneXt` and
  `nvidia_se_resnext101_32x4d` hub models): stages are `layers.0` ..
  `layers.3` (the NGC 20.06 checkpoints still say `layer1` .. `layer4`); SE
  gates are `squeeze.squeeze` / `squeeze.expand`, linear layers (or 1x1
  convolutions in the TensorRT variant).

NVIDIA's SE gates have 16 hidden units in every block: their checkpoints
convert to arch se_resnext101_32x4d. timm's (and the SE paper's) have
channels/16: arch seresnext101_32x4d. Each is converted exactly, and a
checkpoint given to the other arch is refused with a line that says which.

The key names are resnet_jax/models/naming.py's; this module converts the tensors.
Only numpy is needed for `torch_to_flax`; torch is needed to read `.pth` files.
"""

import os

import jax
import numpy as np

from resnet_jax import models
from resnet_jax.errors import ConfigError, ConversionError, describe_mismatch
from resnet_jax.interop import matching
from resnet_jax.models import naming as naming_lib

# Keys every PyTorch BatchNorm has and that have no Flax counterpart.
_IGNORED_SUFFIXES = (".num_batches_tracked",)
# Wrappers around a state dict in training checkpoints, in the order they are tried.
_STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


_SE_HINT = ("; SE gates of 16 units are NVIDIA's (--arch se_resnext101_32x4d), of channels/16 "
            "timm's (--arch seresnext101_32x4d)")


def _to_flax_layout(value, target: matching.Target) -> np.ndarray:
    """A state dict's tensor as numpy float32 in its Flax variable's layout."""
    value = _as_numpy(value)
    if target.path[-1] != "kernel":
        return value
    if value.ndim == 4:  # conv OIHW -> HWIO (grouped: O, I/groups, H, W -> H, W, I/groups, O)
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # linear (out, in) -> (in, out), or as a 1x1 conv for SE gates
        value = value.T
        return value.reshape(1, 1, *value.shape) if len(target.spec.shape) == 4 else value
    return value


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: fp16/bf16 do not convert to numpy directly
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, np.float32)


def torch_to_flax(arch: str, state_dict, *, num_classes: int | None = None) -> dict:
    """{'params', 'batch_stats'} for `models.create(arch, num_classes=...)` from a state dict.

    `state_dict` maps torch key names to arrays (numpy, or torch tensors) in
    any of the naming schemes above; `num_classes` defaults to the rows of
    `fc.weight`. Raises ConversionError naming every key that is missing,
    unexpected or of the wrong shape (the first few of each, and how many in all);
    nothing is dropped silently.
    """
    tensors, originals = {}, {}  # by torchvision/timm key
    for key, value in state_dict.items():
        if not key.endswith(_IGNORED_SUFFIXES):
            canonical = naming_lib.torchvision_key(key)
            tensors[canonical], originals[canonical] = value, key
    if num_classes is None:
        if "fc.weight" not in tensors:
            raise ConversionError(
                f"{arch}: the state dict has no 'fc.weight' (keys start "
                f"{', '.join(sorted(state_dict)[:3])}, ...): is it a classification model?")
        num_classes = int(np.shape(tensors["fc.weight"])[0])
    arch = models.canonical(arch, flag="--arch")
    targets = matching.targets(models.abstract_variables(arch, num_classes), naming_lib.torch_key)
    matched = matching.match(targets, tensors, _to_flax_layout, shown=originals.__getitem__)
    unexpected = sorted(originals[key] for key in tensors if key not in targets)
    if problems := describe_mismatch(matched.missing, unexpected, matched.wrong_shape):
        se_gates = any("se" in path for path in matched.misfits)
        raise ConversionError(
            f"the state dict ({naming_lib.naming_scheme(state_dict)} naming) does not fit arch "
            f"{arch} with {num_classes} classes: " + problems
            + ". Check --arch (one of " + ", ".join(models.names()) + ")"
            + (_SE_HINT if se_gates else ""))
    return matched.variables


def flax_to_torch(arch: str, variables: dict, *, naming: str = "nvidia") -> dict:
    """A PyTorch state dict (numpy arrays) of `variables` in `naming`, `torch_to_flax` reversed.

    'nvidia': NVIDIA ConvNets' models (stages `layers.0..3`, SE gates as
    nn.Linear `squeeze.squeeze/expand`); 'nvidia_ngc': their NGC 20.06 keys
    (`layer1..4`); 'nvidia_trt': SE gates as 1x1 convolutions; 'torchvision'
    and 'timm': those libraries' keys. Every BN gets `num_batches_tracked` = 0,
    so that `load_state_dict(strict=True)` takes the dict as it is. An SE
    network goes out only in its own family's naming (NVIDIA's 16-unit gates
    in the NVIDIA namings, timm's in 'timm').
    """
    arch = models.canonical(arch, flag="--arch")
    if naming not in naming_lib.TORCH_NAMINGS:
        raise ConfigError(f"naming {naming!r} is not supported: use one of "
                          f"{', '.join(naming_lib.TORCH_NAMINGS)}")
    spec = models.SPECS[arch]
    if spec.get("se_hidden") and not naming.startswith("nvidia"):
        raise ConfigError(f"{arch} has NVIDIA's 16-unit SE gates: export it with --naming "
                          "nvidia, nvidia_ngc or nvidia_trt")
    if spec.get("se_reduction") and naming != "timm":
        raise ConfigError(f"{arch} has timm's SE gates: export it with --naming timm")
    out = {}
    for collection in ("params", "batch_stats"):
        for key_path, value in jax.tree_util.tree_flatten_with_path(variables[collection])[0]:
            path = tuple(k.key for k in key_path)
            value = np.asarray(value, np.float32)
            if path[-1] == "kernel":
                if "se" in path and naming in ("nvidia", "nvidia_ngc"):  # nn.Linear (out, in)
                    value = value[0, 0].T
                elif value.ndim == 4:  # HWIO -> OIHW
                    value = value.transpose(3, 2, 0, 1)
                else:  # dense (in, out) -> (out, in)
                    value = value.T
            key = naming_lib.in_naming(naming_lib.torch_key(path, collection), naming)
            out[key] = np.ascontiguousarray(value)
            if key.endswith(".running_var"):
                out[key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def load_torch_state_dict(path: str, *, allow_pickle: bool = False) -> dict:
    """The state dict in a `.pth` / `.pth.tar` file, unwrapped from training checkpoints.

    Files are read with torch's `weights_only` loader, which runs no code from
    the file; `allow_pickle` also reads files holding other Python objects
    (only for files you trust).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"--torch-checkpoint {path!r} does not exist: pass a .pth file")
    try:
        import torch  # here, not above: converting arrays needs no PyTorch, only reading files
    except ImportError as error:
        raise ConfigError("reading a .pth file needs PyTorch: pip install torch "
                          "(the CPU build is enough)") from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as error:  # torch raises many different types for a bad file
        first = (str(error).strip().splitlines() or [""])[0]
        if "Unsupported global" in str(error) and not allow_pickle:
            raise ConfigError(
                f"--torch-checkpoint {path!r} holds Python objects besides tensors: if you "
                f"trust the file, add --allow-pickle ({first})") from error
        raise ConfigError(f"--torch-checkpoint {path!r} is not a PyTorch checkpoint torch can "
                          f"read: {type(error).__name__}: {first}") from error
    if hasattr(loaded, "state_dict") and not isinstance(loaded, dict):
        loaded = loaded.state_dict()  # a whole pickled module
    for key in _STATE_DICT_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise ConfigError(f"--torch-checkpoint {path!r} holds no state dict "
                          f"(found {type(loaded).__name__})")
    return {k: v for k, v in loaded.items() if hasattr(v, "shape")}
