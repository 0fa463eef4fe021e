"""Packs the folder layout into record files: MXNet RecordIO, TF-slim TFRecord or WebDataset.

    python -m resnet_jax.data.pack --src DIR --format recordio|tfrecord|webdataset --out OUT
        [--shards N] [--processes P]

writes, in the folder layout's order (sorted classes, sorted files):

* recordio: OUT/train.rec + train.idx, OUT/val.rec + val.idx, as `im2rec
  --pass-through` writes them (IRHeader flag 0, the 0-based label as a float,
  the image's number as id, then the file's bytes; dmlc's record framing);
* tfrecord: OUT/train-00000-of-0000N, OUT/validation-..., tf.train.Example
  records with TF-slim's `image/encoded`, `image/format`, `image/filename`,
  `image/class/label` (1-based, as TF-slim's build_imagenet_data.py) and
  `image/class/synset`;
* webdataset: OUT/train/shard-00000.tar, OUT/val/..., members KEY.jpg (the
  file's bytes) and KEY.cls (the 0-based label, as text);

and OUT/classes.txt (the class folder names in label order). Shards are
written by one process per core, each to a temporary name renamed when whole:
a re-run skips finished shards. Nothing is decoded or re-encoded.
"""

import argparse
from concurrent import futures
import os
import shutil
import struct
import sys
import tarfile

from resnet_jax.data import folders, records
from resnet_jax.data.source import usable_cores
from resnet_jax.errors import ConfigError, exit_code

_SPLITS = (("train", "train", "train"), ("val", "validation", "val"))


def mx_record(data: bytes) -> bytes:
    """One record in dmlc-core's RecordIO framing (recordio.cc, RecordIOWriter::WriteRecord):
    the data is cut where it holds the magic number at a 4-byte boundary."""
    magic = struct.pack("<I", records.MX_MAGIC)
    out, start = [], 0
    for i in range(0, len(data) // 4 * 4, 4):
        if data[i:i + 4] == magic:
            out += [magic, struct.pack("<I", ((1 if start == 0 else 2) << 29) | (i - start)),
                    data[start:i]]
            start = i + 4
    tail = len(data) - start
    out += [magic, struct.pack("<I", ((3 if start else 0) << 29) | tail), data[start:],
            b"\0" * (-tail % 4)]
    return b"".join(out)


def _proto_bytes(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tf_example(features: dict) -> bytes:
    """A serialized tf.train.Example of `features`: name -> bytes or int."""
    entries = []
    for name, value in features.items():
        if isinstance(value, bytes):
            feature = _proto_bytes(1, _proto_bytes(1, value))  # BytesList
        else:
            feature = _proto_bytes(3, _proto_bytes(1, _varint(value)))  # Int64List, packed
        entries.append(_proto_bytes(1, _proto_bytes(1, name.encode()) + _proto_bytes(2, feature)))
    return _proto_bytes(1, b"".join(entries))


def _write_recordio(path: str, items: list[tuple[int, str, int]]) -> None:
    with open(path + ".tmp", "wb") as out, open(path + ".idx.tmp", "w") as index:
        for number, file, label in items:
            with open(file, "rb") as f:
                data = f.read()
            index.write(f"{number}\t{out.tell()}\n")
            out.write(mx_record(records.MX_IRHEADER.pack(0, float(label), number, 0) + data))
    os.replace(path + ".idx.tmp", path + ".idx")
    os.replace(path + ".tmp", path)


def _write_tfrecord(path: str, items: list[tuple[int, str, int]], synsets: list[str]) -> None:
    # TensorFlow's writer, for the records' masked CRC32C (there is none in the standard
    # library); imported here: only this format needs it.
    import tensorflow as tf

    offset, index = 0, []
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
        for _, file, label in items:
            with open(file, "rb") as f:
                data = f.read()
            example = tf_example({
                "image/class/label": label + 1, "image/class/synset": synsets[label].encode(),
                "image/format": b"JPEG", "image/filename": os.path.basename(file).encode(),
                records.TF_IMAGE: data})
            writer.write(example)
            # DALI's index (tfrecord2idx): offset and size of each record, with its framing.
            index.append(f"{offset} {len(example) + 16}\n")
            offset += len(example) + 16
    with open(path + ".idx.tmp", "w") as f:
        f.writelines(index)
    os.replace(path + ".idx.tmp", path + ".idx")
    os.replace(path + ".tmp", path)


def _write_webdataset(path: str, items: list[tuple[int, str, int]]) -> None:
    with tarfile.open(path + ".tmp", "w", format=tarfile.USTAR_FORMAT) as tar:
        for number, file, label in items:
            key = f"{number:08d}"
            tar.add(file, arcname=f"{key}.jpg")
            text = f"{label}".encode()
            member = tarfile.TarInfo(f"{key}.cls")
            member.size = len(text)
            tar.addfile(member, _Bytes(text))
    os.replace(path + ".tmp", path)


class _Bytes:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, size=-1):
        data, self.data = (self.data, b"") if size < 0 else (self.data[:size], self.data[size:])
        return data


def _write(fmt: str, path: str, items, synsets) -> int:
    if fmt == "recordio":
        _write_recordio(path, items)
    elif fmt == "tfrecord":
        _write_tfrecord(path, items, synsets)
    else:
        _write_webdataset(path, items)
    return len(items)


def _tasks(fmt: str, out: str, split: str, split_names, items, shards: int) -> list[tuple]:
    """(output path, items) of each shard of a split; RecordIO's parts are joined after."""
    _, tf_name, wds_name = split_names
    count = max(1, min(shards, len(items)))
    bounds = [(i * len(items) // count, (i + 1) * len(items) // count) for i in range(count)]
    if fmt == "recordio":
        paths = [os.path.join(out, ".pack", f"{split}-{i:05d}.rec") for i in range(count)]
    elif fmt == "tfrecord":
        paths = [os.path.join(out, f"{tf_name}-{i:05d}-of-{count:05d}") for i in range(count)]
    else:
        paths = [os.path.join(out, wds_name, f"shard-{i:05d}.tar") for i in range(count)]
    return [(path, items[a:b]) for path, (a, b) in zip(paths, bounds, strict=True)]


def _join_recordio(out: str, split: str, parts: list[str]) -> None:
    """train.rec and train.idx from the parts, offsets moved by the parts before."""
    target = os.path.join(out, f"{split}.rec")
    with open(target + ".tmp", "wb") as rec, open(target[:-4] + ".idx.tmp", "w") as idx:
        for part in parts:
            base = rec.tell()
            with open(part + ".idx") as f:
                for line in f:
                    number, offset = line.split("\t")
                    idx.write(f"{number}\t{base + int(offset)}\n")
            with open(part, "rb") as f:
                shutil.copyfileobj(f, rec, 1 << 24)
    os.replace(target[:-4] + ".idx.tmp", target[:-4] + ".idx")
    os.replace(target + ".tmp", target)


def _run(todo, fmt: str, synsets: list[str], processes: int):
    """Writes the shards `todo` ((path, items) each), in `processes` processes; yields the
    number of images of each shard written."""
    if processes <= 1 or len(todo) <= 1:
        for path, part in todo:
            yield _write(fmt, path, part, synsets)
        return
    with futures.ProcessPoolExecutor(min(processes, len(todo))) as pool:
        jobs = [pool.submit(_write, fmt, path, part, synsets) for path, part in todo]
        for job in futures.as_completed(jobs):
            yield job.result()


def _progress(text: str) -> None:
    """A progress line redrawn in place on a terminal; nothing otherwise."""
    if sys.stderr.isatty():
        print(f"\r{text}\033[K", end="" if text else "\n", file=sys.stderr, flush=True)


def pack(src: str, fmt: str, out: str, *, shards: int, processes: int, log=print) -> None:
    """Writes the record files of the folder layout at `src` (see the module docstring)."""
    splits = [(names, folders.scan_split(src, names[0])) for names in _SPLITS]
    folders.check_same_classes(splits[0][1].class_names, splits[1][1].class_names, src)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "classes.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{name}\n" for name in splits[0][1].class_names)
    for names, split in splits:
        items = [(i, file, int(label))
                 for i, (file, label) in enumerate(zip(split.files, split.labels, strict=True))]
        count = shards if names[0] == "train" or fmt == "recordio" else max(1, shards // 8)
        tasks = _tasks(fmt, out, names[0], names, items, count)
        for path, _ in tasks:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        todo = [(path, part) for path, part in tasks if not os.path.exists(path)]
        done = len(items) - sum(len(part) for _, part in todo)
        if done:
            log(f"{names[0]}: {len(tasks) - len(todo)} of {len(tasks)} shards already there")
        for written in _run(todo, fmt, split.class_names, processes):
            done += written
            _progress(f"{names[0]}: {done}/{len(items)} images")
        _progress("")
        if fmt == "recordio":
            _join_recordio(out, names[0], [path for path, _ in tasks])
            shutil.rmtree(os.path.join(out, ".pack"))
        log(f"{names[0]}: {len(items)} images in {fmt} under {out}")


def main(argv=None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="folder layout: SRC/train/<class>/..., "
                        "SRC/val/<class>/...")
    parser.add_argument("--format", required=True, choices=records.FORMATS[1:])
    parser.add_argument("--out", required=True, help="data.root to write")
    parser.add_argument("--shards", type=int, default=0,
                        help="training shards (validation: a 1/8 of them); default: 1024 for "
                             "tfrecord (as TF-slim), 1 per 1,000 images for webdataset; "
                             "recordio: parts written in parallel, then joined into one file")
    parser.add_argument("--processes", type=int, default=0,
                        help="writer processes (default: one per usable core)")
    return exit_code(_pack_command, parser.parse_args(argv))


def _pack_command(args) -> None:
    if os.path.abspath(args.out) == os.path.abspath(args.src):
        raise ConfigError(f"--out '{args.out}' is --src: write the records elsewhere")
    shards = args.shards or {"tfrecord": 1024, "recordio": 4 * usable_cores()}.get(
        args.format, 0)
    if not shards:
        shards = max(1, len(folders.scan_split(args.src, "train")) // 1000)
    pack(args.src, args.format, args.out, shards=shards,
         processes=args.processes or usable_cores())


if __name__ == "__main__":
    sys.exit(main())
