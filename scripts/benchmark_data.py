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
import contextlib
import json
import math
import os

from resnet_jax import quiet


def _rows(args, split, data_loading) -> list[dict]:
    """One row per thread count and loader, with its img/s per core next to PIL's."""
    common = dict(batch=args.batch_size, size=args.image_size, batches=args.batches)
    loaders = [("dali pipeline", lambda t: data_loading.bench_dali_pipeline(
        split, threads=t, warmup=args.warmup, **common))]
    if not args.no_iterator:
        loaders.append(("dali iterator", lambda t: data_loading.bench_dali_iterator(
            split, threads=t, warmup=args.warmup, **common)))
    loaders.append(("pil", lambda t: data_loading.bench_pil(split.files, threads=t, **common)))
    rows = []
    for threads in args.threads:
        for name, run in loaders:
            print(f"running {name}, {threads} threads ...", flush=True)
            before = data_loading.pin(threads)
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
    return rows


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

    # Here, not above: the PIL loader's worker processes (spawned) import this script, and
    # need neither jax nor DALI, which these load.
    from resnet_jax.bench import data_loading, inputs, machine
    from resnet_jax.data import folders

    with contextlib.ExitStack() as stack:
        root = args.data_root or stack.enter_context(inputs.demo_tree(
            num_classes=4, per_class=math.ceil(args.demo_images / 4),
            image_size=args.demo_image_size, prefix="benchmark_data_", note=""))
        split = folders.scan_split(root, "train")
        jpeg_bytes = sum(os.path.getsize(f) for f in split.files) / len(split)
        rows = _rows(args, split, data_loading)

    header = {**machine.cpu(), "data_root": args.data_root or "generated",
              "images_in_tree": len(split), "mean_jpeg_bytes": round(jpeg_bytes),
              "image_size": args.image_size, "batch_size": args.batch_size,
              **machine.provenance()}
    print(f"\n{header['cpu']}, {cores} cores; {len(split)} JPEGs, mean "
          f"{jpeg_bytes / 1024:.0f} KiB; batch {args.batch_size}, {args.image_size} px float32 "
          "NHWC")
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


if __name__ == "__main__":
    main()
