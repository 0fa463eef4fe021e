"""The ImageNet folder layout: root/<split>/<class>/<image>, one folder per class."""

import dataclasses
import os

import numpy as np

from resnet_jax.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_LAYOUT = ("expected {root}/train/<class>/<image>.JPEG and {root}/val/<class>/<image>.JPEG "
           "(see README, \"Data\")")


@dataclasses.dataclass(frozen=True)
class Split:
    """The images of one split: paths, integer labels and the class folder names.

    `labels[i]` is the label of `files[i]`; label k is `class_names[k]`.
    """

    files: list[str]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        """The number of images."""
        return len(self.files)


def _is_image(name: str) -> bool:
    # Hidden files such as macOS '._x.JPEG' metadata are not images.
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def scan_split(root: str, split: str) -> Split:
    """Lists root/split/<class>/<image>: classes are the sorted folder names.

    Labels are 0..N-1 in sorted class order, files are sorted within each class,
    and files whose extension is not an image type are ignored. Raises a
    ConfigError naming the path when the layout is not as expected.
    """
    layout = _LAYOUT.format(root=root.rstrip("/") or "/")
    if not os.path.isdir(root):
        raise ConfigError(f"data.root '{root}' does not exist or is not a folder: {layout}")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise ConfigError(f"data.root '{root}' has no {split}/ folder: {layout}")
    with os.scandir(split_dir) as entries:
        class_names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise ConfigError(f"'{split_dir}' has no class folders: {layout}")

    files, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        with os.scandir(class_dir) as entries:
            images = sorted(e.name for e in entries if e.is_file() and _is_image(e.name))
        if not images:
            raise ConfigError(
                f"class folder '{class_dir}' has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                f"remove the folder or add its images; {layout}")
        files.extend(os.path.join(class_dir, image) for image in images)
        labels.extend([label] * len(images))
    return Split(files=files, labels=np.asarray(labels, np.int32), class_names=class_names)


def check_num_classes(class_names: list[str], num_classes: int, root: str) -> None:
    """Raises a ConfigError when the model has fewer outputs than there are class folders.

    More outputs than folders is allowed (the extra classes are never the label).
    """
    if num_classes < len(class_names):
        raise ConfigError(
            f"data.root '{root}' has {len(class_names)} class folders but num_classes is "
            f"{num_classes}: set --config.num_classes={len(class_names)}")
