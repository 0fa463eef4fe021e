"""The JPEGs the benchmarks read when given none, and file lists of ImageNet's length."""

import contextlib
import tempfile

import numpy as np

from resnet_jax.data import demo
from resnet_jax.data.folders import Split, scan_split


@contextlib.contextmanager
def demo_tree(*, num_classes: int, per_class: int, image_size: int, prefix: str | None = None,
              note: str | None = None):
    """Yields the root of a generated tree (root/train/<class>/*.jpg, one val image per
    class) in a temporary folder, removed on exit. With `note`, prints
    '<note>drawing C x N JPEGs of S px into FOLDER' first (drawing takes seconds)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        if note is not None:
            print(f"{note}drawing {num_classes} x {per_class} JPEGs of {image_size} px into "
                  f"{folder}", flush=True)
        yield demo.make_demo_dataset(folder, num_classes=num_classes,
                                     train_per_class=per_class, val_per_class=1,
                                     image_size=image_size, seed=0)


def repeated_split(root: str, paths: int) -> Split:
    """`paths` entries cycling through the files of ROOT/train (labels follow the files): a
    file list as long as ImageNet's over a few small files."""
    base = scan_split(root, "train")
    index = np.arange(paths) % len(base.files)
    return Split(files=[base.files[i] for i in index], labels=base.labels[index],
                 class_names=base.class_names)
