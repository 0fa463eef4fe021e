"""Orbax checkpoints: save during training, resume after a restart, restore for eval.

A checkpoint is a step folder under WORKDIR/checkpoints with three items:
  model  {'params', 'batch_stats'}: all that inference needs
  train  {'step', 'opt_state', 'loss_scale', 'good_steps'}: the rest of the state
  meta   JSON: arch, num_classes, class names, image sizes, epoch
Evaluation and fine-tuning read `model` and `meta` only. Orbax writes each
step to a temporary folder and renames it when complete, so an interrupted
save is never taken for the latest checkpoint.
"""

import os

import jax
import orbax.checkpoint as ocp

from resnet_jax.errors import ConfigError
from resnet_jax.train.state import TrainState


def checkpoint_dir(workdir: str) -> str:
    """Where a training run in `workdir` keeps its checkpoints."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _manager(directory: str, *, keep: int | None = None, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("model", "train", "meta"))


def _restore_meta(manager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _with_sharding(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpointer:
    """Saves training state asynchronously, keeps the last `keep`, resumes from the latest."""

    def __init__(self, workdir: str, *, keep: int):
        self.directory = checkpoint_dir(workdir)
        self._manager = _manager(self.directory, keep=keep)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, state: TrainState, meta: dict) -> None:
        """Starts writing `state` at its step; returns before the write finishes."""
        step = int(jax.device_get(state.step))
        self._manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave({"params": state.params,
                                         "batch_stats": state.batch_stats}),
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state,
                                         "loss_scale": state.loss_scale,
                                         "good_steps": state.good_steps}),
            meta=ocp.args.JsonSave(meta),
        ))

    def latest_meta(self) -> dict:
        """The metadata of the latest checkpoint (read before restoring, to check it fits)."""
        return _restore_meta(self._manager, self._manager.latest_step())

    def restore(self, state: TrainState, sharding) -> TrainState:
        """The latest checkpoint, shaped like `state` and placed with `sharding`."""
        step = self._manager.latest_step()
        abstract = _with_sharding(jax.eval_shape(lambda s: s, state), sharding)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore({"params": abstract.params,
                                            "batch_stats": abstract.batch_stats}),
            train=ocp.args.StandardRestore({"step": abstract.step,
                                            "opt_state": abstract.opt_state,
                                            "loss_scale": abstract.loss_scale,
                                            "good_steps": abstract.good_steps}),
        ))
        model, train = restored["model"], restored["train"]
        return state.replace(params=model["params"], batch_stats=model["batch_stats"], **train)

    def delete_after(self, step: int) -> None:
        """Deletes the checkpoints of steps after `step` (numbered in another batch size)."""
        for saved in self._manager.all_steps():
            if saved > step:
                self._manager.delete(saved)

    def wait(self) -> None:
        """Blocks until the last save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def resolve(path: str) -> tuple[str, int]:
    """(checkpoints directory, step) for a workdir, a checkpoints folder or one step folder.

    For a workdir or checkpoints folder, the step is the latest complete one.
    """
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
        return os.path.dirname(path), int(base)
    step = _manager(path, read_only=True).latest_step()
    if step is None:
        raise ConfigError(
            f"checkpoint {path!r} holds no complete checkpoint: train first, or pass "
            "--config.checkpoint=WORKDIR/checkpoints/STEP of a finished save"
        )
    return path, step


def read_meta(directory: str, step: int) -> dict:
    """The metadata of checkpoint `step` in `directory` (as `resolve` returns them)."""
    return _restore_meta(_manager(directory, read_only=True), step)


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


def restore_model(directory: str, step: int, abstract_variables, sharding) -> dict:
    """{'params', 'batch_stats'} of checkpoint `step` in `directory` (see `resolve`)."""
    restored = _manager(directory, read_only=True).restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_with_sharding(abstract_variables, sharding))))
    return restored["model"]
