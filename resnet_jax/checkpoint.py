"""Orbax checkpoints: save during training, resume after a restart, restore for eval.

A checkpoint is a step folder under WORKDIR/checkpoints with three items:
  model  {'params', 'batch_stats'}: all that inference needs
  train  {'step', 'opt_state', 'loss_scale', 'good_steps'}: the rest of the state
  meta   JSON: arch, num_classes, class names, image sizes, epoch
and a fourth when the run keeps an EMA of the weights (config.ema_decay > 0):
  ema    {'params', 'batch_stats'}: the moving average, a model like `model`
Evaluation and fine-tuning read `model` and `meta` only. Orbax writes each
step to a temporary folder and renames it when complete, so an interrupted
save is never taken for the latest checkpoint.

The best evaluation's weights are kept apart, in WORKDIR/best/<step> (items
model, meta with `eval_top1`, and ema when kept): the rotation of the latest
checkpoints never reaches them, a resume never takes them for the latest, and
eval, classify and export open that folder like any checkpoints folder.

`check_compatible` says whether a checkpoint fits a config; which saved state a
run continues from (resume, fine-tuning) is the trainer's policy
(resnet_jax/train/setup.py).
"""

import os

import jax
import orbax.checkpoint as ocp

from resnet_jax import models
from resnet_jax.errors import ConfigError


def checkpoint_dir(workdir: str) -> str:
    """Where a training run in `workdir` keeps its checkpoints."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def model_meta(*, arch: str, num_classes: int, class_names: list[str], image_size: int,
               eval_resize_size: int, eval_image_size: int, eval_antialias: bool,
               mean_rgb, std_rgb, model_options: dict, precision: str, **more) -> dict:
    """The `meta` item of every checkpoint, training runs' and converted weights' alike: what
    the weights are (arch, classes, model options) and what they expect (image sizes, the
    eval resize, the input normalization); `more` adds the writer's own fields (epoch,
    images_seen, ema_decay, source)."""
    return {"arch": arch, "num_classes": int(num_classes), "class_names": list(class_names),
            "image_size": image_size, "eval_resize_size": eval_resize_size,
            "eval_image_size": eval_image_size, "eval_antialias": eval_antialias,
            "mean_rgb": [float(m) for m in mean_rgb], "std_rgb": [float(s) for s in std_rgb],
            "model_options": dict(model_options), "precision": precision, **more}


def _manager(directory: str, *, keep: int | None = None, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only,
        save_interval_steps=0 if read_only else 1,  # read-only: Orbax's value, said up front
    )
    return ocp.CheckpointManager(directory, options=options,
                                 item_names=("model", "train", "meta", "ema"))


def _restore_meta(manager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _has_item(manager, step: int, item: str) -> bool:
    """Whether checkpoint `step` has the Composite item `item` (a subfolder of its step)."""
    return os.path.isdir(os.path.join(str(manager.directory), str(step), item))


def _with_sharding(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def best_dir(workdir: str) -> str:
    """Where a training run in `workdir` keeps its best evaluation's checkpoint."""
    return os.path.join(os.path.abspath(workdir), "best")


def _model_items(state, meta: dict) -> dict:
    """The items a model checkpoint needs: model, meta, and ema when the state keeps one."""
    ema = {} if state.ema is None else {"ema": ocp.args.StandardSave(state.ema)}
    return {"model": ocp.args.StandardSave({"params": state.params,
                                            "batch_stats": state.batch_stats}),
            "meta": ocp.args.JsonSave(meta), **ema}


class Checkpointer:
    """Saves training state asynchronously, keeps the last `keep`, resumes from the latest;
    keeps the best evaluation's model apart (`save_best`)."""

    def __init__(self, workdir: str, *, keep: int):
        self.directory = checkpoint_dir(workdir)
        self.best_directory = best_dir(workdir)
        self._manager = _manager(self.directory, keep=keep)
        self._best = None  # opened when first needed: a run without evaluation has no best/

    def _best_manager(self):
        if self._best is None:
            self._best = _manager(self.best_directory, keep=1)
        return self._best

    def best_meta(self) -> dict | None:
        """The metadata of the best evaluation's checkpoint (with `eval_top1`), or None."""
        if not os.path.isdir(self.best_directory):
            return None
        step = self._best_manager().latest_step()
        return None if step is None else _restore_meta(self._best_manager(), step)

    def save_best(self, state, meta: dict) -> None:
        """Starts writing `state`'s model (and EMA) as the best checkpoint; the previous best
        is deleted once this one is complete."""
        manager = self._best_manager()
        step = int(jax.device_get(state.step))
        for saved in manager.all_steps():  # a resume in another batch size renumbers steps
            if saved >= step:
                manager.delete(saved)
        manager.save(step, args=ocp.args.Composite(**_model_items(state, meta)))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, state, meta: dict) -> None:
        """Starts writing `state` at its step; returns before the write finishes."""
        step = int(jax.device_get(state.step))
        # The weights' moving average, when kept, is a model of its own: item 'ema'.
        self._manager.save(step, args=ocp.args.Composite(
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state,
                                         "loss_scale": state.loss_scale,
                                         "good_steps": state.good_steps}),
            **_model_items(state, meta),
        ))

    def latest_meta(self) -> dict:
        """The metadata of the latest checkpoint (read before restoring, to check it fits)."""
        return _restore_meta(self._manager, self._manager.latest_step())

    def restore(self, state, sharding):
        """The latest checkpoint, shaped like `state` (a train.state.TrainState) and placed
        with `sharding`. A `state` with an EMA takes the checkpoint's when it has one; from a
        checkpoint written without one, the restored state's `ema` is None."""
        step = self._manager.latest_step()
        abstract = _with_sharding(jax.eval_shape(lambda s: s, state), sharding)
        with_ema = state.ema is not None and _has_item(self._manager, step, "ema")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore({"params": abstract.params,
                                            "batch_stats": abstract.batch_stats}),
            train=ocp.args.StandardRestore({"step": abstract.step,
                                            "opt_state": abstract.opt_state,
                                            "loss_scale": abstract.loss_scale,
                                            "good_steps": abstract.good_steps}),
            **({"ema": ocp.args.StandardRestore(abstract.ema)} if with_ema else {}),
        ))
        model, train = restored["model"], restored["train"]
        return state.replace(params=model["params"], batch_stats=model["batch_stats"],
                             ema=restored["ema"] if with_ema else None, **train)

    def delete_after(self, step: int) -> None:
        """Deletes the checkpoints of steps after `step` (numbered in another batch size)."""
        for saved in self._manager.all_steps():
            if saved > step:
                self._manager.delete(saved)

    def wait(self) -> None:
        """Blocks until the last saves are on disk."""
        for manager in (self._manager, self._best):
            if manager is not None:
                manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the managers."""
        self.wait()
        self._manager.close()
        if self._best is not None:
            self._best.close()


def _resolve(path: str):
    """(checkpoints directory, step, read-only manager) for a workdir, a checkpoints folder or
    one step folder; for a workdir or checkpoints folder, the step is the latest complete one."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ConfigError(
            f"checkpoint {path!r} does not exist: pass --workdir of a training run or "
            "--config.checkpoint=WORKDIR/checkpoints[/STEP]"
        )
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(os.path.join(path, "model")):
        directory, step = os.path.dirname(path), int(base)
        return directory, step, _manager(directory, read_only=True)
    manager = _manager(path, read_only=True)
    step = manager.latest_step()
    if step is None:
        raise ConfigError(
            f"checkpoint {path!r} holds no complete checkpoint: train first, or pass "
            "--config.checkpoint=WORKDIR/checkpoints/STEP of a finished save"
        )
    return path, step, manager


class Saved:
    """One complete checkpoint, opened read-only once: its step, metadata and model.

    `path` is a workdir, its checkpoints folder, or one step folder (its step).
    """

    def __init__(self, path: str):
        self.path = path
        self.directory, self.step, self._manager = _resolve(path)
        self.meta = _restore_meta(self._manager, self.step)

    @property
    def has_ema(self) -> bool:
        """Whether the checkpoint also holds the moving average of the weights."""
        return _has_item(self._manager, self.step, "ema")

    def restore_variables(self, sharding, *, ema: bool = False) -> dict:
        """{'params', 'batch_stats'} of the model the metadata names (arch, num_classes),
        placed with `sharding`; with `ema`, its moving average's."""
        abstract = models.abstract_variables(self.meta["arch"], self.meta["num_classes"])
        return self.restore_model(abstract, sharding, ema=ema)

    def restore_model(self, abstract, sharding, *, ema: bool = False) -> dict:
        """{'params', 'batch_stats'} shaped like `abstract`, placed with `sharding`; with
        `ema`, the moving average's instead (a ConfigError when there is none)."""
        item = "ema" if ema else "model"
        if ema and not self.has_ema:
            raise ConfigError(
                f"checkpoint {self.path!r} (step {self.step}) holds no EMA of the weights: "
                "drop the EMA option, or train with --config.ema_decay=0.9999 (for example)")
        restored = self._manager.restore(self.step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(_with_sharding(abstract, sharding))}))
        return restored[item]


def save_model(workdir: str, variables: dict, meta: dict, *, step: int = 0) -> str:
    """Writes {'params', 'batch_stats'} and `meta` alone (no training state); returns the folder.

    Such a checkpoint (converted weights) restores for eval, classify and
    fine-tuning (`config.init_checkpoint`), not for resuming a run.
    """
    directory = checkpoint_dir(workdir)
    manager = _manager(directory)
    manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
    manager.close()
    return os.path.join(directory, str(step))


# --- the resume policy ---------------------------------------------------------------------


def check_compatible(saved: dict, config, where: str,
                     keys: tuple[str, ...] = ("arch", "num_classes")) -> None:
    """A checkpoint fits this config only with the same arch and num_classes (`keys`) and the
    same padding (weights converted from TensorFlow need 'same')."""
    for key in keys:
        if saved.get(key) != config[key]:
            raise ConfigError(
                f"{where} holds {key}={saved.get(key)!r} but the config has {key}={config[key]!r}: "
                f"set --config.{key}={saved.get(key)!r}, or use another workdir or checkpoint"
            )
    padding = saved.get("model_options", {}).get("padding", "symmetric")
    if padding != config.model.padding:
        raise ConfigError(
            f"{where} holds a model with padding={padding!r} but the config has "
            f"model.padding={config.model.padding!r}: set --config.model.padding={padding}")
