"""Record files (RecordIO, TFRecord, WebDataset): pack, the index, read-back by other tools,
the same batches as the folder layout, bad input, and training that resumes exactly."""

import importlib.util
import os
import shutil
import signal
import struct
import sys
import threading
import time
import types

from conftest import assert_same_variables, error_line, final_variables, main_command, run, start
import jax
import numpy as np
import pytest

from resnet_jax.data import dali, folders, pack, records
from resnet_jax.errors import ConfigError

FORMATS = ["recordio", "tfrecord", "webdataset"]


@pytest.fixture(scope="module")
def packed(demo_root, tmp_path_factory):
    """The session's demo tree (33 train, 15 val images) packed in each format: fmt -> root."""
    out = {}
    for fmt in FORMATS:
        root = str(tmp_path_factory.mktemp(fmt))
        pack.pack(demo_root, fmt, root, shards=3 if fmt != "tfrecord" else 8, processes=1,
                  log=lambda _: None)
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


def test_tfrecord_is_tf_slims_and_tensorflow_and_dali_read_it(demo_root, packed):
    """TF-slim's features (labels 1-based), read by TensorFlow's own parser and by
    fn.readers.tfrecord with the .idx files pack writes beside the shards."""
    from nvidia.dali import fn, pipeline_def, tfrecord
    import tensorflow as tf

    split = folders.scan_split(demo_root, "train")
    shards = records.split_files(packed["tfrecord"], "tfrecord", "train")
    assert [os.path.basename(p) for p in shards] == [f"train-{i:05d}-of-00008"
                                                      for i in range(8)]
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64),
                "image/class/synset": tf.io.FixedLenFeature([], tf.string)}
    parsed = [tf.io.parse_single_example(record, features)
              for record in tf.data.TFRecordDataset(shards)]
    assert [p["image/encoded"].numpy() for p in parsed] == [open(f, "rb").read()
                                                           for f in split.files]
    assert [int(p["image/class/label"]) - 1 for p in parsed] == split.labels.tolist()
    assert parsed[0]["image/class/synset"].numpy().decode() == split.class_names[0]

    @pipeline_def(batch_size=len(split), num_threads=1, device_id=None)
    def read():
        out = fn.readers.tfrecord(path=shards, index_path=[p + ".idx" for p in shards],
                                  features={"image/encoded": tfrecord.FixedLenFeature(
                                      (), tfrecord.string, ""), "image/class/label":
                                      tfrecord.FixedLenFeature([1], tfrecord.int64, -1)})
        return out["image/encoded"], out["image/class/label"]

    pipe = read()
    pipe.build()
    jpegs, labels = pipe.run()
    assert [np.asarray(jpegs[i]).tobytes() for i in range(len(split))] == [
        open(f, "rb").read() for f in split.files]
    np.testing.assert_array_equal(labels.as_array().ravel() - 1, split.labels)


def test_webdataset_is_read_by_dalis_reader(demo_root, packed):
    from nvidia.dali import fn, pipeline_def

    split = folders.scan_split(demo_root, "train")
    tars = records.split_files(packed["webdataset"], "webdataset", "train")
    assert len(tars) == 3

    @pipeline_def(batch_size=len(split), num_threads=1, device_id=None)
    def read():
        return tuple(fn.readers.webdataset(paths=tars, ext=["jpg", "cls"]))

    pipe = read()
    pipe.build()
    jpegs, labels = pipe.run()
    assert [np.asarray(jpegs[i]).tobytes() for i in range(len(split))] == [
        open(f, "rb").read() for f in split.files]
    assert [int(np.asarray(labels[i]).tobytes()) for i in range(len(split))] == \
        split.labels.tolist()


def _children_maps() -> list[str]:
    """The memory maps (/proc/PID/maps) of this process's child processes."""
    maps = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid():
                with open(f"/proc/{pid}/maps") as f:
                    maps.append(f.read())
        except (OSError, ValueError):  # gone meanwhile
            continue
    return maps


@pytest.mark.parametrize("fmt", FORMATS)
def test_record_batches_are_the_folder_layouts_pixel_for_pixel(demo_root, packed, fmt,
                                                                monkeypatch):
    """Training from batch 2 (one pipeline over 8 devices, and one per device over 2) and
    two evaluation passes: the same images, labels, crops and flips as from the folders."""
    # As under `python -m resnet_jax.main` (pytest's own main module is one that spawned
    # processes do not import): DALI's workers must not import it, nor JAX through it.
    trainer = types.ModuleType("__main__")
    trainer.__spec__ = importlib.util.find_spec("resnet_jax.main")
    monkeypatch.setitem(sys.modules, "__main__", trainer)
    common = dict(global_batch_size=8, image_size=32, dtype=dali._dali_dtype(np.float32),
                  seed=5, start=2, num_threads=1, on_gpu=False)
    splits = {name: (folders.scan_split(demo_root, name),
                     records.open_split(packed[fmt], fmt, name, num_classes=3,
                                        first_label=1 if fmt == "tfrecord" else 0,
                                        log=lambda _: None))
              for name in ("train", "val")}

    def train(split, mesh, per_device):
        stream = dali._train_stream(split, mesh=mesh, per_device=per_device, **common)
        batches = [jax.device_get(next(stream)) for _ in range(3)]
        if split is splits["train"][1] and fmt == "recordio":
            # DALI's spawned workers import worker_main as their main module, not the
            # parent's: no JAX in them.
            workers = [maps for maps in _children_maps() if "nvidia/dali" in maps]
            assert len(workers) == (2 if per_device else 1) * dali.RANGE_WORKERS
            assert not any("jaxlib" in maps for maps in workers)
        return batches

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


def _cut(path, keep=-100):
    path.write_bytes(path.read_bytes()[:keep])


def _tf_shard(path, features):
    example = pack.tf_example(features)
    path.write_bytes(struct.pack("<QI", len(example), 0) + example + b"\0" * 4)


def _tar_without_label(path):
    import tarfile

    with tarfile.open(path, "a") as tar:
        member = tarfile.TarInfo("zz.jpg")
        member.size = 3
        tar.addfile(member, __import__("io").BytesIO(b"abc"))


DAMAGE = {
    "recordio": [
        (lambda r: _cut(r / "train.rec"), "train.rec' is truncated: its record at offset"),
        (lambda r: (r / "train.rec").write_bytes(b"\0" * 64), "is not an MXNet RecordIO file"),
        (lambda r: (r / "train.idx").write_text("0\t0\n1\t999\n"),
         "train.idx' does not match .*train.rec' .*delete it or make it again"),
        (lambda r: (r / "train.rec").unlink(), "has no recordio files for train"),
    ],
    "tfrecord": [
        (lambda r: _cut(r / "train-00001-of-00008"), "train-00001-of-00008' is truncated"),
        (lambda r: _tf_shard(r / "train-00002-of-00008", {"image/raw": b"x",
                                                           "image/label": 1}),
         "without the features 'image/encoded' .*it has image/label, image/raw: write "
         "TF-slim's feature names"),
        (lambda r: (r / "train-00003-of-00008.idx").write_text("0 10\n"),
         "train-00003-of-00008.idx' does not match"),
        (lambda r: (r / "train-00004-of-00008").write_bytes(b""),
         "train-00004-of-00008' has no images"),
        (lambda r: _tf_shard(r / "train-00005-of-00008", {"image/encoded": b"x",
                                                           "image/class/label": 0}),
         r"has label 0 \(class -1\), outside num_classes=3 \(labels are read as file label "
         r"- 1: --config.data.tfrecord_first_label=0 for 0-based files\)"),
    ],
    "webdataset": [
        (lambda r: _tar_without_label(r / "train" / "shard-00001.tar"),
         "shard-00001.tar' has 'zz.jpg' without its label 'zz.cls'"),
        (lambda r: _cut(r / "train" / "shard-00002.tar", 700), "shard-00002.tar' is "),
        (lambda r: __import__("tarfile").open(r / "train" / "shard-00000.tar", "w").close(),
         "shard-00000.tar' has no images"),
    ],
}


@pytest.mark.parametrize("fmt,case", [(f, i) for f in FORMATS for i in range(len(DAMAGE[f]))])
def test_bad_record_files_stop_with_the_file_and_the_fix(packed, tmp_path, fmt, case):
    root = _damaged(packed, tmp_path, fmt)
    for name in os.listdir(root):  # DALI's .idx files stay only where a case damages them
        if name.endswith(".idx") and fmt == "tfrecord":
            os.unlink(root / name)
    damage, message = DAMAGE[fmt][case]
    damage(root)
    with pytest.raises(ConfigError, match=message) as error:
        records.open_split(str(root), fmt, "train", num_classes=3,
                           first_label=1 if fmt == "tfrecord" else 0, log=lambda _: None)
    assert "\n" not in str(error.value)


def test_labels_beyond_num_classes_stop_with_the_fix(packed):
    with pytest.raises(ConfigError, match=r"has label 2 \(class 2\), outside num_classes=2: "
                       "set --config.num_classes to at least 3"):
        records.open_split(packed["webdataset"], "webdataset", "val", num_classes=2,
                           log=lambda _: None)


@pytest.fixture(scope="module")
def folder_run(demo_root, tmp_path_factory):
    """The final variables of an uninterrupted 8-step run on the folder layout."""
    workdir = tmp_path_factory.mktemp("folder_run")
    result = run(_train_command(workdir, demo_root, "folder"))
    assert result.returncode == 0, result.output
    return final_variables(workdir)


def _train_command(workdir, root, fmt, *overrides):
    return main_command(workdir, root, "--config.num_epochs=2", "--config.warmup_epochs=1",
                        "--config.log_every_steps=1", "--config.deterministic=true",
                        "--config.eval_every_epochs=2", f"--config.data.format={fmt}",
                        *overrides)


@pytest.mark.parametrize("fmt", FORMATS)
def test_training_from_records_killed_and_resumed_ends_as_the_folder_run(
        packed, tmp_path, folder_run, fmt):
    """Killed (SIGKILL) in the second epoch, once step 4's checkpoint is committed, and run
    again: the parameters of an uninterrupted run on the same
    images in folders, bit for bit (so its accuracy too)."""
    workdir = tmp_path / "run"
    process = start(_train_command(workdir, packed[fmt], fmt, "--config.eval_every_epochs=1"))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "eval epoch 1:" in line:
            break
    # Killed as soon as step 4's checkpoint is committed (Orbax renames its folder to '4'),
    # before the next one can be: the run is somewhere in its second epoch.
    deadline = time.monotonic() + 60
    while not (workdir / "checkpoints" / "4").is_dir() and time.monotonic() < deadline:
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    # Its output ends with it: DALI's worker processes, which hold it too, die with the run.
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "DALI's workers outlived the killed run"
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "".join(lines)
    result = run(_train_command(workdir, packed[fmt], fmt, "--config.eval_every_epochs=1"))
    assert result.returncode == 0, result.output
    assert "at step 4 " in result.output and "step 8/8" in result.output, result.output
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


def test_gpu_pipelines_over_record_files_are_well_formed(packed):
    """The dali_gpu graphs over record files (workers reading byte ranges, then the mixed
    decoder) are defined here without a GPU; only building them needs one."""
    split = records.open_split(packed["recordio"], "recordio", "val", num_classes=3,
                               log=lambda _: None)
    order = dali.TrainOrder(split, global_batch_size=4, seed=1)
    common = dict(image_size=32, dtype=dali._dali_dtype(np.float16), on_gpu=True,
                  batch_size=4, num_threads=1, device_id=0, **dali.RANGE_PIPELINE)
    feed = dali._ShardFeed(order, shard=0, num_shards=1, start=0)
    assert feed.types == [dali.types.INT32, dali.types.FLOAT]  # no names: byte ranges
    dali._train_pipeline(feed, **common)
    shard = dali._EvalShard(split, 0, len(split), 16, 4)
    dali._eval_pipeline(shard.files, shard.labels, resize_size=36, **common)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unreadable_images_in_records_stop_the_run_or_are_skipped(demo_root, tmp_path, fmt):
    """data.skip_bad_images as for folders: a truncated JPEG inside a record stops the run
    with where it is, or is left out (and the rest trains)."""
    src = tmp_path / "src"
    shutil.copytree(demo_root, src)
    victim = folders.scan_split(str(src), "train").files[4]
    with open(victim, "rb") as f:
        data = f.read()
    with open(victim, "wb") as f:
        f.write(data[:len(data) // 2])
    root = tmp_path / fmt
    pack.pack(str(src), fmt, str(root), shards=2, processes=1, log=lambda _: None)
    options = dict(num_classes=3, first_label=1 if fmt == "tfrecord" else 0)
    with pytest.raises(ConfigError, match=r"image 4 of the index, in '.*' at byte \d+ is "
                       r"unreadable: truncated JPEG .*skip_bad_images=true"):
        records.open_split(str(root), fmt, "train", bad_images="error", log=lambda _: None,
                           **options)
    lines = []
    split = records.open_split(str(root), fmt, "train", bad_images="skip", log=lines.append,
                               **options)
    assert len(split) == 32 and lines[-1].startswith("skipped 1 unreadable image: first image 4")
    stream = dali._train_stream(split, global_batch_size=8, image_size=32,
                                dtype=dali._dali_dtype(np.float32), mesh=mesh_of(1), seed=0,
                                start=0, num_threads=1, per_device=False, on_gpu=False)
    for _ in range(5):
        assert np.isfinite(np.asarray(next(stream)["images"])).all()
