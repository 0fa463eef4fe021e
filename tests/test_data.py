"""Data: folder scanning, DALI pipelines on the CPU (1 and 8 devices) and the demo data set."""

import collections
import os
import re
import sys

from conftest import run
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
from PIL import Image
import pytest

from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax.data import dali, demo, source
from resnet_jax.data.folders import Split, check_num_classes, scan_split
from resnet_jax.errors import ConfigError

NUM_CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, IMAGE_SIZE = 3, 7, 5, 40


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny demo tree: 3 classes, 21 train and 15 val images of 40x40."""
    path = str(tmp_path_factory.mktemp("demo"))
    return demo.make_demo_dataset(path, num_classes=NUM_CLASSES,
                                  train_per_class=TRAIN_PER_CLASS,
                                  val_per_class=VAL_PER_CLASS, image_size=IMAGE_SIZE)


def mesh_of(num_devices):
    """A one-axis 'data' mesh over the first `num_devices` (simulated) CPU devices."""
    assert jax.device_count() >= num_devices, "run with --xla_force_host_platform_device_count=8"
    return jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("data",))


def train(split, mesh, *, batch=8, size=32, dtype=np.float32, seed=0):
    return dali.train_iterator(split, global_batch_size=batch, image_size=size, image_dtype=dtype,
                               mesh=mesh, seed=seed, backend="dali_cpu", num_threads=2)


def evaluate(split, mesh, *, batch=8, resize=36, size=32, dtype=np.float32):
    return dali.eval_iterator(split, global_batch_size=batch, resize_size=resize,
                              image_size=size, image_dtype=dtype, mesh=mesh,
                              backend="dali_cpu", num_threads=2)


def masked_labels(batches):
    """Labels of the rows whose mask is True, in batch order."""
    labels = []
    for batch in batches:
        labels.extend(np.asarray(batch["labels"])[np.asarray(batch["mask"])].tolist())
    return labels


# --- folders ---------------------------------------------------------------------------------


def test_scan_split_demo_tree(root):
    train_split, val_split = scan_split(root, "train"), scan_split(root, "val")
    assert train_split.class_names == demo.class_names(NUM_CLASSES)
    assert val_split.class_names == train_split.class_names
    assert len(train_split) == NUM_CLASSES * TRAIN_PER_CLASS
    assert len(val_split) == NUM_CLASSES * VAL_PER_CLASS
    assert val_split.labels.dtype == np.int32
    np.testing.assert_array_equal(val_split.labels,
                                  np.repeat(np.arange(NUM_CLASSES), VAL_PER_CLASS))
    for path, label in zip(val_split.files, val_split.labels, strict=True):
        assert os.path.basename(os.path.dirname(path)) == val_split.class_names[label]


def test_scan_split_sorting_and_extensions(tmp_path):
    for name in ["b", "a/x2.JPG", "a/x1.jpeg", "a/notes.txt", "a/._x3.JPEG", "c/y.PNG",
                 "c/z.webp", "c/w.tiff", "b/q.Bmp"]:
        path = tmp_path / "train" / name
        if "." in name:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        else:
            path.mkdir(parents=True)
    split = scan_split(str(tmp_path), "train")
    assert split.class_names == ["a", "b", "c"]
    names = [os.path.relpath(f, tmp_path / "train") for f in split.files]
    assert names == ["a/x1.jpeg", "a/x2.JPG", "b/q.Bmp", "c/w.tiff", "c/y.PNG", "c/z.webp"]
    assert split.labels.tolist() == [0, 0, 1, 2, 2, 2]


def test_scan_split_errors(tmp_path):
    def fails(path, message):
        with pytest.raises(ConfigError, match=re.escape(f"'{path}' {message}")) as error:
            scan_split(str(tmp_path if path != missing else missing), "train")
        # One line, with the layout that was expected.
        assert "\n" not in str(error.value) and "/train/<class>/<image>.JPEG" in str(error.value)

    missing = tmp_path / "nope"
    fails(missing, "does not exist")
    fails(tmp_path, "has no train/ folder")
    (tmp_path / "train").mkdir()
    fails(tmp_path / "train", "has no class folders")
    for name in "n01/a.JPEG", "n02/readme.txt":
        (tmp_path / "train" / name).parent.mkdir()
        (tmp_path / "train" / name).write_bytes(b"")
    fails(tmp_path / "train" / "n02", "has no images")


def test_check_num_classes():
    names = ["a", "b", "c"]
    check_num_classes(names, 3, "/data")
    check_num_classes(names, 1000, "/data")  # more model outputs than folders is fine
    with pytest.raises(ConfigError, match=r"'/data' has 3 class.*--config.num_classes=3"):
        check_num_classes(names, 2, "/data")


# --- DALI on the CPU -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_train_iterator_8_devices(root, dtype):
    split = scan_split(root, "train")
    mesh = mesh_of(8)
    stream = train(split, mesh, dtype=dtype)
    steps = data_lib.steps_per_epoch(len(split), 8)
    assert steps == 2
    for _ in range(3 * steps + 1):  # past several epochs
        batch = next(stream)
        images, labels = batch["images"], batch["labels"]
        assert images.shape == (8, 32, 32, 3) and images.dtype == dtype
        assert labels.shape == (8,) and labels.dtype == np.int32
        for array in images, labels:
            assert array.sharding == NamedSharding(mesh, P("data"))
            assert {s.data.shape[0] for s in array.addressable_shards} == {1}
        labels = np.asarray(labels)
        assert ((labels >= 0) & (labels < NUM_CLASSES)).all()
        pixels = np.asarray(images, np.float32)
        assert np.isfinite(pixels).all()
        assert -3 < pixels.mean() < 3 and 0.1 < pixels.std() < 3
        # The range of (0 - mean) / std .. (255 - mean) / std over the channels.
        assert pixels.min() >= -2.2 and pixels.max() <= 2.7


def test_train_iterator_1_device_and_seed(root):
    split = scan_split(root, "train")
    first = [np.asarray(next(train(split, mesh_of(1), seed=s))["images"]) for s in (3, 3, 4)]
    assert first[0].shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(first[0], first[1])  # same seed, same batch
    assert not np.array_equal(first[0], first[2])


def test_train_iterator_errors(root):
    split = scan_split(root, "train")
    with pytest.raises(ConfigError, match="21 images, fewer than one global batch of 32"):
        train(split, mesh_of(8), batch=32)
    with pytest.raises(ConfigError, match="batch size 12 is not divisible by the 8 devices"):
        train(split, mesh_of(8), batch=12)
    with pytest.raises(ConfigError, match="use float16 or float32"):
        train(split, mesh_of(1), dtype=jax.numpy.bfloat16)
    with pytest.raises(ConfigError, match="'dali_tpu' is unknown"):
        dali.train_iterator(split, global_batch_size=8, image_size=32, image_dtype=np.float32,
                            mesh=mesh_of(1), seed=0, backend="dali_tpu", num_threads=1)


def numbered(split):
    """`split` with label i for image i: the labels of a batch say which images it holds."""
    return Split(files=split.files, labels=np.arange(len(split), dtype=np.int32),
                 class_names=[str(i) for i in range(len(split))])


def test_train_pipelines_are_built_once_and_each_epoch_is_a_new_order(root, monkeypatch):
    split = numbered(scan_split(root, "train"))  # 21 images: 2 steps of 8 per epoch
    built = []
    define = dali._train_pipeline
    monkeypatch.setattr(dali, "_train_pipeline", lambda *a, **k: built.append(1) or define(*a, **k))
    steps = data_lib.steps_per_epoch(len(split), 8)
    stream = train(split, mesh_of(8))
    epochs = [np.concatenate([np.asarray(next(stream)["labels"]) for _ in range(steps)])
              for _ in range(3)]
    assert len(built) == 1  # one dali_cpu pipeline for this process, for all three epochs
    per_device = dali._train_stream(split, global_batch_size=8, image_size=32,
                                    dtype=dali._dali_dtype(np.float32), mesh=mesh_of(8), seed=0,
                                    start=0, num_threads=1, per_device=True, on_gpu=False)
    for _ in range(3 * steps + 1):
        next(per_device)
    assert len(built) == 1 + 8  # and one per device, as dali_gpu builds them
    order = dali.TrainOrder(split, global_batch_size=8, seed=0)
    for epoch, labels in enumerate(epochs):
        assert len(set(labels.tolist())) == 16  # no image twice within an epoch
        np.testing.assert_array_equal(labels, order.permutation(epoch)[:16])
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_train_batches_depend_on_seed_and_index_alone(root):
    """Per device (as on GPUs) or per process, 8 devices or 1, from batch 0 or resumed at
    batch 3 (in the second epoch): batch g is the same, pixel for pixel."""
    split = numbered(scan_split(root, "train"))
    common = dict(global_batch_size=8, image_size=32, dtype=dali._dali_dtype(np.float32),
                  seed=5, num_threads=1, on_gpu=False)

    def batches(mesh, *, per_device, start, count):
        stream = dali._train_stream(split, mesh=mesh, per_device=per_device, start=start,
                                    **common)
        return [jax.device_get(next(stream)) for _ in range(count)]

    reference = batches(mesh_of(8), per_device=False, start=0, count=5)
    per_device = batches(mesh_of(8), per_device=True, start=0, count=5)
    one_device = batches(mesh_of(1), per_device=False, start=0, count=5)
    resumed = batches(mesh_of(8), per_device=True, start=3, count=2)
    for other in per_device, one_device, resumed:
        for a, b in zip(reference[-len(other):], other, strict=True):
            np.testing.assert_array_equal(a["labels"], b["labels"])
            np.testing.assert_array_equal(a["images"], b["images"])
    shards = batches(mesh_of(8), per_device=True, start=0, count=1)[0]
    assert shards["images"].shape == (8, 32, 32, 3)


def read_through_dali(names):
    """What DALI's file reader reads for each row of `names` (a dense uint8 batch)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(names), num_threads=1, device_id=None)
    def read():
        return fn.io.file.read(fn.external_source(source=[names], batch=True,
                                                  dtype=types.UINT8))

    pipe = read()
    pipe.build()
    (out,) = pipe.run()
    return [np.asarray(out[i]).tobytes() for i in range(len(names))]


def test_padded_file_names_read_the_same_files(root, tmp_path, monkeypatch):
    """Absolute, relative and non-ASCII paths of different lengths, padded to one width."""
    source = scan_split(root, "train").files
    (tmp_path / "ä ö").mkdir()
    odd = tmp_path / "ä ö" / "x.JPEG"
    odd.write_bytes(b"not a jpeg, but bytes to read")
    monkeypatch.chdir(tmp_path)
    files = [source[0], os.path.relpath(source[1]), "ä ö/x.JPEG", str(odd), source[2]]
    names = dali.FileNames(files)
    rows = names[np.arange(len(files))]
    assert rows.shape == (len(files), names.width) and rows.dtype == np.uint8
    for row, path in zip(rows, files, strict=True):
        text = row.tobytes().decode()
        assert text.endswith(path) and text[:3] in ("///", ".//")
        assert os.path.samefile(text, path)
    expected = [open(path, "rb").read() for path in files]
    assert read_through_dali(rows) == expected
    np.testing.assert_array_equal(names[np.array([4, 0, 4])], rows[[4, 0, 4]])


def test_draws_of_some_rows_are_those_rows_of_the_batch(root):
    """A pipeline draws only its rows, the same numbers as rows of the whole batch's draw."""
    order = dali.TrainOrder(scan_split(root, "train"), global_batch_size=8, seed=4)
    whole = np.random.default_rng([4, 1, 1, 0]).random((8, order.draws_per_row), np.float32)
    np.testing.assert_array_equal(order.draws(2), whole)  # batch 2: epoch 1, step 0
    for start, stop in (0, 1), (1, 2), (3, 8), (5, 6), (7, 8):  # odd and even first numbers
        np.testing.assert_array_equal(order.draws(2, start, stop), whole[start:stop])


def test_dense_name_feed_gives_the_batches_of_a_feed_by_name(root, monkeypatch):
    """The dense padded names decode to the same batches, pixel for pixel, as a list of one
    UTF-8 array per image, with absolute and with relative paths."""
    split = numbered(scan_split(root, "train"))
    common = dict(global_batch_size=8, image_size=32, dtype=dali._dali_dtype(np.float32),
                  mesh=mesh_of(8), seed=2, start=1, num_threads=1, on_gpu=False)

    def batches(split, per_device):
        stream = dali._train_stream(split, per_device=per_device, **common)
        return [jax.device_get(next(stream)) for _ in range(3)]

    monkeypatch.chdir(os.path.dirname(root))
    relative = Split(files=[os.path.relpath(f) for f in split.files], labels=split.labels,
                     class_names=split.class_names)
    dense = batches(split, True) + batches(relative, False)
    with monkeypatch.context() as patch:
        patch.setattr(dali.FileNames, "__getitem__", lambda self, indices: [
            np.frombuffer(self.files[i].encode(), np.uint8) for i in indices])
        patch.setattr(dali.FileNames, "__init__", lambda self, files: setattr(
            self, "files", files))
        by_name = batches(split, True) + batches(relative, False)
    for a, b in zip(dense, by_name, strict=True):
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["images"], b["images"])


def test_train_stream_starts_its_pipelines_without_waiting_for_them(root, monkeypatch):
    """Building the 8 per-device pipelines asks none of them for a batch: each starts
    decoding, and the first `next` waits for all of them at once."""
    from nvidia.dali.pipeline import Pipeline

    waited = []
    outputs = Pipeline.outputs
    monkeypatch.setattr(Pipeline, "outputs", lambda self, *a: waited.append(1) or outputs(
        self, *a))
    stream = dali._train_stream(scan_split(root, "train"), global_batch_size=8, image_size=32,
                                dtype=dali._dali_dtype(np.float32), mesh=mesh_of(8), seed=0,
                                start=0, num_threads=1, per_device=True, on_gpu=False)
    assert waited == []
    next(stream)
    assert len(waited) == 8


def reference_crop(height, width, area, log_ratio, x, y):
    """NVIDIA's random-resized crop window, written out per draw: (w, h, x, y)."""
    for s, r in zip(area, np.exp(log_ratio), strict=True):
        w = int(np.floor(np.sqrt(s * height * width * r) + 0.5))
        h = int(np.floor(np.sqrt(s * height * width / r) + 0.5))
        if 0 < w <= width and 0 < h <= height:
            return w, h, x, y
    side = min(width, round(height * 4 / 3)), min(height, round(width * 4 / 3))
    return side[0], side[1], 0.5, 0.5


def test_crop_window_is_the_first_draw_that_fits():
    from nvidia.dali import fn, pipeline_def, types

    k = dali.ATTEMPTS
    rng = np.random.default_rng(0)
    shapes = np.array([[480, 640, 3], [100, 100, 3], [50, 2000, 3], [3000, 40, 3],
                       [375, 500, 3], [7, 9, 3]], np.float32)
    n = len(shapes)
    area = rng.uniform(*dali.AREA, (n, k)).astype(np.float32)
    log_ratio = rng.uniform(*np.log(dali.ASPECT), (n, k)).astype(np.float32)
    area[1, :3] = 1.0  # the first draws of the square image do not fit...
    log_ratio[1, :3] = 0.2
    area[1, 3], log_ratio[1, 3] = 0.5, 0.1  # ...the fourth does
    x, y = rng.uniform(size=(2, n)).astype(np.float32)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def windows():
        inputs = [fn.external_source(source=[v], batch=True, dtype=types.FLOAT)
                  for v in (shapes, area, log_ratio, x, y)]
        return dali.crop_window(*inputs)

    pipe = windows()
    pipe.build()
    got = np.stack([np.concatenate([np.asarray(t).ravel() for t in out]) for out in pipe.run()],
                   axis=1)
    for i, (h, w, _) in enumerate(shapes):
        expected = reference_crop(h, w, area[i], log_ratio[i], x[i], y[i])
        np.testing.assert_allclose(got[i], expected, rtol=1e-6, err_msg=str(shapes[i]))
    assert tuple(got[1, :2]) == reference_crop(100, 100, area[1, 3:], log_ratio[1, 3:], 0, 0)[:2]
    # The two elongated images cannot hold a window in range: centered fallback windows.
    assert tuple(got[2]) == (67, 50, 0.5, 0.5) and tuple(got[3]) == (40, 53, 0.5, 0.5)


def test_mxnet_augmentation_switches(root):
    """crop_attempts=10 and an antialiased resize (NVIDIA's MXNet pipeline) run, and differ."""
    split = scan_split(root, "train")
    common = dict(global_batch_size=8, image_size=32, image_dtype=np.float32, mesh=mesh_of(1),
                  seed=0, backend="dali_cpu", num_threads=1)
    pytorch = np.asarray(next(dali.train_iterator(split, **common))["images"])
    mxnet = np.asarray(next(dali.train_iterator(split, crop_attempts=10, antialias=True,
                                                **common))["images"])
    assert pytorch.shape == mxnet.shape == (8, 32, 32, 3)
    assert not np.array_equal(pytorch, mxnet)


def test_normalization_is_the_configured_mean_and_std(root):
    """The same pixels come out as (x - mean) / std for whichever mean and std are asked for
    (MXNet's recipe has its own), in training and evaluation alike."""
    split = scan_split(root, "train")
    mxnet = ((123.68, 116.779, 103.939), (58.393, 57.12, 57.375))
    common = dict(global_batch_size=8, image_size=32, image_dtype=np.float32, mesh=mesh_of(1),
                  seed=0, backend="dali_cpu", num_threads=1)
    default = np.asarray(next(dali.train_iterator(split, **common))["images"])
    other = np.asarray(next(dali.train_iterator(split, normalize=mxnet, **common))["images"])
    np.testing.assert_allclose(other * mxnet[1] + np.array(mxnet[0]),
                               default * np.array(dali.NORMALIZE[1]) + np.array(dali.NORMALIZE[0]),
                               atol=1e-3)
    assert not np.allclose(default, other, atol=1e-3)
    files = split.files[:3]
    default = dali.preprocess_files(files, resize_size=36, image_size=32, image_dtype=np.float32)
    other = dali.preprocess_files(files, resize_size=36, image_size=32, image_dtype=np.float32,
                                  normalize=mxnet)
    np.testing.assert_allclose(other * mxnet[1] + np.array(mxnet[0]),
                               default * np.array(dali.NORMALIZE[1]) + np.array(dali.NORMALIZE[0]),
                               atol=1e-3)


@pytest.mark.parametrize("num_devices", [8, 1])
def test_eval_iterator_counts_each_image_once(root, num_devices):
    split = scan_split(root, "val")  # 15 images: not a multiple of the batch of 8
    mesh = mesh_of(num_devices)
    data = evaluate(split, mesh, dtype=np.float16)
    assert (data.num_batches, data.num_images, len(data)) == (2, 15, 2)
    for _ in range(2):  # a second pass gives the same
        batches = list(data)
        assert len(batches) == 2
        for batch in batches:
            assert batch["images"].shape == (8, 32, 32, 3)
            assert batch["images"].dtype == np.float16
            assert batch["mask"].dtype == bool and batch["labels"].dtype == np.int32
            for array in batch.values():
                assert array.sharding == NamedSharding(mesh, P("data"))
            assert np.isfinite(np.asarray(batch["images"], np.float32)).all()
        assert sum(int(np.asarray(b["mask"]).sum()) for b in batches) == len(split)
        labels = masked_labels(batches)
        assert collections.Counter(labels) == collections.Counter(split.labels.tolist())
        assert labels == split.labels.tolist()  # in file order, too


def test_eval_iterator_restarts_after_break(root):
    split = scan_split(root, "val")
    data = evaluate(split, mesh_of(8))
    for _ in data:
        break
    assert masked_labels(data) == split.labels.tolist()


def test_eval_per_device_pipelines_build_late_and_read_nothing_between_passes(root,
                                                                               monkeypatch):
    """The dali_gpu layout (a pipeline per device, here on CPU devices) shows each image once,
    as one pipeline per process does; its pipelines are built at the first pass, and between
    passes none holds a decoded batch (nothing read ahead into the next pass)."""
    from nvidia.dali.pipeline import Pipeline

    split = numbered(scan_split(root, "val"))  # 15 images: 2 batches of 8 on 8 devices
    built = []
    build = Pipeline.build
    monkeypatch.setattr(Pipeline, "build", lambda self: built.append(self) or build(self))
    per_device = dali._eval_data(split, global_batch_size=8, resize_size=36, image_size=32,
                                 dtype=dali._dali_dtype(np.float32), mesh=mesh_of(8),
                                 per_device=True, on_gpu=False, num_threads=1)
    assert built == []

    def by_image(batches):
        """Image index (its label) -> its pixels, over the rows with mask True."""
        return {int(label): image for batch in batches
                for label, image, real in zip(*(np.asarray(batch[k])
                                                for k in ("labels", "images", "mask")),
                                              strict=True) if real}

    expected = by_image(evaluate(split, mesh_of(8)))
    built.clear()
    for _ in range(2):
        batches = list(per_device)
        assert len(batches) == 2 and len(set(map(id, built))) == 8
        # DALI's count of runs scheduled and not yet taken, per pipeline.
        assert [pipe._batches_to_consume for pipe in set(built)] == [0] * 8
        for batch in batches:
            for array in batch.values():
                assert array.sharding == NamedSharding(mesh_of(8), P("data"))
        assert sorted(masked_labels(batches)) == list(range(15))  # each image once
        got = by_image(batches)
        assert got.keys() == expected.keys()
        for i in got:
            np.testing.assert_array_equal(got[i], expected[i])


def test_eval_iterator_errors(root):
    split = scan_split(root, "val")
    with pytest.raises(ConfigError, match="resize size 28 is smaller than the crop size 32"):
        evaluate(split, mesh_of(1), resize=28)
    with pytest.raises(ConfigError, match="batch size 4 is not divisible by the 8 devices"):
        evaluate(split, mesh_of(8), batch=4)


@pytest.mark.parametrize("num_images", [1, 7, 15, 16, 17, 40])
@pytest.mark.parametrize("num_shards,batch", [(1, 8), (2, 4), (3, 2), (8, 1), (16, 1)])
def test_eval_shards_cover_each_image_once(num_images, num_shards, batch):
    # The plan used for several processes (dali_cpu) or devices (dali_gpu), checked without them.
    split = Split(files=[f"{i}.JPEG" for i in range(num_images)],
                  labels=np.arange(num_images, dtype=np.int32), class_names=["x"])
    bounds = dali.shard_bounds(num_images, num_shards)
    num_batches = max(1, -(-max(e - s for s, e in bounds) // batch))
    seen = []
    for start, end in bounds:
        shard = dali._EvalShard(split, start, end, num_batches * batch)
        assert len(shard.files) == len(shard.labels) == num_batches * batch
        mask = np.concatenate([shard.mask(step, batch) for step in range(num_batches)])
        seen.extend(np.asarray(shard.labels)[mask].tolist())
        assert all(f in split.files for f in shard.files)
    assert seen == list(range(num_images))


def test_grayscale_and_cmyk_decode_to_rgb(root):
    split = scan_split(root, "train")
    modes = {f: Image.open(f).mode for f in split.files}
    odd = [i for i, f in enumerate(split.files) if modes[f] != "RGB"]
    assert sorted(modes[split.files[i]] for i in odd) == ["CMYK", "L", "L", "L"]
    # Resize to the image's own size and crop all of it: the decoded pixels themselves.
    data = evaluate(split, mesh_of(8), resize=IMAGE_SIZE, size=IMAGE_SIZE)
    images = np.concatenate([np.asarray(b["images"]) for b in data])[:len(split)]
    assert images.shape == (len(split), IMAGE_SIZE, IMAGE_SIZE, 3)
    pixels = images * np.array(dali.NORMALIZE[1]) + np.array(dali.NORMALIZE[0])
    for i in odd:
        expected = np.asarray(Image.open(split.files[i]).convert("RGB"), np.float32)
        assert np.abs(pixels[i] - expected).mean() < 3, (split.files[i], modes[split.files[i]])
    # And a training pass over every image, all of them through the random-crop decoder.
    stream = train(split, mesh_of(8))
    for _ in range(3 * data_lib.steps_per_epoch(len(split), 8)):
        assert next(stream)["images"].shape == (8, 32, 32, 3)


# --- demo data set ---------------------------------------------------------------------------


def count_images(path):
    return sum(len(files) for _, _, files in os.walk(path) if files) - 1  # minus the marker


def test_demo_cli_is_idempotent(tmp_path):
    out = str(tmp_path / "demo")
    args = ["--out", out, "--num-classes", "4", "--train-per-class", "3", "--val-per-class",
            "2", "--image-size", "24"]
    assert demo.main(args) == 0
    assert count_images(out) == 4 * (3 + 2)
    assert len(os.listdir(os.path.join(out, "train"))) == 4
    stamp = {f: os.stat(os.path.join(d, f)).st_mtime_ns
             for d, _, files in os.walk(out) for f in files}
    result = run([sys.executable, "-m", "resnet_jax.data.demo", *args])
    assert result.returncode == 0, result.output
    # Its one line, nothing else.
    assert result.stderr == "" and result.stdout.splitlines() == [
        f"{out}: demo data set already there (20 images), nothing to do"]
    assert stamp == {f: os.stat(os.path.join(d, f)).st_mtime_ns
                     for d, _, files in os.walk(out) for f in files}
    # Other parameters redraw it in place.
    assert demo.main([*args[:-1], "32"]) == 0
    assert count_images(out) == 4 * (3 + 2)
    assert Image.open(scan_split(out, "val").files[0]).size == (32, 32)


def test_demo_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is not a demo data set"):
        demo.make_demo_dataset(str(tmp_path), num_classes=2, train_per_class=2, val_per_class=1,
                               image_size=16)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_dali_threads_follow_the_cores_the_process_may_use(monkeypatch):
    """A SLURM task given 16 of a node's 128 cores sizes its pipelines from 16, not 128."""
    config = config_lib.defaults()
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert source.num_threads(config, pipelines=8) == 2
    assert source.num_threads(config, pipelines=1) == 8  # at most 8 per pipeline
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert source.num_threads(config, pipelines=16) == 1
    config.data.num_threads = 5
    assert source.num_threads(config, pipelines=16) == 5


def test_gpu_pipelines_are_well_formed(monkeypatch):
    """The dali_gpu graphs (mixed decoders and their hints) are defined here without a GPU.

    DALI checks every operator argument when a pipeline is defined, and
    only building it needs the GPU, so a misnamed or removed argument of the
    GPU path fails here rather than on the first GPU machine.
    """
    files, labels = ["a.JPEG", "b.JPEG"], [0, 1]
    order = dali.TrainOrder(Split(files=files, labels=np.array(labels, np.int32),
                                  class_names=["a", "b"]), global_batch_size=2, seed=1)
    common = dict(image_size=32, dtype=dali._dali_dtype(np.float16), on_gpu=True,
                  batch_size=2, num_threads=1, device_id=0)

    def define_both():
        dali._train_pipeline(dali._ShardFeed(order, shard=0, num_shards=1, start=0), **common)
        dali._eval_pipeline(files, labels, resize_size=36, **common)

    define_both()
    # The same definitions with an argument DALI does not know fail at once.
    monkeypatch.setitem(dali._MIXED_DECODER, "preallocate_width_hnt", 1)
    with pytest.raises(KeyError, match="preallocate_width_hnt"):
        define_both()
