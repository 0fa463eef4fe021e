"""Parameters and forward multiply-accumulates per image of each model.

  python scripts/flops.py [--image-size 224] [--json flops.json]

Counts every convolution and matrix product of the eval-mode forward pass
from the traced program (nothing is compiled or run). GFLOPs = 2 x GMACs.
"""

# isort: off
import resnet_jax  # noqa: F401  first, before jax: XLA's and TensorFlow's C++ logs stay quiet
# isort: on

import argparse
import json

import jax
import numpy as np

from resnet_jax import models, quiet
from resnet_jax.models import flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    args = parser.parse_args()
    quiet.keep_own_lines()
    rows = []
    for arch in models.FULL_SIZE:
        variables = models.abstract_variables(arch, num_classes=1000)  # nothing runs
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
        macs = flops.forward_macs(models.create(arch), args.image_size)
        rows.append({"arch": arch, "image_size": args.image_size, "params": params,
                     "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9})
    print(f"{'arch':<22} {'params':>12} {'GMACs':>7} {'GFLOPs':>7}  (forward, 1 image, "
          f"{args.image_size}x{args.image_size})")
    for row in rows:
        print(f"{row['arch']:<22} {row['params']:>12,} {row['gmacs']:>7.2f} {row['gflops']:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
