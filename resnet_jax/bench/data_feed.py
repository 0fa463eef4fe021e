"""What scripts/benchmark_epoch.py and benchmark_feed.py time: the waits for the training
stream's batches, and the CPU time that the main Python thread spends getting them.

Importing this module loads jax: benchmark_feed.py sets XLA_FLAGS' simulated
device count first.
"""

import time
from unittest import mock

import jax
import numpy as np

from resnet_jax.data import dali


def start_seconds(make_iterator) -> tuple[float, float]:
    """(seconds to build an iterator with `make_iterator()`, seconds to get its first batch)."""
    start = time.perf_counter()
    batches = make_iterator()
    built = time.perf_counter()
    jax.block_until_ready(next(batches))
    return built - start, time.perf_counter() - built


def waits(batches, count: int) -> list[float]:
    """Seconds waited for each of the next `count` batches."""
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        jax.block_until_ready(next(batches))
        seconds.append(time.perf_counter() - start)
    return seconds


def main_thread_cost(split, layout: dict, *, image_size: int, steps: int, warmup: int,
                     threads: int) -> dict:
    """Main-thread CPU seconds per `next()` of the training stream (`dali._train_stream`, as
    `open_data` builds it), and its wall times, for a `layout` of benchmark_feed.py's:
    {devices, processes, per_device, pipelines, batch, global_batch}."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:layout["devices"]]), ("data",))
    begin = time.perf_counter()
    with mock.patch.object(jax, "process_count", lambda: layout["processes"]), \
            mock.patch.object(jax, "process_index", lambda: 0):
        stream = dali._train_stream(
            split, global_batch_size=layout["global_batch"], image_size=image_size,
            dtype=dali._dali_dtype(np.float16), mesh=mesh, seed=0, start=0,
            num_threads=threads, per_device=layout["per_device"],
            on_gpu=layout["per_device"] and jax.default_backend() == "gpu")
    built = time.perf_counter()
    jax.block_until_ready(next(stream))
    first = time.perf_counter()
    for _ in range(warmup):
        jax.block_until_ready(next(stream))
    cpu, copies = 0.0, [0.0]
    device_put = jax.device_put

    def timed_device_put(*args, **kwargs):
        start = time.thread_time()
        try:
            return device_put(*args, **kwargs)
        finally:
            copies[0] += time.thread_time() - start

    wall = time.perf_counter()
    # The per-device layout copies each pipeline's batch from the first CPU device to its
    # own (jax.device_put); on GPUs the batch is decoded where it belongs.
    with mock.patch.object(jax, "device_put", timed_device_put):
        for _ in range(steps):
            start = time.thread_time()
            batch = next(stream)
            cpu += time.thread_time() - start
            jax.block_until_ready(batch)
    wall = time.perf_counter() - wall
    del stream, batch
    step_cpu = cpu / steps
    return {**layout, "threads": threads, "steps": steps, "build_s": built - begin,
            "first_batch_s": first - built, "main_thread_ms_per_step": 1e3 * step_cpu,
            "main_thread_us_per_image": 1e6 * step_cpu / (layout["pipelines"] * layout["batch"]),
            "device_put_ms_per_step": 1e3 * copies[0] / steps if layout["per_device"] else 0.0,
            "wall_ms_per_step": 1e3 * wall / steps}
