"""The pause between two training epochs: the next epoch's DALI iterator and its first batch.

  python scripts/benchmark_epoch.py [--paths 1281167] [--batch-size 256] [--image-size 224]
      [--epochs 3] [--resume-at 0] [--json FILE]

The training loop starts every epoch with a new `dali.train_iterator` (the
epoch's file order and augmentation seed), as `loop._epoch_batches` does, so
the devices wait while it is built and its first batch decoded. This script
times exactly that call and that batch, over a file list of --paths entries
that repeat a small generated JPEG tree (ImageNet's 1,281,167 by default:
the cost of building DALI's file reader grows with the list, not with the
bytes). With --resume-at K it also times what a run resumed at step K of an
epoch does before its first step: the same, plus the K batches it skips.

The backend is dali_gpu on GPUs (one pipeline per local GPU), else dali_cpu.
"""

# isort: off
import resnet_jax  # noqa: F401  first, before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax import parallel, quiet
from resnet_jax.data import dali, demo
from resnet_jax.data.folders import Split, scan_split
from resnet_jax.data.source import num_threads
from resnet_jax.train.loop import epoch_seed


def _split(root: str, paths: int) -> Split:
    """`paths` entries cycling through the files of ROOT/train (labels follow the files)."""
    base = scan_split(root, "train")
    index = np.arange(paths) % len(base.files)
    return Split(files=[base.files[i] for i in index], labels=base.labels[index],
                 class_names=base.class_names)


def _epoch_start(split, args, mesh, backend, threads, epoch, skip):
    """Seconds to build the epoch's iterator, and to get its first batch after `skip` ones."""
    start = time.perf_counter()
    batches = dali.train_iterator(split, global_batch_size=args.batch_size,
                                  image_size=args.image_size, image_dtype=np.float32, mesh=mesh,
                                  seed=epoch_seed(0, epoch), backend=backend,
                                  num_threads=threads)
    built = time.perf_counter()
    for _ in range(skip):
        next(batches)
    jax.block_until_ready(next(batches))
    return built - start, time.perf_counter() - built


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
    parser.add_argument("--epochs", type=int, default=3, help="epoch starts timed")
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

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or demo.make_demo_dataset(
            os.path.join(tmp, "data"), num_classes=4, train_per_class=16, val_per_class=1,
            image_size=max(96, args.image_size), seed=0)
        split = _split(root, args.paths)
        rows = []
        for epoch in range(args.epochs):
            build, first = _epoch_start(split, args, mesh, backend, threads, epoch, 0)
            rows.append({"what": f"epoch {epoch} start", "build_s": build, "first_batch_s": first})
        if args.resume_at:
            build, first = _epoch_start(split, args, mesh, backend, threads, 0, args.resume_at)
            rows.append({"what": f"resume at step {args.resume_at}", "build_s": build,
                         "first_batch_s": first})

    print(f"{jax.devices()[0].device_kind} x{mesh.size} ({backend}, "
          f"{pipelines} pipeline(s), {threads} threads each); {args.paths:,} paths, global "
          f"batch {args.batch_size}, {args.image_size} px")
    print(f"{'what':24} {'build s':>8} {'1st batch s':>11} {'total s':>8}")
    for row in rows:
        row["total_s"] = row["build_s"] + row["first_batch_s"]
        print(f"{row['what']:24} {row['build_s']:8.2f} {row['first_batch_s']:11.2f} "
              f"{row['total_s']:8.2f}")
    epochs = [r["total_s"] for r in rows if r["what"].startswith("epoch")]
    print(f"median epoch start: {statistics.median(epochs):.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"paths": args.paths, "backend": backend, "devices": mesh.size,
                       "pipelines": pipelines, "threads": threads,
                       "global_batch": args.batch_size, "image_size": args.image_size,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    parallel.configure_runtime()
    main()
