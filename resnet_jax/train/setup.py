"""Everything a training run needs, built once: `setup_train_loop(config, workdir)`; and
which saved state a run continues from (`resume`, `init_from`).

It builds the data, model, optimizer, train and eval steps and the state,
resumed from the workdir's latest checkpoint or started from
`config.init_checkpoint`, and returns them as one `TrainRun`;
`loop.train_loop(run)` only runs it. The benchmark and the tests call the
same set-up.
"""

import dataclasses
import functools

import jax
import ml_collections
import numpy as np
import optax

from resnet_jax import checkpoint, models, parallel, precision, reporting
from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax.data.source import Data, open_data
from resnet_jax.errors import ConfigError
from resnet_jax.train import optimizer
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib


@dataclasses.dataclass
class TrainRun:
    """Everything a training run needs, built by `setup_train_loop`."""

    config: ml_collections.ConfigDict
    workdir: str | None  # None: nothing is read or written (benchmarks, tests)
    mesh: jax.sharding.Mesh
    data: Data
    state: state_lib.TrainState
    train_step: object  # (state, batch) -> (state, metrics)
    eval_step: object  # (params, batch_stats, batch) -> sums
    train_batch: int  # images per optimizer step: `accumulation` batches of the global size
    accumulation: int
    peak_learning_rate: float
    steps_per_epoch: int
    total_steps: int
    ckpt: checkpoint.Checkpointer | None  # None without a workdir
    meta: dict  # saved with every checkpoint
    stopped_by: str | None = None  # the signal that ended training early, once one has

    @property
    def start_step(self) -> int:
        return int(jax.device_get(self.state.step))


def prepare(config) -> None:
    """Checks the config and sets the matmul precision it asks for."""
    config_lib.validate(config)
    matmul_precision = precision.matmul_precision(config.precision)
    if matmul_precision:
        jax.config.update("jax_default_matmul_precision", matmul_precision)


def setup_train_loop(config: ml_collections.ConfigDict, workdir: str | None, *,
                     with_eval: bool = True) -> TrainRun:
    """Builds a run of `config`; with a `workdir`, resumed from its latest checkpoint.

    Without a workdir nothing is read or written (benchmarks, tests);
    `with_eval=False` leaves the validation images unread.
    """
    # --- config and devices ----------------------------------------------------------------
    prepare(config)
    if workdir is not None:
        config_lib.check_workdir(workdir)
    mesh = parallel.make_mesh()
    # One optimizer step reads `train_batch` images: `accumulation` batches of the global size.
    accumulation = config_lib.accumulation_steps(config, mesh.size)
    train_batch = config_lib.optimizer_batch_size(config, mesh.size)
    eval_batch = config_lib.eval_global_batch_size(config, mesh.size)

    # --- input pipeline --------------------------------------------------------------------
    data = open_data(config, mesh, train_batch=train_batch, eval_batch=eval_batch,
                     with_eval=with_eval)
    steps_per_epoch = data_lib.steps_per_epoch(data.num_train_images, train_batch)
    total_steps = steps_per_epoch * config.num_epochs
    parallel.log_devices()  # after the input checks: bad input prints its error alone

    # --- model, optimizer, steps -----------------------------------------------------------
    steps = build_steps(config, mesh, train_batch=train_batch, accumulation=accumulation,
                        steps_per_epoch=steps_per_epoch)
    replicated = parallel.replicated(mesh)
    state = jax.jit(steps.create_state, out_shardings=replicated)(jax.random.key(config.seed))
    train_step, eval_step, peak_lr = steps.train_step, steps.eval_step, steps.peak_learning_rate

    # --- checkpoint: resume, or start from init_checkpoint -----------------------------------
    ckpt = None
    if workdir is not None:
        ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
        if ckpt.latest_step() is not None:
            state = resume(ckpt, state, config, train_batch, replicated)
            step = int(jax.device_get(state.step))
            reporting.log(f"resumed from {ckpt.directory} at step {step} "
                          f"(epoch {step / steps_per_epoch:.2f})")
        elif config.init_checkpoint:
            state = init_from(config, state, replicated)
    meta = checkpoint.model_meta(
        arch=config.arch, num_classes=config.num_classes, class_names=data.class_names,
        image_size=config.image_size, eval_resize_size=config.eval_resize_size,
        eval_image_size=config.eval_image_size, eval_antialias=config.eval_antialias,
        mean_rgb=config.mean_rgb, std_rgb=config.std_rgb, model_options=models.options(config),
        precision=config.precision, ema_decay=config.ema_decay, optimizer=config.optimizer)
    return TrainRun(config=config, workdir=workdir, mesh=mesh, data=data, state=state,
                    train_step=train_step, eval_step=eval_step, train_batch=train_batch,
                    accumulation=accumulation, peak_learning_rate=peak_lr,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, ckpt=ckpt,
                    meta=meta)


@dataclasses.dataclass
class Steps:
    """A config's compiled functions on a mesh, before any data or state exists."""

    create_state: object  # PRNG key -> the initial TrainState (not jitted)
    train_step: object  # jitted
    eval_step: object  # jitted
    peak_learning_rate: float


def build_steps(config, mesh, *, train_batch: int, accumulation: int,
                steps_per_epoch: int) -> Steps:
    """The model, optimizer, schedule, state and steps of `config` on `mesh`: what a run
    trains with, and what scripts/benchmark_compiled.py compiles for GPUs it does not have."""
    peak_lr = config_lib.learning_rate(config, train_batch)
    schedule = optimizer.schedule(peak_lr, warmup_epochs=config.warmup_epochs,
                                  num_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
                                  unit=config.lr_schedule_unit,
                                  warmup_from_zero=config.warmup_from_zero,
                                  decay=config.lr_schedule, end=config.end_learning_rate,
                                  power=config.lr_decay_power)
    tx = optimizer.create(schedule, momentum=config.momentum, nesterov=config.nesterov,
                          weight_decay=config.weight_decay,
                          weight_decay_rule=config.weight_decay_rule, kind=config.optimizer,
                          lars_eta=config.lars_eta, lars_eps=config.lars_eps)
    model = models.build(config)
    create_state = functools.partial(
        state_lib.create, model, tx, image_size=config.image_size,
        loss_scale=config.loss_scale_init if config.precision == "fp16" else 1.0,
        ema=config.ema_decay > 0)
    train_step = step_lib.make_train_step(
        model, tx, schedule, mesh, num_classes=config.num_classes,
        label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
        mixup_per_sample=config.mixup_per_sample,
        fp16=config.precision == "fp16",
        loss_scale_growth_interval=config.loss_scale_growth_interval, seed=config.seed,
        accumulation_steps=accumulation, ema_decay=config.ema_decay,
        loss_scale_max=config.loss_scale_max)
    eval_step = step_lib.make_eval_step(models.build(config, train=False), mesh)
    return Steps(create_state, train_step, eval_step, peak_lr)


# --- the resume and fine-tuning policy ----------------------------------------------------


def resume(ckpt: checkpoint.Checkpointer, state: state_lib.TrainState, config,
           train_batch: int, sharding) -> state_lib.TrainState:
    """The run's latest checkpoint in place of the fresh `state`, when there is one.

    A run resumed with another global batch (other batch size or device count)
    goes on from the same number of images seen, and so the same epoch and
    learning-rate position: the step is renumbered, the checkpoint saved again
    under the new number, and the old-numbered ones that later saves would
    collide with are dropped.
    """
    saved_step = ckpt.latest_step()
    if saved_step is None:
        return state
    saved = ckpt.latest_meta()
    checkpoint.check_compatible(saved, config, f"the checkpoint in {ckpt.directory!r}")
    # The optimizers' states differ in layout and meaning; checkpoints written before the
    # field was recorded were all 'sgd'.
    trained_with = saved.get("optimizer", "sgd")
    if trained_with != config.optimizer:
        raise ConfigError(
            f"the checkpoint in {ckpt.directory!r} was trained with optimizer={trained_with!r} "
            f"but the config has optimizer={config.optimizer!r}: set "
            f"--config.optimizer={trained_with} to resume it, or use another workdir")
    wants_ema = state.ema is not None
    state = ckpt.restore(state, sharding)
    if wants_ema and state.ema is None:
        reporting.log(f"checkpoint {saved_step} has no EMA of the weights: it starts from "
                      "them now")
        state = state.replace(ema=state_lib.ema_start(state.params, state.batch_stats))
    images = saved.get("images_seen")
    if images is None or images == saved_step * train_batch:
        return state
    new_step = images // train_batch
    reporting.log(f"the global batch is now {train_batch} (was {images // max(saved_step, 1)}): "
                  f"step {saved_step} becomes step {new_step}, after the same {images} images")
    def count():  # a new array each call: no two leaves of the state share a buffer
        return jax.device_put(np.asarray(new_step, state.step.dtype), sharding)

    opt_state = optax.tree_utils.tree_set(state.opt_state, count=count())
    state = state.replace(step=count(), opt_state=opt_state)
    ckpt.save(state, saved)
    ckpt.wait()
    ckpt.delete_after(new_step)
    return state


def init_from(config, state: state_lib.TrainState, sharding) -> state_lib.TrainState:
    """Fine-tuning: params and BN statistics from config.init_checkpoint, a fresh optimizer.

    The classifier (fc) is kept only when num_classes matches; otherwise the
    freshly initialised one is used.
    """
    saved = checkpoint.Saved(config.init_checkpoint)
    # Another num_classes is fine: the classifier is replaced below.
    checkpoint.check_compatible(saved.meta, config, f"init_checkpoint {config.init_checkpoint!r}",
                     keys=("arch",))
    num_classes = saved.meta["num_classes"]
    variables = saved.restore_variables(sharding)
    params = variables["params"]
    kept = "all layers"
    if num_classes != config.num_classes:
        params = {**params, "fc": state.params["fc"]}
        kept = f"all but fc (new fc for {config.num_classes} classes, was {num_classes})"
    reporting.log(f"initialised from {saved.directory}/{saved.step}: {kept}")
    # The moving average starts from the weights training starts from.
    ema = None if state.ema is None else state_lib.ema_start(params, variables["batch_stats"])
    return state.replace(params=params, batch_stats=variables["batch_stats"], ema=ema)
