"""What the training feed costs the main Python thread, per step and per image.

  python scripts/benchmark_feed.py [--layouts 8x192,1x1536,1/8x192] [--paths 1281167]
      [--image-size 32] [--steps 30] [--warmup 5] [--threads 0] [--json FILE]

The thread that drives the GPUs also calls `next()` on the training stream
(`dali._train_stream`, as `open_data` builds it); the CPU time it spends
there (`time.thread_time()`, DALI's own threads not counted) is taken from
the GPUs' step. Each layout is one launch, on simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count, set here):

* PxB: one process with P devices, P pipelines of B images, one per device
  (the dali_gpu layout: on GPUs decoding on each GPU, on CPU devices built
  with on_gpu=False); 1xB: one pipeline of B images split over the devices
  (the dali_cpu layout);
* 1/PxB: one of P processes, one device each, feeding its B rows of a global
  batch of P*B (the number of processes is simulated while the pipeline is
  set up; the arrays are built for the one local device).

The images are small generated JPEGs (resnet_jax.data.demo) cut to
--image-size pixels, so that decoding is cheap; the file list repeats them
to --paths entries (ImageNet's count by default). Also printed: the wall
time to build the stream and get its first batch, and the wall time per
step (on a small CPU machine, the decode rate).
"""

# isort: off
import resnet_jax  # noqa: F401  first, before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

import argparse
import json
import os
import re
import sys
import tempfile
import time
from unittest import mock

LAYOUT = re.compile(r"^(?:(1)/)?(\d+)x(\d+)$")


def parse_layout(text: str) -> dict:
    """'8x192' -> 8 per-device pipelines; '1x1536' -> one pipeline; '1/8x192' -> one of 8
    processes."""
    match = LAYOUT.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"layout '{text}': write PxB, 1xB or 1/PxB")
    one_of, count, batch = match.group(1) is not None, int(match.group(2)), int(match.group(3))
    if one_of:
        return dict(name=text, devices=1, processes=count, per_device=False,
                    pipelines=1, batch=batch, global_batch=count * batch)
    return dict(name=text, devices=count, processes=1, per_device=count > 1, pipelines=count,
                batch=batch, global_batch=count * batch)


def _set_device_count(count: int) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"


def measure(split, layout: dict, *, image_size: int, steps: int, warmup: int,
            threads: int) -> dict:
    """Main-thread CPU seconds per `next()` of the training stream, and its wall times."""
    import jax
    import numpy as np

    from resnet_jax.data import dali

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", default="8x192,1x1536,1/8x192",
                        help="comma-separated PxB (P devices, a pipeline each), 1xB (one "
                             "pipeline), 1/PxB (one of P processes); default: %(default)s")
    parser.add_argument("--paths", type=int, default=1281167,
                        help="file list length (ImageNet's training set by default)")
    parser.add_argument("--image-size", type=int, default=32, help="crop size (pixels)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per layout")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=0,
                        help="DALI threads per pipeline (default: data.num_threads' rule)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    layouts = [parse_layout(text) for text in args.layouts.split(",")]
    _set_device_count(max(layout["devices"] for layout in layouts))

    import jax
    import numpy as np

    from resnet_jax import config as config_lib
    from resnet_jax import parallel, quiet
    from resnet_jax.data import demo
    from resnet_jax.data.folders import Split, scan_split
    from resnet_jax.data.source import num_threads

    parallel.configure_runtime()
    quiet.keep_own_lines()
    if jax.device_count() < max(layout["devices"] for layout in layouts):
        sys.exit(f"error: {jax.device_count()} devices, fewer than --layouts asks for: "
                 "unset XLA_FLAGS' --xla_force_host_platform_device_count")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = demo.make_demo_dataset(os.path.join(tmp, "data"), num_classes=4,
                                      train_per_class=16, val_per_class=1,
                                      image_size=max(48, args.image_size), seed=0)
        base = scan_split(root, "train")
        index = np.arange(args.paths) % len(base.files)
        split = Split(files=[base.files[i] for i in index], labels=base.labels[index],
                      class_names=base.class_names)
        for layout in layouts:
            threads = args.threads or num_threads(config_lib.defaults(), layout["pipelines"])
            rows.append(measure(split, layout, image_size=args.image_size, steps=args.steps,
                                warmup=args.warmup, threads=threads))

    print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores; {args.paths:,} paths, "
          f"{args.image_size} px float16; {args.steps} steps after {args.warmup}; "
          f"resnet_jax from {os.path.dirname(resnet_jax.__file__)}")
    print(f"{'layout':10} {'pipelines':>9} {'images':>6} {'threads':>7} {'main ms/step':>12} "
          f"{'us/image':>8} {'CPU-only copies ms':>18} {'wall ms/step':>12} {'start s':>7}")
    for row in rows:
        images = row["pipelines"] * row["batch"]
        print(f"{row['name']:10} {row['pipelines']:9} {images:6} {row['threads']:7} "
              f"{row['main_thread_ms_per_step']:12.2f} {row['main_thread_us_per_image']:8.2f} "
              f"{row['device_put_ms_per_step']:18.2f} {row['wall_ms_per_step']:12.1f} "
              f"{row['build_s'] + row['first_batch_s']:7.2f}")
    print("main ms/step: CPU time of the Python thread in next(), DALI's threads not counted; "
          "CPU-only copies: the part of it that copies per-device batches between simulated "
          "CPU devices, which GPUs do not need; start: building the stream and its first batch")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"paths": args.paths, "image_size": args.image_size,
                       "package": os.path.dirname(resnet_jax.__file__), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
