"""Foreign tensors onto a model's variables, the loop both converters share: name each
variable as the checkpoint does, take its tensor, convert it, check its shape, and keep
what is missing or misshapen for one error (resnet_jax.errors.describe_mismatch)."""

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

from flax import traverse_util
import jax
import numpy as np

from resnet_jax.models.naming import path_str

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Target:
    """One model variable: where it goes and what it must be."""

    collection: str  # 'params' or 'batch_stats'
    path: Path
    spec: jax.ShapeDtypeStruct


def targets(abstract: dict, name_of: Callable[[Path, str], str]) -> dict[str, Target]:
    """Every variable of `abstract` ({collection: tree of shapes}) by its name in the
    checkpoint, `name_of(path, collection)`, in the model's order."""
    out = {}
    for collection, tree in abstract.items():
        for key_path, spec in jax.tree_util.tree_flatten_with_path(tree)[0]:
            path = tuple(k.key for k in key_path)
            out[name_of(path, collection)] = Target(collection, path, spec)
    return out


@dataclasses.dataclass
class Matched:
    """The variables that fit, and what did not (the checkpoint's names)."""

    variables: dict  # {collection: nested dict of numpy arrays}
    missing: list[str]
    wrong_shape: list[str]  # 'name (shape) -> flax/path needs (shape)'
    misfits: list[Path]  # the Flax paths of wrong_shape


def match(targets_by_name: dict[str, Target], tensors: Mapping,
          to_flax: Callable[[Any, Target], np.ndarray], *,
          shown: Callable[[str], str] = str) -> Matched:
    """Each target's tensor from `tensors` (checkpoint name -> array), converted by
    `to_flax(value, target)`; `shown(name)` is how a misshapen tensor is named to the user."""
    flat: dict[str, dict] = {t.collection: {} for t in targets_by_name.values()}
    missing, wrong_shape, misfits = [], [], []
    for name, target in targets_by_name.items():
        if name not in tensors:
            missing.append(name)
            continue
        value = to_flax(tensors[name], target)
        if value.shape != target.spec.shape:
            wrong_shape.append(f"{shown(name)} {tuple(value.shape)} -> {path_str(target.path)} "
                               f"needs {tuple(target.spec.shape)}")
            misfits.append(target.path)
            continue
        flat[target.collection][target.path] = value
    variables = {collection: traverse_util.unflatten_dict(f) for collection, f in flat.items()}
    return Matched(variables, missing, wrong_shape, misfits)
