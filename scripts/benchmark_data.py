"""DALI decode + augment throughput on the CPU, against a PIL + numpy loader doing the same work.

  python scripts/benchmark_data.py [--data-root DIR] [--image-size 224] [--batch-size 64]
      [--threads 1,N] [--batches 30] [--json FILE]

Both sides read DIR/train/<class>/*.jpg (default: a demo tree of 400 px JPEGs
drawn into a temporary folder) and deliver float32 NHWC batches: JPEG decode,
random-resized crop (area 0.08-1, aspect 3/4-4/3), bilinear resize to
image_size, random horizontal flip, ImageNet mean/std normalization.

* dali pipeline: resnet_jax's training pipeline (`dali.single_train_pipeline`,
  dali_cpu) with num_threads=T, run directly; each batch copied out as numpy.
* dali iterator: the trainer's `dali.train_iterator` (dali_cpu, a 1-device
  mesh), which adds the copy into a jax.Array.
* pil: T worker processes (one process for T=1), each making whole batches
  with PIL (crop and resize in one `Image.resize(box=...)`) and numpy, written
  into shared memory.

Each row's process is pinned to T cores (Linux), so img/s per core is
img/s / T. Warm-up batches (a batch per worker) are not timed.
"""

import argparse
import collections
import datetime
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from resnet_jax import quiet

# The normalization of resnet_jax.data.dali (ImageNet statistics on the 0..255 scale).
MEAN = np.array([255.0 * m for m in (0.485, 0.456, 0.406)], np.float32)
STD = np.array([255.0 * s for s in (0.229, 0.224, 0.225)], np.float32)


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
    from multiprocessing import shared_memory

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

    from multiprocessing import shared_memory

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


def _pin(cores: int):
    """Restricts this thread (and the threads and processes it starts) to `cores` cores."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:cores])
    return before


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", metavar="DIR",
                        help="DIR/train/<class>/*.jpg (default: a generated tree)")
    parser.add_argument("--demo-images", type=int, default=400,
                        help="images of the generated tree (without --data-root)")
    parser.add_argument("--demo-image-size", type=int, default=400,
                        help="side of the generated JPEGs, px")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    cores = os.cpu_count() or 1
    parser.add_argument("--threads", default=sorted({1, cores}),
                        type=lambda s: [int(v) for v in s.split(",") if v],
                        help=f"comma-separated thread/process counts (default 1,{cores})")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed DALI batches")
    parser.add_argument("--no-iterator", action="store_true",
                        help="skip the dali train_iterator rows")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    quiet.keep_own_lines()

    from resnet_jax.data import folders

    tmp = None
    root = args.data_root
    if not root:
        from resnet_jax.data import demo

        tmp = tempfile.TemporaryDirectory(prefix="benchmark_data_")
        per_class = math.ceil(args.demo_images / 4)
        print(f"drawing 4 x {per_class} JPEGs of {args.demo_image_size} px into {tmp.name}",
              flush=True)
        root = demo.make_demo_dataset(tmp.name, num_classes=4, train_per_class=per_class,
                                      val_per_class=1, image_size=args.demo_image_size)
    split = folders.scan_split(root, "train")
    jpeg_bytes = sum(os.path.getsize(f) for f in split.files) / len(split)

    common = dict(batch=args.batch_size, size=args.image_size, batches=args.batches)
    loaders = [("dali pipeline", lambda t: bench_dali_pipeline(
        split, threads=t, warmup=args.warmup, **common))]
    if not args.no_iterator:
        loaders.append(("dali iterator", lambda t: bench_dali_iterator(
            split, threads=t, warmup=args.warmup, **common)))
    loaders.append(("pil", lambda t: bench_pil(split.files, threads=t, **common)))
    rows = []
    for threads in args.threads:
        for name, run in loaders:
            print(f"running {name}, {threads} threads ...", flush=True)
            before = _pin(threads)
            try:
                result = run(threads)
            finally:
                if before is not None:
                    os.sched_setaffinity(0, before)
            images = result["batches"] * args.batch_size
            rows.append({"loader": name, "threads": threads, "images": images,
                         "seconds": result["seconds"],
                         "images_per_sec": images / result["seconds"],
                         "images_per_sec_per_core": images / result["seconds"] / threads})
    for row in rows:
        pil = [r for r in rows if r["loader"] == "pil" and r["threads"] == row["threads"]]
        row["ratio_to_pil_per_core"] = (row["images_per_sec_per_core"]
                                        / pil[0]["images_per_sec_per_core"]) if pil else None

    header = {"cpu": _cpu_name(), "cpu_count": cores, "data_root": args.data_root or
              "generated", "images_in_tree": len(split), "mean_jpeg_bytes": round(jpeg_bytes),
              "image_size": args.image_size, "batch_size": args.batch_size,
              "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    print(f"\n{_cpu_name()}, {cores} cores; {len(split)} JPEGs, mean {jpeg_bytes / 1024:.0f} KiB; "
          f"batch {args.batch_size}, {args.image_size} px float32 NHWC")
    head = (f"{'loader':<14} {'threads':>7} {'images':>6} {'img/s':>8} {'img/s/core':>10} "
            f"{'vs pil/core':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r["ratio_to_pil_per_core"]
        print(f"{r['loader']:<14} {r['threads']:>7} {r['images']:>6} {r['images_per_sec']:>8.1f} "
              f"{r['images_per_sec_per_core']:>10.1f} "
              f"{'n/a' if ratio is None else f'{ratio:.2f}':>11}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
