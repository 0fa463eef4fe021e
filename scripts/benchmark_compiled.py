"""The GPU program, counted without a GPU: the real train and eval steps compiled for NVIDIA
GPUs by XLA on this machine, and what one step launches and moves.

  JAX_PLATFORMS=cpu python scripts/benchmark_compiled.py [--archs resnet50_v15,...]
      [--precisions bf16] [--targets a100,h100,h200] [--devices 1] [--batch N] [--json FILE]

Needs the CUDA plugin and ptxas (pip install -e '.[gpu-compile]'; scripts/test.sh keeps
them in .venv-gpu-compile/, apart from the CPU environment). Per row: the compile time;
kernels per training step by kind (fusions, cuDNN convolutions, copies, collectives); the
convolutions' layouts and the activations' layout changes; collectives (count, MB); XLA's
temporary and argument memory and the largest per-GPU batch within 80% of the GPU (linear
in the batch, from this one compile); the convolutions' GFLOPs and the bytes every kernel
reads and writes, per image; and the per-kernel roofline: each kernel takes max(FLOPs /
peak, bytes / bandwidth) at the data-sheet peaks, summed over the step. That is an upper
bound on img/s and a yardstick for changes, not a prediction: XLA does not autotune here,
and L2 reuse, launch gaps and kernels overlapping are ignored. NVIDIA's published img/s per
GPU is beside it (resnet_jax.bench.baselines). Method: resnet_jax.bench.compiled.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for GPUs; run nothing
# A program compiled for compile-only devices cannot be loaded back from JAX's cache: do not
# write it there.
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")

# isort: off
import resnet_jax  # noqa: E402, F401  before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from resnet_jax import models, quiet  # noqa: E402
from resnet_jax.bench import compiled, machine  # noqa: E402
from resnet_jax.errors import ConfigError  # noqa: E402


def _csv(choices):
    def parse(text):
        values = [v for v in text.split(",") if v]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a comma-separated list of {', '.join(choices)}")
        return values
    return parse


def print_table(rows: list[dict]) -> None:
    """One line per row: the training step, then its evaluation step's kernels and ceiling."""
    head = (f"{'arch':<20} {'prec':<4} {'GPU':<5} {'n':>2} {'batch':>5} {'compile s':>9} "
            f"{'kernels':>7} {'fusion':>6} {'conv':>4} {'copy':>4} {'coll':>4} {'coll MB':>7} "
            f"{'relayout':>9} {'temp GB':>7} {'max batch':>9} {'conv GF/img':>11} "
            f"{'MB/img':>7} {'ceiling img/s':>13} {'eval kernels':>12} {'eval ceiling':>12} "
            f"{'NVIDIA img/s':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        t, e = r["train"], r["eval"]
        kinds = t["by_kind"]
        fusions = sum(v for k, v in kinds.items() if k.startswith("fusion"))
        convs = sum(v for k, v in kinds.items() if k.startswith("cudnn"))
        published = "n/a"
        if r["published"]:  # NVIDIA's figure, from another GPU where it published none here
            p = r["published"]
            published = f"{p['images_per_sec_per_gpu']:,.0f}" + (
                "" if p["device"].lower() in r["device_kind"].lower() else f" ({p['device']})")
        print(f"{r['arch']:<20} {r['precision']:<4} {r['target']:<5} {r['devices']:>2} "
              f"{r['per_device_batch']:>5} {r['compile_s']:>9.1f} {t['kernels']:>7} "
              f"{fusions:>6} {convs:>4} {kinds.get('copy', 0):>4} {t['collectives']:>4} "
              f"{t['collective_bytes'] / 1e6:>7.1f} "
              f"{t['activation_layout_changes']:>4}/{t['pooled_layout_changes']:<4} "
              f"{t['temp_bytes'] / 1e9:>7.2f} {t['largest_batch']:>9} "
              f"{t['conv_flops_per_image'] / 1e9:>11.2f} {t['bytes_per_image'] / 1e6:>7.1f} "
              f"{t['images_per_sec']:>13,.0f} {e['kernels']:>12} {e['images_per_sec']:>12,.0f} "
              f"{published:>12}")
    layouts = sorted({k for r in rows for k in r["train"]["conv_layouts"]})
    print(f"convolution layouts: {', '.join(layouts) or 'none'}; relayout: copies or "
          "transposes of feature maps / of pooled (B,1,1,C) activations; ceiling: per-kernel "
          "roofline, img/s per GPU, an upper bound")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=_csv((*models.FULL_SIZE, "resnet_tiny")),
                        default=["resnet50_v15", "se_resnext101_32x4d"])
    parser.add_argument("--precisions", type=_csv(("bf16", "fp16", "tf32", "fp32")),
                        default=["bf16"])
    parser.add_argument("--targets", type=_csv(tuple(compiled.TARGETS)),
                        default=list(compiled.TARGETS))
    parser.add_argument("--devices", type=int, default=1, help="GPUs of the target (a mesh)")
    parser.add_argument("--batch", type=int, default=0,
                        help="per GPU (default: 192 for RN50 v1.5, 112 for the ResNeXts)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    quiet.keep_own_lines()
    rows = []
    try:
        for arch in args.archs:
            for precision_name in args.precisions:
                for target in args.targets:
                    print(f"compiling {arch} {precision_name} for {args.devices}x {target} ...",
                          flush=True)
                    rows.append(compiled.row(arch, precision_name, target, args.devices,
                                             args.batch or None, args.image_size))
                    if args.json:  # after every row: a run stopped part-way keeps its rows
                        machine.write_atomic(args.json, json.dumps({"rows": rows}, indent=1))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
