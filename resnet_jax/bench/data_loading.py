"""What scripts/benchmark_data.py times: resnet_jax's DALI training pipeline on the CPU, and a
PIL + numpy loader doing the same work.

Both deliver float32 NHWC batches: JPEG decode, random-resized crop (area
0.08-1, aspect 3/4-4/3), bilinear resize to the image size, random
horizontal flip, ImageNet mean/std normalization. Each function returns the
seconds its timed batches took, after warm-up batches (a batch per worker
for the PIL loader).

The PIL loader's worker processes (spawned) import this module: jax and DALI
are imported inside the functions that use them, so that the workers load
neither.
"""

import collections
import math
import multiprocessing
from multiprocessing import shared_memory
import os
import time

import numpy as np
from PIL import Image

from resnet_jax.data import MEAN_RGB, STD_RGB

# The normalization of resnet_jax.data.dali (ImageNet statistics on the 0..255 scale).
MEAN = np.array(MEAN_RGB, np.float32)
STD = np.array(STD_RGB, np.float32)


def random_resized_box(rng, width: int, height: int, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(left, top, right, bottom) of a random-resized crop, torchvision's algorithm.

    Ten tries at a random area and log-uniform aspect ratio; if none fits, the
    central crop of the largest size whose aspect ratio is in range.
    """
    total = width * height
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = total * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def pil_image(path: str, rng, size: int) -> np.ndarray:
    """One training image, (size, size, 3) float32, normalized."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    box = random_resized_box(rng, *image.size)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, np.float32)
    return (pixels - MEAN) / STD


_worker = {}


def _init_worker(shm_name: str, shape: tuple) -> None:
    shm = shared_memory.SharedMemory(name=shm_name)
    _worker["shm"] = shm  # kept open while the worker lives
    _worker["buffer"] = np.ndarray(shape, np.float32, buffer=shm.buf)


def _fill(out: np.ndarray, paths: list[str], seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        out[i] = pil_image(path, rng, size)


def _worker_batch(slot: int, paths: list[str], seed: int, size: int) -> int:
    _fill(_worker["buffer"][slot], paths, seed, size)
    return slot


def _batch_paths(files: list[str], batch: int, rng) -> list[str]:
    return [files[i] for i in rng.integers(0, len(files), batch)]


def bench_pil(files, *, threads: int, batch: int, size: int, batches: int) -> dict:
    """Steady-state img/s of the PIL loader: T processes, one batch per task."""
    rng = np.random.default_rng(0)
    if threads == 1:
        out = np.empty((batch, size, size, 3), np.float32)
        _fill(out, _batch_paths(files, batch, rng), 0, size)  # warm-up
        start = time.perf_counter()
        for n in range(batches):
            _fill(out, _batch_paths(files, batch, rng), n + 1, size)
        return {"seconds": time.perf_counter() - start, "batches": batches}

    batches = math.ceil(batches / threads) * threads  # whole rounds of the workers
    slots = 2 * threads
    shape = (slots, batch, size, size, 3)
    shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)) * 4)
    context = multiprocessing.get_context("spawn")  # no fork of DALI's or XLA's threads
    try:
        with context.Pool(threads, _init_worker, (shm.name, shape)) as pool:
            pending, free, done = collections.deque(), list(range(slots)), 0
            start = None
            for n in range(threads + batches):
                if not free:
                    free.append(pending.popleft().get())
                    done += 1
                    if done == threads:  # a first batch from every worker: warm
                        start = time.perf_counter()
                slot = free.pop()
                pending.append(pool.apply_async(
                    _worker_batch, (slot, _batch_paths(files, batch, rng), n, size)))
            while pending:
                pending.popleft().get()
                done += 1
                if done == threads:
                    start = time.perf_counter()
            return {"seconds": time.perf_counter() - start, "batches": batches}
    finally:
        shm.close()
        shm.unlink()


def bench_dali_pipeline(split, *, threads: int, batch: int, size: int, batches: int,
                        warmup: int) -> dict:
    """Steady-state img/s of resnet_jax's DALI training pipeline on the CPU, run directly."""
    # Here, not at the top: the PIL loader's spawned workers import this module, and must not
    # load DALI and JAX (resnet_jax.data.dali imports both) for each worker.
    from resnet_jax.data import dali

    pipe = dali.single_train_pipeline(split, batch_size=batch, image_size=size,
                                      image_dtype=np.float32, on_gpu=False, num_threads=threads)
    for _ in range(warmup):
        dali._run_cpu(pipe)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = dali._run_cpu(pipe)
    seconds = time.perf_counter() - start
    assert images.shape == (batch, size, size, 3) and images.dtype == np.float32
    del pipe
    return {"seconds": seconds, "batches": batches}


def bench_dali_iterator(split, *, threads: int, batch: int, size: int, batches: int,
                        warmup: int) -> dict:
    """Steady-state img/s of the trainer's dali_cpu iterator on a 1-device mesh."""
    # Here, not at the top, for the same reason as in bench_dali_pipeline: the PIL workers.
    import jax

    from resnet_jax import parallel
    from resnet_jax.data import dali

    iterator = dali.train_iterator(
        split, global_batch_size=batch, image_size=size, image_dtype=np.float32,
        mesh=parallel.make_mesh(jax.devices()[:1]), seed=0, backend="dali_cpu",
        num_threads=threads)
    for _ in range(warmup):
        jax.block_until_ready(next(iterator))
    start = time.perf_counter()
    for _ in range(batches):
        jax.block_until_ready(next(iterator))
    seconds = time.perf_counter() - start
    iterator.close()
    return {"seconds": seconds, "batches": batches}


def pin(cores: int):
    """Restricts this thread (and the threads and processes it starts) to `cores` cores;
    returns the cores it had before (None off Linux), for os.sched_setaffinity."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:cores])
    return before
