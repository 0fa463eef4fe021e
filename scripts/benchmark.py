"""Training and inference throughput of resnet_jax, next to a PyTorch reference in the same run.

  python scripts/benchmark.py [--archs resnet50_v15] [--precisions bf16] [--batch-sizes 256]
      [--image-size 224] [--modes train,infer] [--data synthetic,dali] [--data-root DIR]
      [--warmup-steps 5] [--steps 20] [--no-torch] [--onnx [--onnx-provider auto]]
      [--json FILE]

Each row is the trainer's own set-up of the arch's recipe with the row's
precision, batch and image size, on a mesh of all devices; inference is an
eval-mode jitted apply of that state (resnet_jax.bench.throughput). Data is
the synthetic device-resident batch or the DALI training pipeline (dali_gpu
on GPUs, dali_cpu otherwise); without --data-root a small JPEG tree is drawn
into a temporary folder.

Timing (resnet_jax.bench.timing): training keeps one step queued, as the
trainer does; img/s is the global batch over the median step time.
Inference runs one batch at a time, as NVIDIA's inference tables do, each
call timed until its logits are ready; img/s is the batch over the mean
latency, given with its mean, p90, p95 and p99 (with 20 steps the upper
percentiles are close to the slowest call). The first step (compilation
included) is timed alone, before the warm-up steps. The default batch sizes
are 1, 8, 32, 64, 128 and 256 on GPUs (1 and 8 on CPUs) for inference.

With --onnx, the inference rows also time the same model exported to ONNX,
in ONNX Runtime (resnet_jax.bench.onnx_runtime), on the synthetic rows'
batch kept on the device; bf16 rows have no ONNX column. `onnx_max_rel_diff`
in the JSON is max |logit difference| / max |logit| against resnet_jax's.

MFU counts model FLOPs only (resnet_jax.hardware: 2 x the forward
multiply-accumulates per image, x3 for training) over the device's dense
peak (n/a for unknown devices and CPUs). 'peak mem' is the device
allocator's peak so far in this process (GPUs; rows run in order), 'xla mem'
XLA's compiled size of the step, 'others' the share of the cores that other
processes used meanwhile. XLA_PYTHON_CLIENT_PREALLOCATE=false is set (unless
set), so that PyTorch finds GPU memory in the same process.

The PyTorch reference (resnet_jax.bench.torch_baseline: torchvision, timm or
resnet_jax.interop.torch_reference) runs the same rows on one device with
the per-device batch; the ratio is resnet_jax img/s per device over its
img/s. A PyTorch that cannot use the device JAX runs on (a CUDA 13 build on
a CUDA 12 driver, a CPU build on a GPU node) drops the PyTorch column with a
warning; with --torch it is an error instead.
"""

# isort: off
import resnet_jax  # noqa: F401  first, before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

import argparse
import contextlib
import json
import math
import os
import sys

import jax

from resnet_jax import models, parallel, precision, quiet
from resnet_jax.bench import inputs, machine, onnx_runtime, throughput, torch_baseline
from resnet_jax.bench.timing import LATENCY_PERCENTILES
from resnet_jax.errors import ConfigError

MODES = ("train", "infer")
DATA = ("synthetic", "dali")
# NVIDIA's inference tables' batch sizes (ConvNets' resnet50v1.5/README.md goes 1, 2, 4, ...).
INFER_BATCHES_GPU = (1, 8, 32, 64, 128, 256)


def _csv(choices=None, cast=str):
    def parse(text):
        values = [cast(v) for v in text.split(",") if v]
        bad = [v for v in values if choices is not None and v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a comma-separated list of {', '.join(choices or ['values'])}")
        return values
    return parse


def _archs(text: str) -> list[str]:
    """--archs: the project's names or NVIDIA's, as the project's."""
    try:
        return [models.canonical(name, flag="--archs") for name in _csv()(text)]
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}G"


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _mfu(row: dict) -> str:
    return "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"


# Each table's first columns (the row and resnet_jax's img/s) and last (the PyTorch reference).
_ROW_HEAD = f"{'arch':<20} {'mode':<5} {'data':<9} {'prec':<4} {'batch':>5} {'img/s':>8}"
_TORCH_HEAD = f"{'torch img/s':>11} {'ratio':>6} {'others':>6}"


def _row(r: dict) -> str:
    return (f"{r['arch']:<20} {r['mode']:<5} {r['data']:<9} {r['precision']:<4} "
            f"{r['per_device_batch']:>5} {r['images_per_sec']:>8.1f}")


def _torch(r: dict) -> str:
    """The reference's img/s, the ratio, and the largest share of the cores that other
    processes used while either framework's timed steps ran (Linux; a shared machine's
    noise)."""
    loads = [v for v in (r["others_load"], r.get("torch_others_load")) if v is not None]
    others = f"{100 * max(loads):.0f}%" if loads else "n/a"
    return (f"{_fmt(r.get('torch_images_per_sec'), '.1f'):>11} "
            f"{_fmt(r.get('ratio'), '.2f'):>6} {others:>6}")


def print_table(rows: list[dict]) -> None:
    """The training rows, then the inference rows, each kind in its own table."""
    train = [r for r in rows if r["mode"] == "train"]
    infer = [r for r in rows if r["mode"] == "infer"]
    if train:
        print_train_table(train)
    if infer:
        if train:
            print()
        print_infer_table(infer)


def print_train_table(rows: list[dict]) -> None:
    """One line per row; the ratio is resnet_jax img/s per device over the reference's."""
    head = (f"{_ROW_HEAD} {'step ms':>8} {'compile s':>9} {'peak mem':>8} {'xla mem':>8} "
            f"{'MFU':>6} {_TORCH_HEAD}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{_row(r)} {r['step_ms']:>8.1f} {r['compile_s']:>9.1f} "
              f"{_gib(r['peak_memory_bytes']):>8} {_gib(r['xla_memory_bytes']):>8} "
              f"{_mfu(r):>6} {_torch(r)}")


def _latencies(row: dict, prefix: str = "") -> str:
    keys = ["latency_ms_avg"] + [f"latency_ms_p{q}" for q in LATENCY_PERCENTILES]
    return " ".join(f"{_fmt(row.get(prefix + k), '.1f'):>7}" for k in keys)


def print_infer_table(rows: list[dict]) -> None:
    """One line per row: resnet_jax's img/s and latency (ms: mean, p90, p95, p99), then
    ONNX Runtime's (with --onnx) and the PyTorch reference's img/s; the ratio is resnet_jax
    img/s per device over the reference's."""
    latency = " ".join(f"{h:>7}" for h in ("avg ms", "p90", "p95", "p99"))
    head = (f"{_ROW_HEAD} {latency} {'compile s':>9} {'MFU':>6} | {'onnx img/s':>10} "
            f"{latency} | {_TORCH_HEAD}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{_row(r)} {_latencies(r)} {r['compile_s']:>9.1f} {_mfu(r):>6} | "
              f"{_fmt(r.get('onnx_images_per_sec'), '.1f'):>10} {_latencies(r, 'onnx_')} | "
              f"{_torch(r)}")
    providers = sorted({f"{r['onnx_provider']} ({r['onnx_precision']} graph)" for r in rows
                        if r.get("onnx_provider")})
    if providers:
        print(f"ONNX Runtime: {', '.join(providers)}; model alone, batch already on the device")


def _parser(on_gpu: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=_archs, default=["resnet50_v15"],
                        help=f"comma-separated, of {', '.join(models.FULL_SIZE)} (or NVIDIA's "
                        f"names: {', '.join(models.ALIASES)}; resnet_tiny for a dry run)")
    parser.add_argument("--precisions", type=_csv(precision.PRECISIONS),
                        default=["bf16" if on_gpu else "fp32"],
                        help="comma-separated, of fp32, tf32, bf16, fp16 (default: bf16 on "
                        "GPUs, fp32 otherwise)")
    parser.add_argument("--batch-sizes", type=_csv(cast=int),
                        help="per device, comma-separated, for both modes (default: train "
                        f"256 on GPUs, 8 otherwise; infer {','.join(map(str, INFER_BATCHES_GPU))} "
                        "on GPUs, 1,8 otherwise)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--modes", type=_csv(MODES), default=list(MODES),
                        help="comma-separated, of train, infer")
    parser.add_argument("--data", type=_csv(DATA), default=list(DATA),
                        help="comma-separated, of synthetic, dali (dali_gpu on GPUs, else "
                        "dali_cpu)")
    parser.add_argument("--data-root", metavar="DIR",
                        help="DIR/train/<class>/*.jpg for the dali rows (default: a generated "
                        "tree in a temporary folder)")
    parser.add_argument("--dali-threads", type=int, default=0,
                        help="DALI CPU threads per pipeline (0: the trainer's choice)")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                        help="run the PyTorch reference (default: when torch imports)")
    parser.add_argument("--onnx", action="store_true",
                        help="also time the inference rows' model exported to ONNX, in ONNX "
                        "Runtime (needs pip install -e '.[export]')")
    parser.add_argument("--onnx-provider", default="auto",
                        choices=("auto", *onnx_runtime.PROVIDERS),
                        help="ONNX Runtime's execution provider (default: the first of "
                        "tensorrt, cuda, cpu that this onnxruntime build has)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    return parser


def _run_torch(args, parser) -> tuple[bool, str | None]:
    """(whether to run the PyTorch reference, torch's version), or the parser's exit."""
    torch_version = torch_baseline.version()
    if args.torch and torch_version is None:
        parser.error("--torch: torch does not import; install it or pass --no-torch")
    run_torch = torch_version is not None if args.torch is None else args.torch
    if run_torch and (mismatch := torch_baseline.device_mismatch(jax.default_backend())):
        if args.torch:  # asked for by name: no comparison is better than a wrong one
            parser.exit(2, f"error: {mismatch}\n")
        # E.g. a CUDA 13 build of PyTorch on a CUDA 12 driver: the JAX rows are still worth
        # having, without the PyTorch column.
        print(f"warning: no PyTorch column: {mismatch}", file=sys.stderr, flush=True)
        run_torch = False
    return run_torch, torch_version


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = _parser(on_gpu)
    args = parser.parse_args()
    quiet.keep_own_lines()
    run_torch, torch_version = _run_torch(args, parser)
    if args.steps < 1 or args.warmup_steps < 0:
        parser.error("--steps must be at least 1 and --warmup-steps at least 0")
    onnx_versions = None
    if args.onnx:
        try:
            onnx_versions = onnx_runtime.versions(args.onnx_provider)
        except ConfigError as error:
            parser.exit(2, f"error: {error}\n")

    batches = {"train": args.batch_sizes or [256 if on_gpu else 8],
               "infer": args.batch_sizes or (list(INFER_BATCHES_GPU) if on_gpu else [1, 8])}
    with contextlib.ExitStack() as stack:
        if "dali" in args.data and not args.data_root:
            biggest = max(max(batches[m]) for m in args.modes) * jax.device_count()
            args.data_root = stack.enter_context(inputs.demo_tree(
                num_classes=5, per_class=max(2, math.ceil(2 * biggest / 5)), image_size=384,
                prefix="benchmark_jpegs_", note="no --data-root: "))
        settings = throughput.Settings(
            image_size=args.image_size, dali_backend="dali_gpu" if on_gpu else "dali_cpu",
            dali_threads=args.dali_threads, data_root=args.data_root or "",
            warmup_steps=args.warmup_steps, steps=args.steps)
        header = _header(torch_version, onnx_versions)
        rows = throughput.measure_rows(
            settings, args.archs, args.precisions, args.modes, batches, args.data,
            onnx_provider=args.onnx_provider if args.onnx else None, with_torch=run_torch,
            on_rows=lambda rows: _write_json(args.json, header, rows))
    onnx_note = (f", onnxruntime {onnx_versions['onnxruntime']}" if onnx_versions else "")
    print(f"\n{header['device_kind']} x{jax.device_count()} ({jax.default_backend()}), "
          f"{header['cpu']}, {os.cpu_count()} cores; jax {jax.__version__}, torch "
          f"{torch_version}{onnx_note}; {args.image_size} px, batch per device")
    print_table(rows)


def _header(torch_version, onnx_versions) -> dict:
    """What the JSON says of the machine and the method, beside the rows."""
    return {
        "device_kind": jax.devices()[0].device_kind, "platform": jax.default_backend(),
        "devices": jax.device_count(), **machine.cpu(),
        "jax": jax.__version__, "torch": torch_version, **(onnx_versions or {}),
        **machine.provenance(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "timing": "train: median of per-step intervals, one step queued ahead; infer: "
                  "per-batch latency, blocking on each batch's logits",
    }


def _write_json(path: str | None, header: dict, rows: list[dict]) -> None:
    """The rows so far, whole or not at all: a run killed part-way leaves those it finished."""
    if not path:
        return
    machine.write_atomic(path, json.dumps({"header": header, "rows": rows}, indent=1))


def _dali_rows_on_gpu(argv) -> bool:
    """Whether the command line asks for DALI rows (the default) on a machine with GPUs,
    known before JAX starts: XLA's flags depend on it."""
    early = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    early.add_argument("--data", type=_csv(DATA), default=list(DATA))
    try:
        data = early.parse_known_args(argv)[0].data
    except argparse.ArgumentError:  # a bad --data: the real parser says so
        return False
    return "dali" in data and bool(parallel.visible_gpus())


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch
    # The trainer's XLA flags (command buffers off where DALI runs on the GPUs) and cache.
    try:
        parallel.configure_runtime(dali_on_gpu=_dali_rows_on_gpu(sys.argv[1:]))
    except ConfigError as error:  # e.g. both names of JAX's GPU memory share set
        sys.exit(f"error: {error}")
    main()
