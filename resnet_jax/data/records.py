"""ImageNet in record files (MXNet RecordIO, TF-slim TFRecord, WebDataset tars), read by byte range.

Each format is reduced once to a per-sample index: for image i, the file, the
byte offset and size of its encoded JPEG inside that file, and its label
(`INDEX_DTYPE`, one row per image, in file order). The training feed keeps
the folder layout's `TrainOrder` (batch g from (seed, g) alone, on any device
count) and reads each sample's bytes by byte range in DALI's parallel external
source: spawned worker processes, each memory-mapping the index from its path
(`RangeSource`), so that the Python thread that drives the GPUs only receives
the bytes. DALI's own readers (fn.readers.mxnet / tfrecord / webdataset)
shuffle within a buffer and shard by device count, which would give up those
guarantees (docs/data.md).

The index is built at the first start from the files' own headers (RecordIO
record headers, TFRecord length prefixes and the Example's fields, tar
headers), checked (truncated files, labels, field names), and cached beside the
data (DIR/.resnet_jax/) or, when DIR is read-only, in ~/.cache/resnet_jax/index/;
later starts memory-map it.

This module imports numpy alone: DALI's spawned workers import it.
"""

from concurrent import futures
import ctypes
import dataclasses
import glob
import hashlib
import json
import os
import signal
import struct
import sys
import tarfile

import numpy as np

from resnet_jax.errors import ConfigError

FORMATS = ("folder", "recordio", "tfrecord", "webdataset")

# One row per image: which file (in the split's file list), where its encoded bytes are.
INDEX_DTYPE = np.dtype([("file", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i4")])
# A RecordIO record that MXNet's writer cut in parts (its data held the magic number at a
# 4-byte boundary, about 8 of ImageNet's 1.28 M): `size` is then negated and spans the parts.
_INDEX_VERSION = 1

# --- MXNet RecordIO (dmlc-core recordio.h, mxnet.recordio) ----------------------------------
MX_MAGIC = 0xCED7230A
_MX_HEAD = struct.Struct("<II")  # magic, lrecord (cflag in the upper 3 bits, length below)
MX_IRHEADER = struct.Struct("<IfQQ")  # flag, label, id, id2

# --- TFRecord: uint64 length, uint32 masked CRC of it, data, uint32 masked CRC of data -------
_TF_HEAD = struct.Struct("<QI")
TF_IMAGE, TF_LABEL = "image/encoded", "image/class/label"

_SPLITS = {"train": ("train", "train", "train"), "val": ("val", "validation", "val")}


@dataclasses.dataclass(frozen=True)
class RecordSplit:
    """The images of one split in record files: the index (memory-mapped) and its files.

    `labels[i]` is image i's label (0-based), `index_path` the cached index
    that DALI's workers map, `paths` the record files the index's `file`
    column counts in.
    """

    format: str
    paths: list[str]
    index_path: str
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        """The number of images."""
        return len(self.labels)


def split_files(root: str, fmt: str, split: str) -> list[str]:
    """The record files of `split` ('train' or 'val') under `root`, sorted; [] when none."""
    rec, tf, wds = _SPLITS[split]
    if fmt == "recordio":
        path = os.path.join(root, f"{rec}.rec")
        return [path] if os.path.isfile(path) else []
    if fmt == "tfrecord":
        return sorted(p for p in glob.glob(os.path.join(root, f"{tf}-*-of-*"))
                      if not p.endswith(".idx"))
    return sorted(glob.glob(os.path.join(root, wds, "*.tar")))


_LAYOUTS = {
    "recordio": "expected {root}/train.rec and {root}/val.rec (im2rec --pass-through, or "
                "python -m resnet_jax.data.pack --format recordio)",
    "tfrecord": "expected {root}/train-*-of-* and {root}/validation-*-of-* (TF-slim's "
                "build_imagenet_data.py, or python -m resnet_jax.data.pack --format tfrecord)",
    "webdataset": "expected {root}/train/*.tar and {root}/val/*.tar with KEY.jpg + KEY.cls "
                  "members (python -m resnet_jax.data.pack --format webdataset)",
}


def _bad(path: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"'{path}' {problem}: {fix}")


_REPACK = "make it again (python -m resnet_jax.data.pack) or replace it"


# --- index building, per format -------------------------------------------------------------


def _mx_entries(path: str, file_id: int, first_label: int) -> list[tuple]:
    """(file, offset, size, label) of each record of an im2rec file, from its headers."""
    entries, starts = [], []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        fd = f.fileno()
        offset = 0
        while offset < size:
            head = os.pread(fd, _MX_HEAD.size + MX_IRHEADER.size, offset)
            if len(head) < _MX_HEAD.size:
                raise _bad(path, f"is truncated: {size - offset} stray bytes at offset {offset}",
                           _REPACK)
            magic, lrecord = _MX_HEAD.unpack_from(head)
            if magic != MX_MAGIC:
                raise _bad(path, f"is not an MXNet RecordIO file (no record magic at offset "
                           f"{offset})", "give the .rec that im2rec wrote, or " + _REPACK)
            cflag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
            whole = cflag == 0
            end = offset + _MX_HEAD.size + (length + 3) // 4 * 4
            while cflag in (1, 2) and end + _MX_HEAD.size <= size:  # parts, to the last (3)
                _, lrecord = _MX_HEAD.unpack(os.pread(fd, _MX_HEAD.size, end))
                cflag = lrecord >> 29
                end += _MX_HEAD.size + ((lrecord & ((1 << 29) - 1)) + 3) // 4 * 4
            if end > size or len(head) < _MX_HEAD.size + MX_IRHEADER.size:
                raise _bad(path, f"is truncated: its record at offset {offset} ends past the "
                           f"end of the file ({size} bytes)", _REPACK)
            starts.append((offset, None))
            flag, label, _, _ = MX_IRHEADER.unpack_from(head, _MX_HEAD.size)
            if flag > 0:  # several labels: im2rec's first one is the class
                (label,) = struct.unpack("<f", os.pread(fd, 4, offset + len(head)))
            skip = _MX_HEAD.size + MX_IRHEADER.size + 4 * flag
            if whole:
                entries.append((file_id, offset + skip, length + _MX_HEAD.size - skip,
                                int(label) - first_label))
            else:
                entries.append((file_id, offset, -(end - offset), int(label) - first_label))
            offset = end
    _check_index(path, path[:-4] + ".idx", starts, "im2rec, or DALI's rec2idx")
    return entries


def mx_payload(data: bytes) -> bytes:
    """The image bytes of one whole RecordIO record span (parts joined by the magic, as
    MXNet's reader does), after the IRHeader and its label array."""
    parts, offset = [], 0
    while offset < len(data):
        _, lrecord = _MX_HEAD.unpack_from(data, offset)
        length = lrecord & ((1 << 29) - 1)
        parts.append(data[offset + _MX_HEAD.size:offset + _MX_HEAD.size + length])
        offset += _MX_HEAD.size + (length + 3) // 4 * 4
    record = struct.pack("<I", MX_MAGIC).join(parts)
    flag = MX_IRHEADER.unpack_from(record)[0]
    return record[MX_IRHEADER.size + 4 * flag:]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited value)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("field past the end")


def tf_example(data: bytes) -> dict:
    """The features of a serialized tf.train.Example: name -> ('bytes', (start, end)) of its
    first value, or ('int64', [values]), or ('float', None)."""
    features = {}
    for number, wire, span in _fields(data, 0, len(data)):
        if number != 1 or wire != 2:
            continue
        for n, w, entry in _fields(data, *span):
            if n != 1 or w != 2:
                continue
            key, feature = None, None
            for en, ew, ev in _fields(data, *entry):
                if en == 1 and ew == 2:
                    key = data[ev[0]:ev[1]].decode("utf-8", "replace")
                elif en == 2 and ew == 2:
                    feature = ev
            if key is None or feature is None:
                continue
            features[key] = _feature(data, feature)
    return features


def _feature(data: bytes, span) -> tuple:
    for kind, wire, inner in _fields(data, *span):
        if kind == 1 and wire == 2:  # BytesList
            values = [v for n, w, v in _fields(data, *inner) if n == 1 and w == 2]
            return "bytes", values[0] if values else None
        if kind == 3 and wire == 2:  # Int64List, packed or not
            values = []
            for n, w, v in _fields(data, *inner):
                if n == 1 and w == 0:
                    values.append(v)
                elif n == 1 and w == 2:
                    pos = v[0]
                    while pos < v[1]:
                        value, pos = _varint(data, pos)
                        values.append(value)
            return "int64", [v - (1 << 64) if v >= 1 << 63 else v for v in values]
        if kind == 2:
            return "float", None
    return "empty", None


def _tf_entries(path: str, file_id: int, first_label: int) -> list[tuple]:
    """(file, offset, size, label) of each Example's image in a TFRecord shard."""
    entries, records = [], []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            head = f.read(_TF_HEAD.size)
            if len(head) < _TF_HEAD.size:
                raise _bad(path, f"is truncated: {len(head)} stray bytes at offset {offset}",
                           _REPACK)
            (length, _) = _TF_HEAD.unpack(head)
            if offset + _TF_HEAD.size + length + 4 > size:
                raise _bad(path, f"is truncated: its record at offset {offset} ends past the "
                           f"end of the file ({size} bytes)", _REPACK)
            data = f.read(length)
            f.seek(4, os.SEEK_CUR)
            try:
                features = tf_example(data)
            except (ValueError, IndexError):
                raise _bad(path, f"has a record at offset {offset} that is not a "
                           "tf.train.Example", _REPACK) from None
            image, label = features.get(TF_IMAGE), features.get(TF_LABEL)
            if (image is None or image[0] != "bytes" or image[1] is None
                    or label is None or label[0] != "int64" or not label[1]):
                found = ", ".join(sorted(features)) or "none"
                raise _bad(path, f"has a record at offset {offset} without the features "
                           f"'{TF_IMAGE}' (bytes) and '{TF_LABEL}' (int64); it has {found}",
                           "write TF-slim's feature names (build_imagenet_data.py), or "
                           "python -m resnet_jax.data.pack --format tfrecord")
            start, end = image[1]
            entries.append((file_id, offset + _TF_HEAD.size + start, end - start,
                            label[1][0] - first_label))
            records.append((offset, _TF_HEAD.size + length + 4))
            offset += _TF_HEAD.size + length + 4
    _check_index(path, path + ".idx", records, "tfrecord2idx SHARD SHARD.idx")
    return entries


def _check_index(path: str, index: str, found: list[tuple[int, int]], remake: str) -> None:
    """Stops when the index file of `path` that DALI's own reader would use does not list the
    records `found` ((offset, size), or (offset, None) where the index gives no size)."""
    if not os.path.isfile(index):
        return
    with open(index) as f:
        listed = [tuple(int(v) for v in line.split()) for line in f if line.strip()]
    if path.endswith(".rec"):  # im2rec's 'key<TAB>offset' lines, in any order
        listed = sorted((offset, None) for _, offset in listed)
    if listed != found:
        first = next((i for i, (a, b) in enumerate(zip(listed, found, strict=False))
                      if a != b),
                     min(len(listed), len(found)))
        raise _bad(index, f"does not match '{path}' ({len(listed)} records listed, "
                   f"{len(found)} found; the first difference is record {first})",
                   f"delete it or make it again ({remake})")


def _wds_entries(path: str, file_id: int, first_label: int) -> list[tuple]:
    """(file, offset, size, label) of each KEY.jpg with its KEY.cls in a WebDataset tar."""
    images, labels, order = {}, {}, []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                ext = ext.lower()
                if ext in ("jpg", "jpeg", "png", "webp"):
                    images[key] = (member.offset_data, member.size)
                    order.append(key)
                elif ext == "cls":
                    labels[key] = tar.extractfile(member).read()
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError) as error:
        raise _bad(path, f"is not a readable tar file ({error})", _REPACK) from None
    if end > os.path.getsize(path) or any(o + s > os.path.getsize(path)
                                          for o, s in images.values()):
        raise _bad(path, "is truncated", _REPACK)
    if not images:
        raise _bad(path, "has no images (KEY.jpg members)", "remove it, or " + _REPACK)
    entries = []
    for key in order:
        if key not in labels:
            raise _bad(path, f"has '{key}.jpg' without its label '{key}.cls'",
                       "add the label members, or " + _REPACK)
        try:
            label = int(labels[key].decode().strip())
        except ValueError:
            raise _bad(path, f"has a label '{key}.cls' that is not an integer "
                       f"({labels[key][:20]!r})", _REPACK) from None
        entries.append((file_id, *images[key], label - first_label))
    return entries


_ENTRIES = {"recordio": _mx_entries, "tfrecord": _tf_entries, "webdataset": _wds_entries}


def build_index(paths: list[str], fmt: str, first_label: int = 0) -> np.ndarray:
    """The index (INDEX_DTYPE rows, file order) of record files `paths` of format `fmt`."""
    rows = []
    for file_id, path in enumerate(paths):
        found = _ENTRIES[fmt](path, file_id, first_label)
        if not found:
            raise _bad(path, "has no images", "remove it, or " + _REPACK)
        rows.extend(found)
    return np.array(rows, INDEX_DTYPE)


def _stamp(paths: list[str], fmt: str, first_label: int) -> str:
    digest = hashlib.sha256(json.dumps([_INDEX_VERSION, fmt, first_label]).encode())
    for path in paths:
        st = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:20]


def cache_dirs(root: str) -> list[str]:
    """Where the index of `root` is kept: beside the data, else in the user's cache."""
    name = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(root, ".resnet_jax"), os.path.join(home, "resnet_jax", "index", name)]


def cached_index(root: str, paths: list[str], fmt: str, split: str, first_label: int,
                 log=print) -> str:
    """The path of the index of `paths`, built (and logged in one line) if missing or stale."""
    stamp = _stamp(paths, fmt, first_label)
    name = f"{fmt}-{split}-{stamp}.npy"
    for folder in cache_dirs(root):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    index = build_index(paths, fmt, first_label)
    for folder in cache_dirs(root):
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, name)
            temporary = f"{path}.{os.getpid()}.tmp.npy"
            np.save(temporary, index)
            os.replace(temporary, path)
        except OSError:
            continue
        where = "beside the data" if folder == cache_dirs(root)[0] else "(data.root is read-only)"
        log(f"indexed {len(index):,} {split} images of {len(paths)} {fmt} file"
            f"{'s' if len(paths) > 1 else ''} in {folder} {where}")
        return path
    raise ConfigError(f"cannot write the {fmt} index of '{root}' beside the data nor in "
                      f"{cache_dirs(root)[1]}: make one of them writable")


def class_names(root: str) -> list[str]:
    """The class names `pack` wrote (root/classes.txt, one per line, in label order); []."""
    path = os.path.join(root, "classes.txt")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _problem(fds, paths, row) -> str | None:
    # Here, not at the top: DALI's workers import this module, and need neither PIL nor jax.
    from resnet_jax.data import folders

    offset, size = int(row["offset"]), int(row["size"])
    fd = fds[int(row["file"])]
    if size < 0:  # a RecordIO record in parts: joined first
        data = mx_payload(os.pread(fd, -size, offset))
        return folders.bytes_problem(data[:16], data[-8:], len(data),
                                     decodes=lambda: folders.decodes_bytes(data),
                                     png_tail=lambda: data[-4096:])
    tail = min(8, size)
    return folders.bytes_problem(
        os.pread(fd, min(16, size), offset), os.pread(fd, tail, offset + size - tail), size,
        decodes=lambda: folders.decodes_bytes(os.pread(fd, size, offset)),
        png_tail=lambda: os.pread(fd, min(4096, size), offset + max(0, size - 4096)))


def image_problems(index_path: str, paths: list[str], *, num_threads: int = 32) -> list:
    """(row, problem) of each image of the index that DALI could not decode (the folder
    layout's check, folders.bytes_problem, on the bytes inside the record files); kept
    beside the index, so that each data set is checked once."""
    cache = index_path[:-4] + "-problems.json"
    if os.path.isfile(cache):
        with open(cache) as f:
            return [tuple(item) for item in json.load(f)]
    index = np.load(index_path, mmap_mode="r")
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    chunks = [range(i, min(i + 4096, len(index))) for i in range(0, len(index), 4096)]

    def check(rows):
        return [(i, problem) for i in rows if (problem := _problem(fds, paths, index[i]))]

    try:
        with futures.ThreadPoolExecutor(max(1, min(num_threads, len(chunks)))) as pool:
            found = [bad for part in pool.map(check, chunks) for bad in part]
    finally:
        for fd in fds:
            os.close(fd)
    try:
        temporary = f"{cache}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            json.dump(found, f)
        os.replace(temporary, cache)
    except OSError:
        pass  # checked again next time
    return found


def _unreadable(split: RecordSplit, problems: list, bad_images: str, log) -> RecordSplit:
    """`split` as `bad_images` ('error' or 'skip') says for its unreadable images."""
    index = np.load(split.index_path, mmap_mode="r")
    row, problem = problems[0]
    where = (f"image {row} of the index, in '{split.paths[int(index[row]['file'])]}' at byte "
             f"{abs(int(index[row]['offset']))}")
    if bad_images == "error":
        more = f"; {len(problems) - 1} more unreadable" if len(problems) > 1 else ""
        raise ConfigError(f"{where} is unreadable: {problem}{more}: pack the data again from "
                          "readable files, or pass --config.data.skip_bad_images=true to leave "
                          "unreadable images out")
    keep = np.ones(len(index), bool)
    keep[[r for r, _ in problems]] = False
    path = split.index_path[:-4] + "-readable.npy"
    if not os.path.isfile(path):
        temporary = f"{path}.{os.getpid()}.tmp.npy"
        np.save(temporary, np.asarray(index)[keep])
        os.replace(temporary, path)
    log(f"skipped {len(problems)} unreadable image{'s' if len(problems) > 1 else ''}: first "
        f"{where}: {problem}")
    return dataclasses.replace(split, index_path=path, labels=split.labels[keep])


def open_split(root: str, fmt: str, split: str, *, num_classes: int, first_label: int = 0,
               bad_images: str = "unchecked", log=print) -> RecordSplit:
    """The images of `split` in the record files of `root`, indexed and checked.

    `bad_images` as for the folder layout (folders.scan_split): 'unchecked',
    'error' (the first unreadable image stops the run) or 'skip' (left out).
    """
    layout = _LAYOUTS[fmt].format(root=root.rstrip("/") or "/")
    if not os.path.isdir(root):
        raise ConfigError(f"data.root '{root}' does not exist or is not a folder: {layout}")
    paths = split_files(root, fmt, split)
    if not paths:
        raise ConfigError(f"data.root '{root}' has no {fmt} files for {split}: {layout}")
    index_path = cached_index(root, paths, fmt, split, first_label, log=log)
    index = np.load(index_path, mmap_mode="r")
    labels = np.asarray(index["label"], np.int32)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        row = index[bad[0]]
        shift = (f" (labels are read as file label - {first_label}: "
                 "--config.data.tfrecord_first_label=0 for 0-based files)"
                 if fmt == "tfrecord" else "")
        raise ConfigError(
            f"'{paths[row['file']]}' has label {int(row['label']) + first_label} "
            f"(class {int(row['label'])}), outside num_classes={num_classes}{shift}: set "
            f"--config.num_classes to at least {int(labels.max()) + 1}, or fix the labels")
    records = RecordSplit(format=fmt, paths=list(paths), index_path=index_path, labels=labels,
                          class_names=class_names(root))
    if bad_images != "unchecked" and (problems := image_problems(index_path, paths)):
        return _unreadable(records, problems, bad_images, log)
    return records


# --- the reads, in DALI's worker processes --------------------------------------------------


def _die_with_parent() -> None:
    """Asks Linux for SIGKILL when the parent process ends (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request
        os.kill(os.getpid(), signal.SIGKILL)


def epoch_permutation(seed: int, num_images: int, epoch: int) -> np.ndarray:
    """The order of a split's images in `epoch` (TrainOrder.permutation; here so that DALI's
    workers draw it without importing the pipelines)."""
    return np.random.default_rng([seed, 0, epoch]).permutation(num_images)


class RangeSource:
    """A stateless DALI parallel external source: the encoded bytes of a pipeline's rows.

    Training (`global_batch` set): batch g = start + the pipeline's iteration
    holds rows [first, stop) of TrainOrder's batch g. Evaluation: iteration i is
    batch i mod num_batches of `positions` (the shard's images, padded), with
    the labels as a second output. Pickled small (paths and numbers) into each
    spawned worker, which maps the index and opens the files itself.
    """

    def __init__(self, split: RecordSplit, *, first: int, stop: int, global_batch: int = 0,
                 seed: int = 0, start: int = 0, positions: np.ndarray | None = None):
        self.paths, self.index_path = list(split.paths), split.index_path
        self.num_images = len(split)
        self.first, self.stop, self.global_batch = first, stop, global_batch
        self.seed, self.start = seed, start
        self.positions = positions
        self._open = None

    def __getstate__(self):
        return {**self.__dict__, "_open": None}

    def __setstate__(self, state):
        # Unpickled in a DALI worker: it must end with the process it serves. DALI's workers
        # outlive a parent killed with SIGKILL (checked: DALI 2.4), holding its stdout and
        # shared memory; so Linux kills them when the parent dies.
        self.__dict__.update(state)
        _die_with_parent()

    def _files(self):
        if self._open is None:
            self._open = (np.load(self.index_path, mmap_mode="r"),
                          [os.open(p, os.O_RDONLY) for p in self.paths], [None, None])
        return self._open

    def images(self, iteration: int) -> np.ndarray:
        """Which images (positions in the split) the rows of `iteration` are."""
        if self.positions is not None:
            batch = self.stop - self.first
            step = iteration % (len(self.positions) // batch)
            return self.positions[step * batch:(step + 1) * batch]
        steps = self.num_images // self.global_batch
        epoch, step = divmod(self.start + iteration, steps)
        _, _, cached = self._files()
        if cached[0] != epoch:
            cached[:] = [epoch, epoch_permutation(self.seed, self.num_images, epoch)]
        base = step * self.global_batch
        return cached[1][base + self.first:base + self.stop]

    def read(self, position: int) -> np.ndarray:
        """The encoded image bytes of image `position`."""
        index, fds, _ = self._files()
        row = index[position]
        size = int(row["size"])
        data = os.pread(fds[row["file"]], abs(size), int(row["offset"]))
        if len(data) != abs(size):
            raise OSError(f"'{self.paths[row['file']]}' is truncated: {len(data)} of "
                          f"{abs(size)} bytes at offset {int(row['offset'])}")
        if size < 0:
            data = mx_payload(data)
        return np.frombuffer(data, np.uint8)

    def __call__(self, info):
        images = self.images(info.iteration)
        jpegs = [self.read(int(i)) for i in images]
        if self.positions is None:
            return jpegs
        index, _, _ = self._files()
        return jpegs, [np.array([index[int(i)]["label"]], np.int32) for i in images]
