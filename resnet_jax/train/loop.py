"""The training loop: `train_loop(run)` runs what `setup.setup_train_loop` built.

Every step is one jitted train step on the next batch. Each periodic action
(log, evaluate, save) is one block, decided by `itstime`, that calls a method
of `RunOutputs`, which owns everything the run writes; a stop signal
(preemption, Ctrl-C) saves and ends the run.
"""

import signal
import threading
import time

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from resnet_jax import hardware, models, reporting
from resnet_jax.errors import TrainingError
from resnet_jax.models import flops
from resnet_jax.train.evaluate import evaluate, format_eval
from resnet_jax.train.setup import TrainRun, setup_train_loop


def itstime(step: int, every_steps: int, total_steps: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) runs after `step`: every
    `every_steps` steps (0: never) and after the last step."""
    return (every_steps > 0 and step % every_steps == 0) or step == total_steps


def eval_due(step: int, steps_per_epoch: int, every_epochs: int, offset_epochs: int,
             total_steps: int) -> bool:
    """Whether an evaluation runs after `step`: at the end of epoch e (counted from 1) when
    e >= offset_epochs and e - offset_epochs is a multiple of every_epochs (0: never), and
    after the last step. Offset 0 evaluates every `every_epochs` epochs."""
    if step == total_steps:
        return True
    if every_epochs <= 0 or step % steps_per_epoch:
        return False
    epoch = step // steps_per_epoch
    return epoch >= offset_epochs and (epoch - offset_epochs) % every_epochs == 0


def train_loop(run: TrainRun) -> dict:
    """Trains `run` to its last step, evaluating, logging and checkpointing as configured;
    with config.target_top1, stops after the evaluation that reaches it.

    Returns the last evaluation's metrics (empty without evaluation data).
    """
    config, state, total = run.config, run.state, run.total_steps
    save_every = config.checkpoint_every_epochs * run.steps_per_epoch
    # Built once; batch g is the same whether the run started at 0 or resumed at g.
    batches = run.data.train(run.start_step)
    eval_metrics = {}
    with RunOutputs(run) as outputs, StopSignals() as stop:
        for step in range(run.start_step + 1, total + 1):
            state, metrics = run.train_step(state, next(batches))
            outputs.step_done(step, metrics)
            logged = itstime(step, config.log_every_steps, total)
            if logged:
                outputs.log_progress(step)
            if run.data.eval is not None and eval_due(step, run.steps_per_epoch,
                                                      config.eval_every_epochs,
                                                      config.eval_offset_epochs, total):
                eval_metrics = outputs.evaluate(step, state)  # also checks target_top1
            if itstime(step, save_every, total) or outputs.target_reached:
                outputs.save(step, state)
            if outputs.target_reached:  # every process evaluated the same: they stop together
                break
            # Several processes stop together: they agree at logged steps.
            if stop.requested(collective=logged):
                outputs.stop(step, state, stop.signal_name)
                run.stopped_by = stop.signal_name
                break
        else:  # the last step ran
            outputs.target_missed()
    run.state = state
    return eval_metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains config.arch per the config, evaluating and checkpointing every few epochs.

    Restarting with the same workdir resumes from its latest checkpoint.
    Returns the last evaluation's metrics (empty without evaluation data).
    """
    return train_loop(setup_train_loop(config, workdir))


class RunOutputs:
    """What a run writes: metrics (TensorBoard, metrics.jsonl), progress lines, evaluations
    and checkpoints; and the guard against non-finite steps.

    As a context manager it finishes pending checkpoint writes and flushes the
    metrics on the way out, also on an error.
    """

    def __init__(self, run: TrainRun):
        self.run, self.config, self.ckpt = run, run.config, run.ckpt
        self.writer = reporting.create_writer(run.workdir, tensorboard=self.config.tensorboard)
        if run.start_step == 0:
            self.writer.write_hparams(dict(_flatten(self.config.to_dict())))
        reporting.log(_describe(run))
        self.progress = reporting.Progress(total_steps=run.total_steps,
                                           start_step=run.start_step,
                                           global_batch_size=run.train_batch,
                                           **compute_rate(run))
        precision = self.config.precision
        self.guard = NonFiniteGuard(
            self.config.max_nonfinite_steps if precision == "fp16" else 1, precision)
        self.history = []
        # The best evaluation so far; a resumed run goes on from its best checkpoint's.
        best = self.ckpt.best_meta() if self.ckpt is not None else None
        self.best = (best["eval_top1"], best["epoch"]) if best else None
        self.target_reached = False
        self._start_step = run.start_step  # read once, before the loop replaces run.state
        self._first_step = self._start_step + 1
        # The first training step starts now: the time to target counts from here.
        self._started = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ckpt.close()
        self.writer.close()
        return False

    def step_done(self, step: int, metrics: dict) -> None:
        """Keeps a step's metrics (device arrays: nothing waits) until the next log."""
        self.history.append(metrics)
        self.guard.add(metrics["grads_finite"])
        if step == self._first_step:
            jax.block_until_ready(metrics)
            reporting.log(f"first step (compilation included) took "
                          f"{time.perf_counter() - self._started:.1f}s")
            self.progress.reset(step)

    def log_progress(self, step: int) -> None:
        """The progress line and the train scalars, means over the steps since the last log."""
        self.guard.check(step, self.ckpt)
        summary, self.history = _mean_metrics(self.history), []
        speed = self.progress.mark(step)
        self.writer.write_scalars(step, {**{f"train/{k}": v for k, v in summary.items()},
                                         **_speed_scalars(speed)})
        per_epoch = self.run.steps_per_epoch
        reporting.log(self.progress.line(step, step / per_epoch, self.config.num_epochs,
                                         summary, speed))

    def evaluate(self, step: int, state) -> dict:
        """The model (and its moving average, when kept) on the whole validation set."""
        # Waits for the queued training steps first: they are training time.
        with self.progress.pause(state):
            metrics = evaluate(self.run.eval_step, state.params, state.batch_stats,
                               self.run.data.eval)
            line = format_eval(metrics)
            if state.ema is not None:
                ema = evaluate(self.run.eval_step, state.ema["params"],
                               state.ema["batch_stats"], self.run.data.eval)
                line += f" | EMA: {format_eval(ema)}"
                metrics.update({f"{k}_ema": v for k, v in ema.items() if k != "images"})
            line += self._keep_best(step, state, metrics["top1"])
            self.writer.write_scalars(step, {**{f"eval/{k}": v for k, v in metrics.items()},
                                             "eval/best_top1": self.best[0]})
            reporting.log(f"eval epoch {step // self.run.steps_per_epoch}: {line}")
        self._check_target(step, metrics["top1"])
        return metrics

    def _meta(self, step: int, **more) -> dict:
        return {**self.run.meta, "epoch": step / self.run.steps_per_epoch,
                "images_seen": step * self.run.train_batch, **more}

    def _keep_best(self, step: int, state, top1: float) -> str:
        """A better top-1 than any before: its model goes to WORKDIR/best. Returns the eval
        line's ' | best top-1 so far ...'."""
        if self.best is None or top1 > self.best[0]:
            self.best = (top1, step / self.run.steps_per_epoch)
            self.guard.check(step, self.ckpt)  # never a diverged model as the best
            if self.ckpt is not None:
                self.ckpt.save_best(state, self._meta(step, eval_top1=top1))
        return f" | best top-1 so far {100 * self.best[0]:.2f}% (epoch {self.best[1]:g})"

    def _check_target(self, step: int, top1: float) -> None:
        """Whether this evaluation reached config.target_top1: the time to it, logged and
        recorded (target/*), from the first training step to the end of this evaluation."""
        target = self.config.target_top1
        if not target or top1 < target:
            return
        self.target_reached = True
        seconds = time.perf_counter() - self._started
        epoch = step / self.run.steps_per_epoch
        self.writer.write_scalars(step, {"target/reached": 1.0, "target/time_to_target_s": seconds,
                                         "target/epoch": epoch, "target/top1": top1})
        since = (f" (this process's, resumed at step {self._start_step})"
                 if self._start_step else "")
        reporting.log(f"target top-1 {100 * target:.2f}% reached at epoch {epoch:g} (top1 "
                      f"{100 * top1:.2f}%): {seconds:.1f}s ({reporting.format_duration(seconds)}) "
                      f"from the first training step{since} to the end of this evaluation; "
                      f"stopping with a checkpoint")

    def target_missed(self) -> None:
        """The last step ran without reaching config.target_top1: says so."""
        target = self.config.target_top1
        if not target or self.run.data.eval is None:
            return
        best = (f"best top-1 {100 * self.best[0]:.2f}% at epoch {self.best[1]:g}"
                if self.best else "no evaluation")
        self.writer.write_scalars(self.run.total_steps, {"target/reached": 0.0})
        reporting.log(f"target top-1 {100 * target:.2f}% not reached in "
                      f"{self.config.num_epochs} epochs: {best}")

    def save(self, step: int, state) -> None:
        """Starts writing a checkpoint of `state` (after `step`), unless one already holds it."""
        self.guard.check(step, self.ckpt)
        if self.ckpt.latest_step() == step:
            return
        with self.progress.pause(state):
            self.ckpt.save(state, self._meta(step))

    def stop(self, step: int, state, signal_name: str) -> None:
        """A stop signal: a checkpoint after `step`, on disk before the run returns."""
        self.save(step, state)
        self.ckpt.wait()
        reporting.log(f"stopped by {signal_name} after step {step}: checkpoint saved in "
                      f"{self.ckpt.directory}; run the same command to resume")


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


def compute_rate(run: TrainRun) -> dict:
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


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
