"""Metrics out: TensorBoard and log lines through clu, JSON lines, a progress line.

clu's writers import TensorFlow, so clu is imported only where a run writes
TensorBoard events (`create_writer`, unless `config.tensorboard` is False):
evaluation, classification and conversion never load TensorFlow.
"""

import contextlib
import json
import os
import time

from absl import logging
import jax
import numpy as np


class JsonLinesWriter:
    """Appends one JSON object per write_scalars call: {"step": N, "name": value, ...}."""

    def __init__(self, path: str):
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (closed in close())

    def write_scalars(self, step, scalars):
        record = {"step": int(step)}
        record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")

    def write_hparams(self, hparams):
        self._file.write(json.dumps({"hparams": {k: str(v) for k, v in hparams.items()}}) + "\n")

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


class Writers:
    """Scalars and hyperparameters to several writers at once (clu writers or JsonLinesWriter)."""

    def __init__(self, writers):
        self._writers = tuple(writers)

    def write_scalars(self, step: int, scalars: dict) -> None:
        for writer in self._writers:
            writer.write_scalars(step, scalars)

    def write_hparams(self, hparams: dict) -> None:
        for writer in self._writers:
            writer.write_hparams(hparams)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


def create_writer(workdir: str, *, tensorboard: bool = True) -> Writers:
    """WORKDIR/metrics.jsonl (+ TensorBoard events and log lines), written by process 0 only."""
    if jax.process_index() > 0:
        return Writers([])  # writes nothing
    os.makedirs(workdir, exist_ok=True)
    writers = [JsonLinesWriter(os.path.join(workdir, "metrics.jsonl"))]
    if tensorboard:
        from clu import metric_writers  # loads TensorFlow

        writers.insert(0, metric_writers.create_default_writer(workdir, asynchronous=True))
    return Writers(writers)


def format_duration(seconds: float) -> str:
    """'1h02m', '3m05s', '12s'."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Training speed and ETA, with time spent outside training (eval, checkpoints) apart.

    Call `mark()` after each logged step (metrics fetched, so the devices are
    done), and wrap eval and checkpoint work in `with progress.pause(state):`.
    Training steps are dispatched ahead of the devices; the pause first waits
    for them to finish, so that their time counts as training, not as eval.
    """

    def __init__(self, *, total_steps: int, start_step: int, global_batch_size: int,
                 flops_per_image: float | None = None, peak_flops: float | None = None):
        """`flops_per_image`: model FLOPs of one training image (None: no TFLOP/s);
        `peak_flops`: the dense peak of all devices together (None: no MFU)."""
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.flops_per_image = flops_per_image
        self.peak_flops = peak_flops
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._train_seconds = 0.0
        self._steps_timed = 0
        self.paused_seconds = 0.0

    def reset(self, step: int) -> None:
        """Starts timing at `step` (e.g. after the first step, to leave compilation out)."""
        self._last_step, self._last_time = step, time.perf_counter()

    def mark(self, step: int) -> dict:
        """Speed since the previous mark: {'images_per_sec', 'steps_per_sec'}, and
        'tflops_per_sec' and 'mfu' where the model's FLOPs and the devices' peak are known.

        Images over the wall time of the whole interval (pauses excluded), not a
        mean of per-step rates, which overstates a run with uneven steps.
        """
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps = step - self._last_step
        self._last_step, self._last_time = step, now
        self._train_seconds += elapsed
        self._steps_timed += steps
        images_per_sec = steps * self.global_batch_size / elapsed
        speed = {"steps_per_sec": steps / elapsed, "images_per_sec": images_per_sec}
        if self.flops_per_image:
            speed["tflops_per_sec"] = images_per_sec * self.flops_per_image / 1e12
            if self.peak_flops:
                speed["mfu"] = images_per_sec * self.flops_per_image / self.peak_flops
        return speed

    def eta_seconds(self, step: int) -> float:
        """Training time left at the average speed so far."""
        if not self._steps_timed:
            return float("nan")
        return (self.total_steps - step) * self._train_seconds / self._steps_timed

    @contextlib.contextmanager
    def pause(self, pending=None):
        """Time inside is not training time; `pending` (e.g. the state) is waited for first.

        Waiting here, and only here, keeps the devices' queue of training steps
        out of the pause without a sync on every step.
        """
        if pending is not None:
            jax.block_until_ready(pending)
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.paused_seconds += spent
            self._last_time += spent

    def line(self, step: int, epoch: float, num_epochs: int, metrics: dict, speed: dict) -> str:
        """One human line: where the run is, how it learns, how fast, how long to go."""
        eta = self.eta_seconds(step)
        compute = ""
        if "tflops_per_sec" in speed:
            compute = f" {speed['tflops_per_sec']:,.1f} TFLOP/s"
        if "mfu" in speed:
            compute += f" MFU {100 * speed['mfu']:.1f}%"
        return (
            f"epoch {epoch:.2f}/{num_epochs} step {step}/{self.total_steps} | "
            f"loss {metrics['loss']:.4f} top1 {100 * metrics['top1']:.1f}% "
            f"lr {metrics['learning_rate']:.4g} | {speed['images_per_sec']:,.0f} img/s"
            f"{compute} | "
            f"ETA {format_duration(eta) if eta == eta else '?'} | "
            f"eval+checkpoint {format_duration(self.paused_seconds)}"
        )


def peak_memory_bytes() -> int | None:
    """The largest allocator peak over this process's devices, or None where the devices
    keep no statistics (CPUs)."""
    peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use")
             for device in jax.local_devices()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def log(message: str) -> None:
    """A line for the user, from process 0 only."""
    if jax.process_index() == 0:
        logging.info("%s", message)
