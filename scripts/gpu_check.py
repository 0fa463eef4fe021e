"""The first checks on a GPU machine, with one markdown report: bash scripts/gpu_check.sh [--quick]

  python scripts/gpu_check.py [--quick] [--cpu] [--out DIR] [--budget SECONDS]
      [--precisions bf16,fp16] [--epochs N]

Parts, each a child process with a time limit (resnet_jax.bench.gpu_check),
most telling first:

1. devices: what JAX, the driver, DALI and PyTorch see, the libraries every
   other part needs, and a jitted computation with the project's XLA flags
   and GPU memory setting;
2. benchmarks (scripts/benchmark.py) of RN50 v1.5 training on synthetic data,
   next to PyTorch (channels_last, AMP) on the same GPU where it can use it:
   on all GPUs, on one, and without XLA's command buffers (as with dali_gpu);
3. DALI smoke test: the training and evaluation pipelines built on every
   GPU, one sharded batch of each;
4. training, per precision: RN50 v1.5 through DALI on the GPUs, a few hundred
   steps on a generated JPEG tree, logging sparsely: the loss must fall, the
   train step compile once, and `mode=eval` find the in-training top-1 (to one
   image); its img/s is the DALI throughput; then the benchmark of the next
   precision;
5. SE-ResNeXt101 training and RN50 v1.5 inference (--quick); ResNeXt101 and
   SE-ResNeXt101 with DALI rows and inference (the full check).

--quick runs within a budget of 7 minutes, the first figure within 3: a part
is started only when its whole time limit fits in what is left, and one that
does not is reported as 'skipped (budget)', not as a failure. Without DALI (a
ready-made container) parts 3 and 4 are skipped with one line each and the
synthetic benchmarks still run. The full check adds the DALI benchmark rows
and inference to each benchmark: for a real node.

Everything goes to DIR (default runs/gpu_check): report.md (rewritten after
every part, so a crash or a timeout is a failed line, never a lost report),
report.json, each part's log and the benchmark JSON. Exit code 1 when a part
failed. --cpu is a dry run of the same plan on the CPU (the tiny model, DALI
on the CPU, 2 simulated devices), for the test suite; --fail PART makes a
part fail, to test the report.
"""

import argparse
import glob
import os
import sys


def _use_checkout() -> None:
    """Runs from the checkout, installed or not: the checkout and the wheels copied into .whl/
    (or $WHEELS; pure-Python ones import from the file) go first on this process's path and
    on PYTHONPATH, which every part's process inherits."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wheels = sorted(glob.glob(os.path.join(os.environ.get("WHEELS") or
                                           os.path.join(root, ".whl"), "*.whl")))
    paths = [root, *(os.path.abspath(w) for w in wheels)]
    sys.path[:0] = [p for p in paths if p not in sys.path]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*paths, *filter(None, [os.environ.get("PYTHONPATH")])])


_use_checkout()

# isort: off
import resnet_jax  # noqa: E402, F401  before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

from resnet_jax.bench import gpu_check  # noqa: E402

PRECISIONS = ("bf16", "fp16")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"the short check: {gpu_check.QUICK_BUDGET // 60} minutes on one GPU")
    parser.add_argument("--cpu", action="store_true",
                        help="a dry run on the CPU: tiny model, DALI on the CPU, 2 devices")
    parser.add_argument("--out", default=os.path.join(gpu_check.ROOT, "runs", "gpu_check"))
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all parts (default: "
                        f"{gpu_check.QUICK_BUDGET} with --quick, else none)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="comma-separated precisions of the training and benchmark parts")
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs of each training part (default: 60 of 5 steps on GPUs, "
                        "12 of 4 with --cpu)")
    parser.add_argument("--fail", action="append", default=[], metavar="PART",
                        help="make the part of this name fail (to test the report)")
    args = parser.parse_args()
    args.precisions = [p for p in args.precisions.split(",") if p]
    bad = [p for p in args.precisions if p not in PRECISIONS + ("fp32", "tf32")]
    if bad or not args.precisions:
        parser.error(f"--precisions {','.join(bad)}: use bf16, fp16, tf32 or fp32")
    if args.budget is None and args.quick:
        args.budget = gpu_check.QUICK_BUDGET
    return gpu_check.run_check(args)


if __name__ == "__main__":
    sys.exit(main())
