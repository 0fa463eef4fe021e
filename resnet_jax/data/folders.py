"""The ImageNet folder layout: root/<split>/<class>/<image>, one folder per class."""

from concurrent import futures
import dataclasses
import io
import os
import re

from absl import logging
import jax
import numpy as np
from PIL import Image

from resnet_jax.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# What scan_split does with files that check_images finds unreadable.
BAD_IMAGES = ("unchecked", "error", "skip")

_LAYOUT = ("expected {root}/train/<class>/<image>.JPEG and {root}/val/<class>/<image>.JPEG "
           "(see docs/data.md)")

_FORMATS = "JPEG, PNG, BMP, TIFF or WebP"
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
_JPEG_END = b"\xff\xd9"  # the end-of-image marker
_PNG_END = b"IEND\xaeB`\x82"  # the last chunk, with its CRC
_HEAD, _TAIL = 16, len(_PNG_END)
_PNG_SEARCH = 4096  # where the IEND chunk is looked for when the file does not end with it
# Files per task of the thread pool: large enough that the pool's overhead does not count.
_CHUNK = 512


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


def _read_tail(path: str, size: int, length: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, size - length))
            return f.read(length)
    except OSError:
        return b""


def _decodes(path: str) -> bool:
    """Whether PIL decodes a JPEG to its end: the slow check, for the few suspect files.

    PIL and DALI agree on JPEGs: both accept bytes after the end-of-image
    marker and refuse a file cut before it.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # decode at 1/8 scale: still reads every byte
            image.load()
    except Image.DecompressionBombError:
        return True  # very large, but complete
    except Exception:  # any failure to decode: unreadable
        return False
    return True


def image_problem(path: str) -> str | None:
    """Why DALI could not read the image file at `path`, or None when it looks sound.

    A cheap check: the first bytes must be the signature of a JPEG, PNG, BMP,
    TIFF or WebP file (whatever the extension says), and the file must be
    complete: a JPEG ends with the end-of-image marker FFD9, a PNG with its
    IEND chunk, a BMP or WebP is as long as its header says. Some encoders
    append bytes after the end: a JPEG that fails the end test is decoded with
    PIL before it is called truncated, a PNG's IEND chunk is looked for in its
    last 4 KiB. Pixels are not checked otherwise.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, _HEAD, 0)
            tail = os.pread(fd, _TAIL, max(0, size - _TAIL))
        finally:
            os.close(fd)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return bytes_problem(head, tail, size, decodes=lambda: _decodes(path),
                         png_tail=lambda: _read_tail(path, size, _PNG_SEARCH))


def bytes_problem(head: bytes, tail: bytes, size: int, *, decodes, png_tail) -> str | None:
    """`image_problem` for an image of `size` bytes starting with `head` (16 bytes) and ending
    with `tail` (8 bytes); `decodes()` and `png_tail()` are asked only for suspect files (a
    JPEG without the end marker, a PNG whose IEND is not last): whether PIL decodes it, its
    last 4 KiB. Also used for images inside record files."""
    if size == 0:
        return "empty file (0 bytes)"
    if head.startswith(_JPEG):
        if tail.endswith(_JPEG_END) or decodes():
            return None
        return f"truncated JPEG ({size} bytes, no end-of-image marker FFD9)"
    if head.startswith(_PNG):
        # DALI needs the IEND chunk (PIL does not); bytes after it are fine.
        if tail == _PNG_END or _PNG_END in png_tail():
            return None
        return f"truncated PNG ({size} bytes, no IEND chunk)"
    if head.startswith(b"BM") and len(head) >= 6:
        expected = int.from_bytes(head[2:6], "little")
        return None if size >= expected else f"truncated BMP ({size} of {expected} bytes)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        expected = int.from_bytes(head[4:8], "little") + 8
        return None if size >= expected else f"truncated WebP ({size} of {expected} bytes)"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return None
    return f"not a {_FORMATS} file (it starts with {head[:8]!r})"


def decodes_bytes(data: bytes) -> bool:
    """Whether PIL decodes the image `data` to its end (see `_decodes`)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (1, 1))
            image.load()
    except Image.DecompressionBombError:
        return True
    except Exception:  # any failure to decode: unreadable
        return False
    return True


def check_images(files: list[str], *, num_threads: int = 32) -> list[tuple[str, str]]:
    """(path, problem) for each file of `files` that `image_problem` finds unreadable.

    In file order. The files are read by `num_threads` threads: the check is
    bound by file-system latency (two small reads per file), not by the CPU.
    """
    chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]

    def check(chunk):
        return [(path, problem) for path in chunk if (problem := image_problem(path))]

    if len(chunks) <= 1 or num_threads <= 1:
        return [bad for chunk in chunks for bad in check(chunk)]
    with futures.ThreadPoolExecutor(max_workers=min(num_threads, len(chunks))) as pool:
        return [bad for found in pool.map(check, chunks) for bad in found]


def _log_skipped(bad: list[tuple[str, str]], split_dir: str) -> None:
    if jax.process_index() == 0:
        path, problem = bad[0]
        logging.warning("skipped %d unreadable image%s in %s: first %s: %s", len(bad),
                        "s" if len(bad) > 1 else "", split_dir,
                        os.path.relpath(path, split_dir), problem)


def _bad_images_error(bad: list[tuple[str, str]], split_dir: str) -> ConfigError:
    path, problem = bad[0]
    others = (f"; {len(bad) - 1} more unreadable file{'s' if len(bad) > 2 else ''} "
              f"in '{split_dir}'") if len(bad) > 1 else ""
    return ConfigError(
        f"image file '{path}' is unreadable: {problem}{others}: delete or replace "
        f"{'them' if len(bad) > 1 else 'it'}, or pass --config.data.skip_bad_images=true "
        "to leave unreadable files out")


def scan_split(root: str, split: str, *, bad_images: str = "unchecked") -> Split:
    """Lists root/split/<class>/<image>: classes are the sorted folder names.

    Labels are 0..N-1 in sorted class order, files are sorted within each class,
    and files whose extension is not an image type are ignored. Raises a
    ConfigError naming the path when the layout is not as expected.

    `bad_images` says what to do with files that `check_images` finds
    unreadable (not an image, truncated): 'unchecked' (the default) does not
    look at the files' contents; 'error' raises a ConfigError naming the first
    such file; 'skip' leaves them out and logs their number and the first.
    """
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"bad_images={bad_images!r}: use one of {', '.join(BAD_IMAGES)}")
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

    per_class = []
    for name in class_names:
        class_dir = os.path.join(split_dir, name)
        with os.scandir(class_dir) as entries:
            images = sorted(e.name for e in entries if e.is_file() and _is_image(e.name))
        if not images:
            raise ConfigError(
                f"class folder '{class_dir}' has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                f"remove the folder or add its images; {layout}")
        per_class.append([os.path.join(class_dir, image) for image in images])

    if bad_images != "unchecked":
        bad = check_images([path for paths in per_class for path in paths])
        if bad and bad_images == "error":
            raise _bad_images_error(bad, split_dir)
        if bad:
            _log_skipped(bad, split_dir)
            unreadable = {path for path, _ in bad}
            for name, paths in zip(class_names, per_class, strict=True):
                paths[:] = [path for path in paths if path not in unreadable]
                if not paths:
                    raise ConfigError(
                        f"class folder '{os.path.join(split_dir, name)}' has no readable "
                        f"images (all skipped as unreadable, e.g. {bad[0][0]!r}): replace "
                        "them, or remove the folder")

    files, labels = [], []
    for label, paths in enumerate(per_class):
        files.extend(paths)
        labels.extend([label] * len(paths))
    return Split(files=files, labels=np.asarray(labels, np.int32), class_names=class_names)


def check_num_classes(class_names: list[str], num_classes: int, root: str) -> None:
    """Raises a ConfigError when the model has fewer outputs than there are class folders.

    More outputs than folders is allowed (the extra classes are never the label).
    """
    if num_classes < len(class_names):
        raise ConfigError(
            f"data.root '{root}' has {len(class_names)} class folders but num_classes is "
            f"{num_classes}: set --config.num_classes={len(class_names)}")


def check_same_classes(train_names: list[str], val_names: list[str], root: str) -> None:
    """Raises a ConfigError naming the folders when train/ and val/ have different classes."""
    if train_names == val_names:
        return

    def some(names):
        shown = ", ".join(f"'{name}'" for name in names[:3])
        return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    only_train = sorted(set(train_names) - set(val_names))
    only_val = sorted(set(val_names) - set(train_names))
    differences = ([f"train/ has {some(only_train)} that val/ lacks"] if only_train else []) + (
        [f"val/ has {some(only_val)} that train/ lacks"] if only_val else [])
    raise ConfigError(
        f"data.root '{root}' has other class folders in train/ ({len(train_names)}) than in "
        f"val/ ({len(val_names)}): {', '.join(differences)}; give both the same class folders "
        "(labels are the sorted folder names)")


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in label order (sorted WordNet ids)."""
    path = os.path.join(os.path.dirname(__file__), "imagenet_classes.txt")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def display_names(meta: dict) -> list[str]:
    """Readable class names for a checkpoint's labels (its metadata's `class_names` and
    `num_classes`): ImageNet's names for WordNet-id folders, 'class N' for unnamed outputs."""
    names = list(meta.get("class_names") or [])
    num_classes = meta["num_classes"]
    imagenet = num_classes == 1000 and (
        not names or all(re.fullmatch(r"n\d{8}", n) for n in names))
    if imagenet:
        readable = imagenet_class_names()
        return [f"{r} ({w})" for r, w in zip(readable, names, strict=True)] if names else readable
    # Models with more outputs than class folders: the extra outputs have no name.
    return names + [f"class {i}" for i in range(len(names), num_classes)]
