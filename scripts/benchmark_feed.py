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

    # Here, not above: jax reads XLA_FLAGS' device count when it starts.
    import jax

    from resnet_jax import config as config_lib
    from resnet_jax import parallel, quiet
    from resnet_jax.bench import data_feed, inputs
    from resnet_jax.data.source import num_threads

    parallel.configure_runtime()
    quiet.keep_own_lines()
    if jax.device_count() < max(layout["devices"] for layout in layouts):
        sys.exit(f"error: {jax.device_count()} devices, fewer than --layouts asks for: "
                 "unset XLA_FLAGS' --xla_force_host_platform_device_count")
    rows = []
    with inputs.demo_tree(num_classes=4, per_class=16,
                          image_size=max(48, args.image_size)) as root:
        split = inputs.repeated_split(root, args.paths)
        for layout in layouts:
            threads = args.threads or num_threads(config_lib.defaults(), layout["pipelines"])
            rows.append(data_feed.main_thread_cost(
                split, layout, image_size=args.image_size, steps=args.steps,
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
