"""The pause between two training epochs, and before the first step of a (resumed) run.

  python scripts/benchmark_epoch.py [--paths 1281167] [--batch-size 256] [--image-size 224]
      [--epochs 3] [--resume-at 0] [--json FILE]

The training loop builds its DALI pipelines once per run (`dali.train_iterator`
at the run's first step) and they carry on across epochs. This script times,
over a file list of --paths entries that repeat a small generated JPEG tree
(ImageNet's 1,281,167 by default: the per-epoch cost grows with the list,
not with the bytes):

* start: building the iterator at step 0 and getting its first batch;
* epoch e -> e+1: the wait for the first batch of epoch e+1 after the last
  batch of epoch e was taken, next to the median wait for a batch within
  the epoch (the run starts a few batches before the epoch end, so no epoch
  is decoded in full);
* resume at step K (--resume-at): building the iterator at step K of an
  epoch and getting its first batch, which skips the K batches unread.

The backend is dali_gpu on GPUs (one pipeline per local GPU), else dali_cpu.
"""

# isort: off
import resnet_jax  # noqa: F401  first, before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

import argparse
import contextlib
import json
import statistics

import jax
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax import parallel, quiet
from resnet_jax.bench import inputs
from resnet_jax.bench.data_feed import start_seconds, waits
from resnet_jax.data import dali, steps_per_epoch
from resnet_jax.data.source import num_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=1281167,
                        help="file list length (ImageNet's training set by default)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="DIR/train/<class>/*.JPEG to repeat (default: a generated tree)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="global batch (default: 256 per GPU, 32 per CPU device)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="crop size (default: 224 on GPUs, 64 otherwise)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs run into (epochs - 1 epoch ends timed)")
    parser.add_argument("--resume-at", type=int, default=0, metavar="K",
                        help="also time a resume at step K of an epoch")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    quiet.keep_own_lines()
    on_gpu = jax.default_backend() == "gpu"
    backend = "dali_gpu" if on_gpu else "dali_cpu"
    mesh = parallel.make_mesh()
    args.batch_size = args.batch_size or (256 if on_gpu else 32) * mesh.size
    args.image_size = args.image_size or (224 if on_gpu else 64)
    pipelines = mesh.size if on_gpu else 1
    threads = num_threads(config_lib.defaults(), pipelines)

    with contextlib.ExitStack() as stack:
        root = args.data_root or stack.enter_context(inputs.demo_tree(
            num_classes=4, per_class=16, image_size=max(96, args.image_size)))
        split = inputs.repeated_split(root, args.paths)
        per_epoch = steps_per_epoch(len(split), args.batch_size)

        def iterator(step):
            """The trainer's iterator, built at batch `step`."""
            return dali.train_iterator(
                split, global_batch_size=args.batch_size, image_size=args.image_size,
                image_dtype=np.float32, mesh=mesh, seed=0, backend=backend,
                num_threads=threads, start=step)

        build, first = start_seconds(lambda: iterator(0))
        rows = [{"what": "start (step 0)", "build_s": build, "first_batch_s": first}]
        # From a few batches before the end of epoch 0 into epoch args.epochs - 1.
        around = 8
        batches = iterator(per_epoch - around)
        waits(batches, 1)  # the first batch: the iterator's start, timed above
        for epoch in range(1, args.epochs):
            before = waits(batches, around - 1)  # the last batches of epoch - 1
            boundary, after = waits(batches, 1)[0], waits(batches, around)
            rows.append({"what": f"epoch {epoch - 1} -> {epoch}", "first_batch_s": boundary,
                         "steady_batch_s": statistics.median(before + after)})
            if epoch + 1 < args.epochs:  # on to just before the next epoch end, unread
                batches = iterator((epoch + 1) * per_epoch - around)
                waits(batches, 1)
        del batches
        if args.resume_at:
            build, first = start_seconds(lambda: iterator(args.resume_at))
            rows.append({"what": f"resume at step {args.resume_at}", "build_s": build,
                         "first_batch_s": first})

    print(f"{jax.devices()[0].device_kind} x{mesh.size} ({backend}, "
          f"{pipelines} pipeline(s), {threads} threads each); {args.paths:,} paths, global "
          f"batch {args.batch_size}, {args.image_size} px, {per_epoch} steps/epoch")
    print(f"{'what':24} {'build s':>8} {'1st batch s':>11} {'steady batch s':>14}")
    for row in rows:
        build = f"{row['build_s']:8.2f}" if "build_s" in row else f"{'-':>8}"
        steady = f"{row['steady_batch_s']:14.3f}" if "steady_batch_s" in row else f"{'-':>14}"
        print(f"{row['what']:24} {build} {row['first_batch_s']:11.3f} {steady}")
    boundaries = [r["first_batch_s"] for r in rows if "->" in r["what"]]
    if boundaries:
        print(f"longest wait at an epoch end: {max(boundaries):.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"paths": args.paths, "backend": backend, "devices": mesh.size,
                       "pipelines": pipelines, "threads": threads,
                       "global_batch": args.batch_size, "image_size": args.image_size,
                       "steps_per_epoch": per_epoch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    parallel.configure_runtime()
    main()
