"""Training with periodic evaluation and checkpoints; evaluation of a saved checkpoint.

`setup_train_loop(config, workdir)` builds everything a run needs (data,
model, optimizer, train and eval steps, the state, resumed or fine-tuned)
and returns it as one `TrainRun`; `train_loop(run)` only runs it. The
benchmark and the tests call the same setup.
"""

import dataclasses
import functools
import signal
import threading
import time

import jax
import ml_collections
import numpy as np

from resnet_jax import checkpoint, models, parallel, reporting
from resnet_jax import config as config_lib
from resnet_jax.bench import hardware
from resnet_jax.data.source import Data, open_data
from resnet_jax.errors import ConfigError, TrainingError
from resnet_jax.models import flops
from resnet_jax.train import optimizer, precision
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

    @property
    def start_step(self) -> int:
        return int(jax.device_get(self.state.step))


def itstime(step: int, every_steps: int, total_steps: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) runs after `step`: every
    `every_steps` steps (0: never) and after the last step."""
    return (every_steps > 0 and step % every_steps == 0) or step == total_steps


def _prepare(config) -> None:
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
    _prepare(config)
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
    steps_per_epoch = config_lib.steps_per_epoch(data.num_train_images, train_batch)
    total_steps = steps_per_epoch * config.num_epochs
    parallel.log_devices()  # after the input checks: bad input prints its error alone

    # --- model, optimizer, steps -----------------------------------------------------------
    peak_lr = config_lib.learning_rate(config, train_batch)
    schedule = optimizer.schedule(peak_lr, warmup_epochs=config.warmup_epochs,
                                  num_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
                                  unit=config.lr_schedule_unit,
                                  warmup_from_zero=config.warmup_from_zero)
    tx = optimizer.create(schedule, momentum=config.momentum, nesterov=config.nesterov,
                          weight_decay=config.weight_decay,
                          weight_decay_rule=config.weight_decay_rule)
    model = models.build(config)
    replicated = parallel.replicated(mesh)
    state = jax.jit(
        functools.partial(state_lib.create, model, tx, image_size=config.image_size,
                          loss_scale=config.loss_scale_init if config.precision == "fp16" else 1.0,
                          ema=config.ema_decay > 0),
        out_shardings=replicated,
    )(jax.random.key(config.seed))
    train_step = step_lib.make_train_step(
        model, tx, schedule, mesh, num_classes=config.num_classes,
        label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
        fp16=config.precision == "fp16",
        loss_scale_growth_interval=config.loss_scale_growth_interval, seed=config.seed,
        accumulation_steps=accumulation, ema_decay=config.ema_decay,
        loss_scale_max=config.loss_scale_max)
    eval_step = step_lib.make_eval_step(models.build(config, train=False), mesh)

    # --- checkpoint: resume, or start from init_checkpoint -----------------------------------
    ckpt = None
    if workdir is not None:
        ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
        if ckpt.latest_step() is not None:
            state = checkpoint.resume(ckpt, state, config, train_batch, replicated)
            step = int(jax.device_get(state.step))
            reporting.log(f"resumed from {ckpt.directory} at step {step} "
                          f"(epoch {step / steps_per_epoch:.2f})")
        elif config.init_checkpoint:
            state = checkpoint.init_from(config, state, replicated)
    meta = {"arch": config.arch, "num_classes": config.num_classes,
            "class_names": data.class_names, "image_size": config.image_size,
            "eval_resize_size": config.eval_resize_size,
            "eval_antialias": config.eval_antialias, "ema_decay": config.ema_decay,
            "eval_image_size": config.eval_image_size, "precision": config.precision,
            "mean_rgb": list(config.mean_rgb), "std_rgb": list(config.std_rgb),
            "model_options": models.options(config)}
    return TrainRun(config=config, workdir=workdir, mesh=mesh, data=data, state=state,
                    train_step=train_step, eval_step=eval_step, train_batch=train_batch,
                    accumulation=accumulation, peak_learning_rate=peak_lr,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, ckpt=ckpt,
                    meta=meta)


def evaluate(eval_step, params, batch_stats, eval_data) -> dict:
    """Loss, top-1 and top-5 over every evaluation image exactly once."""
    totals = None
    for batch in eval_data:
        sums = eval_step(params, batch_stats, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count, "top1": float(totals["top1_hits"]) / count,
            "top5": float(totals["top5_hits"]) / count, "images": count}


def _mean_metrics(history: list[dict]) -> dict:
    fetched = jax.device_get(history)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _describe(run: TrainRun) -> str:
    config = run.config
    batch = str(run.train_batch) + (
        f" ({run.accumulation} accumulated batches of {run.train_batch // run.accumulation})"
        if run.accumulation > 1 else "")
    return (f"{config.arch}: {run.mesh.size} devices, {jax.process_count()} processes, "
            f"global batch {batch}, {run.data.num_train_images} train images = "
            f"{run.steps_per_epoch} steps/epoch, {config.num_epochs} epochs = {run.total_steps} "
            f"steps, peak lr {run.peak_learning_rate:.4g}, {config.precision}, "
            f"data {config.data.backend}")


def _compute_rate(run: TrainRun) -> dict:
    """Progress's model FLOPs per training image and the devices' peak, on GPUs (the
    progress line and TensorBoard then give TFLOP/s, and MFU where the peak is known)."""
    device = run.mesh.devices.flat[0]
    if device.platform != "gpu":
        return {}
    macs = flops.forward_macs(models.build(run.config, train=False), run.config.image_size)
    peak = hardware.peak_flops(device.device_kind, run.config.precision)
    return {"flops_per_image": hardware.model_flops_per_image(macs, train=True),
            "peak_flops": peak * run.mesh.size if peak else None}


def _speed_scalars(speed: dict) -> dict:
    """TensorBoard's speed scalars: img/s, and TFLOP/s, MFU and peak memory where known."""
    scalars = {f"train/{k}": speed[k] for k in ("images_per_sec", "tflops_per_sec", "mfu")
               if k in speed}
    peak = reporting.peak_memory_bytes()
    if peak is not None:
        scalars["train/peak_memory_gib"] = peak / 2**30
    return scalars


def train_loop(run: TrainRun) -> dict:
    """Trains `run` to its last step, evaluating, logging and checkpointing as configured.

    Returns the last evaluation's metrics (empty without evaluation data).
    """
    config, ckpt, state = run.config, run.ckpt, run.state
    start_step, total_steps, per_epoch = run.start_step, run.total_steps, run.steps_per_epoch
    writer = reporting.create_writer(run.workdir, tensorboard=config.tensorboard)
    if start_step == 0:
        writer.write_hparams(dict(_flatten(config.to_dict())))
    reporting.log(_describe(run))
    progress = reporting.Progress(total_steps=total_steps, start_step=start_step,
                                  global_batch_size=run.train_batch, **_compute_rate(run))
    guard = NonFiniteGuard(config.max_nonfinite_steps if config.precision == "fp16" else 1,
                           config.precision)
    history, eval_metrics, saved_at = [], {}, None
    compile_start = time.perf_counter()
    # Built once; batch g is the same whether the run started at 0 or resumed at g.
    batches = run.data.train(start_step)
    try:
        with StopSignals() as stop:
            for step in range(start_step + 1, total_steps + 1):
                state, metrics = run.train_step(state, next(batches))
                history.append(metrics)
                guard.add(metrics["grads_finite"])
                if step == start_step + 1:
                    jax.block_until_ready(metrics)
                    reporting.log(f"first step (compilation included) took "
                                  f"{time.perf_counter() - compile_start:.1f}s")
                    progress.reset(step)

                logged = itstime(step, config.log_every_steps, total_steps)
                if logged:
                    guard.check(step, ckpt)
                    summary, history = _mean_metrics(history), []
                    speed = progress.mark(step)
                    writer.write_scalars(step, {**{f"train/{k}": v for k, v in summary.items()},
                                                **_speed_scalars(speed)})
                    reporting.log(progress.line(step, step / per_epoch, config.num_epochs,
                                                summary, speed))

                evaluate_now = run.data.eval is not None and itstime(
                    step, config.eval_every_epochs * per_epoch, total_steps)
                save_now = itstime(step, config.checkpoint_every_epochs * per_epoch, total_steps)
                if evaluate_now or save_now:
                    epoch = step // per_epoch
                    # Waits for the queued training steps first: they are training time.
                    with progress.pause(state):
                        if evaluate_now:
                            eval_metrics = evaluate(run.eval_step, state.params,
                                                    state.batch_stats, run.data.eval)
                            line = _format_eval(eval_metrics)
                            if state.ema is not None:  # the moving average, beside the model
                                ema = evaluate(run.eval_step, state.ema["params"],
                                               state.ema["batch_stats"], run.data.eval)
                                line += f" | EMA: {_format_eval(ema)}"
                                eval_metrics.update({f"{k}_ema": v for k, v in ema.items()
                                                     if k != "images"})
                            writer.write_scalars(
                                step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                            reporting.log(f"eval epoch {epoch}: {line}")
                        if save_now:
                            guard.check(step, ckpt)
                            ckpt.save(state, {**run.meta, "epoch": epoch,
                                              "images_seen": step * run.train_batch})
                            saved_at = step

                # Several processes stop together: they agree at logged steps.
                if stop.requested(collective=logged):
                    guard.check(step, ckpt)
                    if saved_at != step:
                        ckpt.save(state, {**run.meta, "epoch": step / per_epoch,
                                          "images_seen": step * run.train_batch})
                    ckpt.wait()
                    reporting.log(f"stopped by {stop.signal_name} after step {step}: checkpoint "
                                  f"saved in {ckpt.directory}; run the same command to resume")
                    break
    finally:
        # Also on an error: pending checkpoint writes finish, metrics reach the disk.
        ckpt.close()
        writer.close()
    run.state = state
    return eval_metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains config.arch per the config, evaluating and checkpointing every few epochs.

    Restarting with the same workdir resumes from its latest checkpoint.
    Returns the last evaluation's metrics (empty without evaluation data).
    """
    return train_loop(setup_train_loop(config, workdir))


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop after the current step (a second SIGINT aborts).

    Preemption (SLURM, Kubernetes) sends SIGTERM; Ctrl-C sends SIGINT. The loop
    saves a checkpoint and returns normally, so the process exits 0.
    """

    def __init__(self):
        self.signal_name = None
        self._announced = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        # No logging here: the handler may run inside a write to stderr (a write interrupted
        # by the signal), and a second write into the same buffer fails. `requested` says it.
        self.signal_name = signal.Signals(signum).name
        # A second Ctrl-C interrupts at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def requested(self, *, collective: bool) -> bool:
        """True when this process (alone), or at a collective check any process, got a signal.

        Called after every step; the first call after a signal says that the run will stop.
        """
        if self.signal_name is not None and not self._announced:
            self._announced = True
            reporting.log(f"{self.signal_name}: stopping after this step and saving a checkpoint")
        if jax.process_count() == 1:
            return self.signal_name is not None
        if not collective:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
        if np.any(flags) and self.signal_name is None:
            self.signal_name = "a signal to another process"
        return bool(np.any(flags))

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class NonFiniteGuard:
    """Stops training after `limit` steps in a row with non-finite gradients.

    Such a step never changes the parameters (the train step keeps the old
    state); with fp16 it also halves the loss scale, and a few in a row are
    normal at the start. The check fetches the flags of the steps since the
    last check, so it costs no device sync of its own.
    """

    def __init__(self, limit: int, precision_name: str):
        self.limit = max(1, limit)
        self.precision = precision_name
        self._pending = []
        self.in_a_row = 0

    def add(self, finite) -> None:
        """Records one step's `grads_finite` (a device scalar)."""
        self._pending.append(finite)

    def check(self, step: int, ckpt) -> None:
        """Raises TrainingError when the last `limit` steps all had non-finite gradients."""
        for finite in jax.device_get(self._pending):
            self.in_a_row = 0 if finite else self.in_a_row + 1
            if self.in_a_row >= self.limit:
                break
        self._pending = []
        if self.in_a_row >= self.limit:
            last = ckpt.latest_step()
            kept = (f"the last checkpoint (step {last}) is intact" if last is not None
                    else "no checkpoint was written")
            hint = ("raise --config.max_nonfinite_steps if the loss scale is still settling, "
                    if self.precision == "fp16" else "")
            raise TrainingError(
                f"{self.in_a_row} training step(s) in a row up to step {step} had a non-finite "
                f"loss or gradients ({self.precision}); the parameters were not updated by "
                f"them and {kept}. Lower --config.base_learning_rate, {hint}or try "
                f"--config.precision=fp32, then run the same command to resume")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | None) -> dict:
    """Restores params and BN statistics from a checkpoint and evaluates them on data.root/val."""
    _prepare(config)
    path = config.checkpoint or workdir
    if not path:
        raise ConfigError("mode=eval needs a checkpoint: pass --workdir of a training run or "
                          "--config.checkpoint=PATH")
    saved = checkpoint.Saved(path)
    _adopt_recorded(config, saved.meta, path)
    checkpoint.check_compatible(saved.meta, config, f"checkpoint {path!r}")
    mesh = parallel.make_mesh()
    eval_batch = config_lib.eval_global_batch_size(config, mesh.size)
    data = open_data(config, mesh, train_batch=eval_batch, eval_batch=eval_batch,
                     with_train=False)
    if data.eval is None:
        raise ConfigError("mode=eval needs images: set --config.data.backend=dali_gpu or "
                          "dali_cpu and --config.data.root=DIR with DIR/val/<class>/*.JPEG")
    parallel.log_devices()
    model = models.build(config, train=False)
    variables = saved.restore_model(state_lib.abstract_variables(config.arch, config.num_classes),
                                    parallel.replicated(mesh), ema=config.eval_ema)
    metrics = evaluate(step_lib.make_eval_step(model, mesh), variables["params"],
                       variables["batch_stats"], data.eval)
    which = ", EMA of the weights" if config.eval_ema else ""
    reporting.log(f"eval of {path} (step {saved.step}, {config.arch}{which}): "
                  f"{_format_eval(metrics)}")
    return metrics


def _adopt_recorded(config: ml_collections.ConfigDict, meta: dict, path: str) -> None:
    """Evaluates the weights as they were trained: the model options (padding, BN epsilon)
    and the input normalization a checkpoint records win over the config's, with a log line
    for each that differs (older checkpoints record none)."""
    recorded = [(config.model, "model.", key, value)
                for key, value in meta.get("model_options", {}).items()]
    recorded += [(config, "", key, meta[key]) for key in ("mean_rgb", "std_rgb") if key in meta]
    for section, prefix, key, value in recorded:
        # JSON gives lists back; the config holds tuples.
        mine = tuple(section[key]) if isinstance(value, list) else section[key]
        theirs = tuple(value) if isinstance(value, list) else value
        if mine != theirs:
            reporting.log(f"{prefix}{key}={theirs} as checkpoint {path!r} records (the config "
                          f"has {mine})")
            section[key] = theirs


def _format_eval(metrics: dict) -> str:
    return (f"top1 {100 * metrics['top1']:.2f}% top5 {100 * metrics['top5']:.2f}% "
            f"loss {metrics['loss']:.4f} on {metrics['images']} images")


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
