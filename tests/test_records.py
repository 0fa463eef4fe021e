"""Record files (RecordIO, TFRecord, WebDataset): pack, the index, read-back by other tools,
the same batches as the folder layout, bad input, and training that resumes exactly."""

import os
import shutil
import signal
import struct

from conftest import assert_same_variables, error_line, final_variables, main_command, run, start
import jax
import numpy as np
import pytest

from resnet_jax.data import dali, folders, pack, records
from resnet_jax.errors import ConfigError

FORMATS = ["recordio"]


@pytest.fixture(scope="module")
def packed(demo_root, tmp_path_factory):
    """The session's demo tree (33 train, 15 val images) packed in each format: fmt -> root."""
    out = {}
    for fmt in FORMATS:
        root = str(tmp_path_factory.mktemp(fmt))
        pack.pack(demo_root, fmt, root, shards=3, processes=1, log=lambda _: None)
        out[fmt] = root
    return out


def mesh_of(num_devices):
    return jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("data",))


def test_recordio_is_im2rec_layout_and_dalis_reader_reads_it(demo_root, packed):
    """IRHeader (flag 0, the label as float, the image number as id) then the file's bytes,
    in dmlc's framing, and an .idx of 'id<TAB>offset': fn.readers.mxnet gets every image."""
    from nvidia.dali import fn, pipeline_def

    split = folders.scan_split(demo_root, "train")
    root = packed["recordio"]
    with open(os.path.join(root, "train.rec"), "rb") as f:
        data = f.read()
    with open(os.path.join(root, "train.idx")) as f:
        offsets = [int(line.split("\t")[1]) for line in f]
    assert len(offsets) == len(split)
    for i in (0, len(split) - 1):
        magic, lrecord = struct.unpack_from("<II", data, offsets[i])
        flag, label, number, number2 = struct.unpack_from("<IfQQ", data, offsets[i] + 8)
        image = open(split.files[i], "rb").read()
        assert (magic, lrecord >> 29, lrecord & (2**29 - 1)) == (0xCED7230A, 0, 24 + len(image))
        assert (flag, label, number, number2) == (0, float(split.labels[i]), i, 0)
        assert data[offsets[i] + 32:offsets[i] + 32 + len(image)] == image

    @pipeline_def(batch_size=len(split), num_threads=1, device_id=None)
    def read():
        return tuple(fn.readers.mxnet(path=[os.path.join(root, "train.rec")],
                                      index_path=[os.path.join(root, "train.idx")]))

    pipe = read()
    pipe.build()
    jpegs, labels = pipe.run()
    assert [np.asarray(jpegs[i]).tobytes() for i in range(len(split))] == [
        open(f, "rb").read() for f in split.files]
    np.testing.assert_array_equal(labels.as_array().ravel(), split.labels)


def test_recordio_records_cut_at_the_magic_number_read_back_whole(tmp_path):
    """MXNet's writer cuts a record whose data holds the magic number at a 4-byte boundary
    (about 8 of ImageNet's 1.28 M): DALI's reader and the byte-range reads join the parts."""
    from nvidia.dali import fn, pipeline_def

    magic = struct.pack("<I", records.MX_MAGIC)
    payloads = [b"\xff\xd8" + b"ab" + magic + b"cdef" + magic + magic + b"gh\xff\xd9",
                b"plain image bytes" * 3, magic + b"xyz"]
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    with open(rec, "wb") as f, open(idx, "w") as index:
        for i, payload in enumerate(payloads):
            index.write(f"{i}\t{f.tell()}\n")
            f.write(pack.mx_record(records.MX_IRHEADER.pack(0, float(i), i, 0) + payload))
    table = records.build_index([str(rec)], "recordio")
    assert table["label"].tolist() == [0, 1, 2]
    assert (table["size"] < 0).tolist() == [True, False, True]  # read and joined by workers
    split = records.RecordSplit("recordio", [str(rec)], str(tmp_path / "i.npy"),
                                table["label"], [])
    np.save(split.index_path, table)
    source = records.RangeSource(split, first=0, stop=3, positions=np.arange(3))
    assert [source.read(i).tobytes() for i in range(3)] == payloads

    @pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def read():
        return tuple(fn.readers.mxnet(path=[str(rec)], index_path=[str(idx)]))

    pipe = read()
    pipe.build()
    jpegs, _ = pipe.run()
    assert [np.asarray(jpegs[i]).tobytes() for i in range(3)] == payloads


@pytest.mark.parametrize("fmt", FORMATS)
def test_record_batches_are_the_folder_layouts_pixel_for_pixel(demo_root, packed, fmt):
    """Training from batch 2 (one pipeline over 8 devices, and one per device over 2) and
    two evaluation passes: the same images, labels, crops and flips as from the folders."""
    common = dict(global_batch_size=8, image_size=32, dtype=dali._dali_dtype(np.float32),
                  seed=5, start=2, num_threads=1, on_gpu=False)
    splits = {name: (folders.scan_split(demo_root, name),
                     records.open_split(packed[fmt], fmt, name, num_classes=3,
                                        first_label=1 if fmt == "tfrecord" else 0,
                                        log=lambda _: None))
              for name in ("train", "val")}

    def train(split, mesh, per_device):
        stream = dali._train_stream(split, mesh=mesh, per_device=per_device, **common)
        return [jax.device_get(next(stream)) for _ in range(3)]

    def evaluate(split):
        passes = dali.eval_iterator(split, global_batch_size=8, resize_size=36, image_size=32,
                                    image_dtype=np.float32, mesh=mesh_of(8),
                                    backend="dali_cpu", num_threads=1)
        return [jax.device_get(batch) for _ in range(2) for batch in passes]

    folder, recorded = splits["train"]
    assert recorded.labels.tolist() == folder.labels.tolist()
    pairs = [(train(folder, mesh_of(8), False), train(recorded, mesh_of(8), False)),
             (train(folder, mesh_of(2), True), train(recorded, mesh_of(2), True)),
             (evaluate(splits["val"][0]), evaluate(splits["val"][1]))]
    for want, got in pairs:
        assert len(want) == len(got)
        for a, b in zip(want, got, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_index_is_cached_beside_the_data_or_in_the_users_cache(demo_root, tmp_path,
                                                               monkeypatch):
    root = tmp_path / "rec"
    pack.pack(demo_root, "recordio", str(root), shards=1, processes=1, log=lambda _: None)
    lines = []
    first = records.open_split(str(root), "recordio", "val", num_classes=3, log=lines.append)
    again = records.open_split(str(root), "recordio", "val", num_classes=3, log=lines.append)
    assert first.index_path == again.index_path and len(lines) == 1
    assert lines[0].startswith("indexed 15 val images of 1 recordio file in ")
    assert os.path.dirname(first.index_path) == str(root / ".resnet_jax")
    # Data where nothing can be written (here: a file where the folder would go): the index
    # goes to the user's cache, said in the one line.
    shutil.rmtree(root / ".resnet_jax")
    (root / ".resnet_jax").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lines.clear()
    cached = records.open_split(str(root), "recordio", "val", num_classes=3, log=lines.append)
    assert cached.index_path.startswith(str(tmp_path / "cache" / "resnet_jax" / "index"))
    assert "read-only" in lines[0]


def _damaged(packed, tmp_path, fmt):
    root = tmp_path / fmt
    shutil.copytree(packed[fmt], root, ignore=shutil.ignore_patterns(".resnet_jax"))
    return root


def test_bad_record_files_stop_with_the_file_and_the_fix(packed, tmp_path):
    root = _damaged(packed, tmp_path, "recordio")
    rec = root / "train.rec"

    def fails(message, split="train", num_classes=3):
        with pytest.raises(ConfigError, match=message) as error:
            records.open_split(str(root), "recordio", split, num_classes=num_classes,
                               log=lambda _: None)
        assert "\n" not in str(error.value)
        return str(error.value)

    assert "--config.num_classes to at least 3" in fails(r"has label 2 \(class 2\), outside "
                                                         "num_classes=2", num_classes=2)
    data = rec.read_bytes()
    rec.write_bytes(data[:-100])
    assert str(rec) in fails("is truncated: its record at offset .* ends past the end")
    rec.write_bytes(b"\0" * 64)
    fails("is not an MXNet RecordIO file")
    rec.unlink()
    fails("has no recordio files for train: expected .*/train.rec")


@pytest.fixture(scope="module")
def folder_run(demo_root, tmp_path_factory):
    """The final variables of an uninterrupted 8-step run on the folder layout."""
    workdir = tmp_path_factory.mktemp("folder_run")
    result = run(_train_command(workdir, demo_root, "folder"))
    assert result.returncode == 0, result.output
    return final_variables(workdir)


def _train_command(workdir, root, fmt):
    return main_command(workdir, root, "--config.num_epochs=2", "--config.warmup_epochs=1",
                        "--config.log_every_steps=1", "--config.deterministic=true",
                        "--config.eval_every_epochs=2", f"--config.data.format={fmt}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_training_from_records_killed_and_resumed_ends_as_the_folder_run(
        packed, tmp_path, folder_run, fmt):
    """Killed (SIGKILL) after step 3 and run again: the parameters of an uninterrupted run on
    the same images in folders, bit for bit (so its accuracy too)."""
    workdir = tmp_path / "run"
    process = start(_train_command(workdir, packed[fmt], fmt))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "step 3/8" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "".join(lines)
    result = run(_train_command(workdir, packed[fmt], fmt))
    assert result.returncode == 0, result.output
    assert "step 8/8" in result.output
    step, variables = final_variables(workdir)
    assert step == folder_run[0] == 8
    assert_same_variables(variables, folder_run[1])


def test_bad_records_stop_the_run_with_one_line_and_leave_the_workdir(packed, tmp_path):
    root = _damaged(packed, tmp_path, "recordio")
    (root / "val.rec").write_bytes((root / "val.rec").read_bytes()[:-7])
    workdir = tmp_path / "run"
    line = error_line(run(_train_command(workdir, root, "recordio")))
    assert f"'{root / 'val.rec'}' is truncated" in line
    assert not workdir.exists()
