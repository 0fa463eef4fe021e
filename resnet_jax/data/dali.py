"""ImageNet input pipelines in DALI, as in NVIDIA's ResNet50 recipe, yielding sharded jax.Arrays.

Two back-ends:

* 'dali_gpu': one DALI pipeline per local GPU (decoding on the GPU with the
  'mixed' decoder), its output an array on that GPU; the shards make one
  global array (`jax.make_array_from_single_device_arrays`).
* 'dali_cpu': one CPU pipeline per process; its batch is split over the
  process's devices by `jax.make_array_from_process_local_data`.

Training pipelines are built once per run and fed by Python (`TrainOrder`):
which files, crop windows and flips each batch gets, drawn from the seed and
the batch's index, so that a resumed run reads on from its step.

Batches are dicts of jax.Arrays whose leading (batch) axis is sharded over the
mesh axis 'data': 'images' (B, size, size, 3), normalized, and 'labels' int32
(B,); evaluation batches add 'mask' bool (B,), False on padding.
"""

from collections.abc import Iterator
import concurrent.futures
import contextlib
import importlib.util
import itertools
import math
import sys
import types as pytypes

import jax
from jax.sharding import Mesh
import numpy as np
from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath

from resnet_jax.data import BACKENDS as ALL_BACKENDS
from resnet_jax.data import MEAN_RGB, STD_RGB, records, steps_per_epoch
from resnet_jax.data.folders import Split
from resnet_jax.data.records import RecordSplit
from resnet_jax.errors import ConfigError
from resnet_jax.parallel import AXIS, batch_sharded

BACKENDS = tuple(b for b in ALL_BACKENDS if b.startswith("dali_"))

# The input normalization, (mean, std) per RGB channel on the 0..255 scale: ImageNet's
# statistics unless the recipe (config.mean_rgb / std_rgb) or a checkpoint says otherwise.
NORMALIZE = (MEAN_RGB, STD_RGB)

# NVIDIA's values for the mixed decoder (DALI's ResNet50 examples): buffers big
# enough for ImageNet's largest JPEGs, so that nvJPEG does not reallocate during
# the first epoch, and the hardware JPEG decoder of A100/H100 (NVJPG) sized
# ahead for the largest image (5980 x 6430). Only the 'mixed' decoder takes them.
_MIXED_DECODER = dict(device_memory_padding=211025920, host_memory_padding=140544512,
                      preallocate_width_hint=5980, preallocate_height_hint=6430)

READER = "Reader"  # the evaluation's file reader, by name


def _dali_dtype(image_dtype):
    dtype = np.dtype(image_dtype)
    if dtype == np.float16:
        return types.FLOAT16
    if dtype == np.float32:
        return types.FLOAT
    raise ConfigError(f"image dtype {dtype} is not produced by DALI: use float16 or float32 "
                      "(and cast to bfloat16 on the device)")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"data backend '{backend}' is unknown: use one of {', '.join(BACKENDS)}")


def _check_mesh(mesh: Mesh, backend: str) -> None:
    if AXIS not in mesh.axis_names:
        raise ConfigError(f"the mesh has axes {mesh.axis_names}, none named '{AXIS}': "
                          f"build it with a '{AXIS}' axis for the batch")
    if backend == "dali_gpu" and mesh.shape[AXIS] != mesh.size:
        # DALI's iterator sizes the global array as (devices x shard), i.e. one batch shard
        # per device; with other mesh axes the shards would have to be replicated.
        raise ConfigError(f"data backend dali_gpu needs a mesh with the one axis '{AXIS}', "
                          f"got {dict(mesh.shape)}: use data.backend=dali_cpu or a 1-axis mesh")


def _shard_batch(global_batch_size: int, num_shards: int, what: str) -> int:
    if global_batch_size <= 0 or global_batch_size % num_shards:
        raise ConfigError(f"global batch size {global_batch_size} is not divisible by the "
                          f"{num_shards} {what}: set the batch size to a multiple of {num_shards}")
    return global_batch_size // num_shards


def _check_batch(global_batch_size: int, mesh: Mesh) -> None:
    _shard_batch(global_batch_size, mesh.shape[AXIS], f"devices of the mesh axis '{AXIS}'")
    _shard_batch(global_batch_size, jax.process_count(), "processes")


def _local_devices(mesh: Mesh):
    """(position in the mesh, device) for this process's devices, in mesh order."""
    here = jax.process_index()
    return [(i, d) for i, d in enumerate(mesh.devices.flat) if d.process_index == here]


def _labels_out(labels, on_gpu: bool):
    # The reader gives each label as a 1-element tensor; the model wants a scalar per image.
    labels = fn.squeeze(labels, axes=[0])
    return labels.gpu() if on_gpu else labels


# NVIDIA's random-resized crop (DALI's image_random_crop in NVIDIA's pipelines): a window
# of U(8%, 100%) of the image's area and an aspect ratio drawn log-uniformly from [3/4, 4/3],
# placed uniformly; up to ATTEMPTS draws for one that fits (NVIDIA's PyTorch pipeline asks
# for 100, its MXNet one keeps DALI's default, 10), else the whole image, cut to the
# nearest aspect ratio in range and centered.
AREA = (0.08, 1.0)
ASPECT = (3.0 / 4.0, 4.0 / 3.0)
ATTEMPTS = 100


class FileNames:
    """The paths of a file list as one dense (rows, width) uint8 array per batch.

    A list of one small array per image costs DALI's external source (and the
    Python thread feeding it) several microseconds per image; rows gathered
    from one table of all paths cost a few microseconds per batch. Every row
    names the same file as its path: the path is padded on the left to the
    common width with slashes, which POSIX reads as one when there are more
    than two of them ('///data/x.JPEG'), and a relative path gets './' and
    slashes ('.///data/x.JPEG'). The table is built once, about 0.5 s and
    (longest path + 3) bytes per file for ImageNet's 1.28 M files.
    """

    _CHUNK = 1 << 16  # rows built at a time (temporary memory)

    def __init__(self, files: list[str]):
        # One pass in C over all names; NUL cannot occur in a path, so it separates them.
        text = np.frombuffer("\0".join(files).encode(), np.uint8)
        ends = np.append(np.flatnonzero(text == 0), len(text))
        lengths = np.diff(ends, prepend=-1) - 1
        # At least three characters of padding: '///' (exactly two leading slashes may
        # mean something else to POSIX) or './/'.
        self.width = int(lengths.max(initial=0)) + 3
        # Row i: the `width` bytes that end where path i ends, read from a view that
        # slides over the text (shifted by `width`, so that it starts in padding).
        windows = np.lib.stride_tricks.sliding_window_view(
            np.concatenate([np.full(self.width, ord("/"), np.uint8), text]), self.width)
        columns = np.arange(self.width)
        self.table = np.empty((len(files), self.width), np.uint8)
        for first in range(0, len(files), self._CHUNK):
            rows = slice(first, first + self._CHUNK)
            chunk = windows[ends[rows]]
            chunk[columns[None, :] < self.width - lengths[rows, None]] = ord("/")
            self.table[rows] = chunk
        first_byte = text[np.minimum(ends - lengths, len(text) - 1)]
        self.table[first_byte != ord("/"), 0] = ord(".")

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        """The padded paths of files `indices`: (len(indices), width) uint8."""
        return np.take(self.table, indices, axis=0)


class TrainOrder:
    """What each row of each training batch is: image, crop draws and flip, from the seed alone.

    Batch g (counted from the start of training, 0-based) is step j = g mod S
    of epoch e = g // S, S = steps_per_epoch: its B rows are entries
    [j*B, (j+1)*B) of the epoch's permutation of the split, drawn from
    (seed, e), and its random numbers are drawn from (seed, e, j): row r's
    are numbers [r*W, (r+1)*W) of that stream, W = 2*attempts + 3. A
    pipeline that feeds rows [r0, r1) of every batch starting at any g
    therefore gives what it would have given at g in an uninterrupted run,
    and the global batch is the same whatever the number of pipelines,
    devices or processes; each draws only its own rows.
    """

    def __init__(self, split: Split, *, global_batch_size: int, seed: int,
                 attempts: int = ATTEMPTS):
        self.split = split
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.attempts = attempts
        self.steps_per_epoch = steps_per_epoch(len(split), global_batch_size)
        self._permutation = (None, None)
        # Record files (RecordSplit): no names; DALI's workers read each image's byte range.
        self._names = FileNames(split.files) if isinstance(split, Split) else None
        self._labels = np.asarray(split.labels, np.int32)
        # The draws of a pipeline's next batch, made meanwhile by a helper thread: numpy
        # fills them without holding the GIL, so the thread driving the GPUs goes on.
        self._helper = concurrent.futures.ThreadPoolExecutor(1, "train-draws")
        self._next_draws = {}  # (index, start, stop) -> Future

    @property
    def draws_per_row(self) -> int:
        """W: area and aspect ratio of each attempt, window x and y, flip."""
        return 2 * self.attempts + 3

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the split's images in `epoch`: the same in every process."""
        if self._permutation[0] != epoch:
            self._permutation = (epoch, records.epoch_permutation(self.seed, len(self.split),
                                                                  epoch))
        return self._permutation[1]

    def draws(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Uniform [0, 1) float32 numbers for rows [start, stop) of batch `index`: (rows, W).

        Rows [start, stop) of `rng.random((B, W), np.float32)` for the batch's
        generator, drawn without the rows before: float32 draws take 32 bits
        each, two per 64-bit output of PCG64, which `advance` skips.
        """
        stop = self.global_batch_size if stop is None else stop
        epoch, step = divmod(index, self.steps_per_epoch)
        bits = np.random.PCG64([self.seed, 1, epoch, step])
        first = start * self.draws_per_row
        bits.advance(first // 2)
        rng = np.random.Generator(bits)
        if first % 2:
            rng.random(1, dtype=np.float32)
        return rng.random((stop - start, self.draws_per_row), dtype=np.float32)

    def images(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Which images rows [start, stop) of batch `index` hold (positions in the split)."""
        stop = self.global_batch_size if stop is None else stop
        epoch, step = divmod(index, self.steps_per_epoch)
        first = step * self.global_batch_size
        return self.permutation(epoch)[first + start:first + stop]

    def labels(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The labels of rows [start, stop) of batch `index`, int32."""
        return self._labels[self.images(index, start, stop)]

    def rows(self, index: int, start: int, stop: int, *, with_labels: bool = True) -> tuple:
        """Rows [start, stop) of batch `index`, as the training pipeline's inputs.

        (file names as padded UTF-8 bytes (rows, width) uint8 (see FileNames),
        labels int32 unless not `with_labels`, the uniform draws (rows, W): the
        pipeline turns them into area fractions, log aspect ratios, window
        positions and flips). Dense arrays, handed to DALI without copies.
        """
        images = self.images(index, start, stop)
        labels = (self._labels[images],) if with_labels else ()
        names = () if self._names is None else (self._names[images],)
        return *names, *labels, self._draws_ahead(index, start, stop)

    def _draws_ahead(self, index: int, start: int, stop: int) -> np.ndarray:
        """draws(index, start, stop), made while the batch before was fed (see __init__)."""
        ready = self._next_draws.pop((index, start, stop), None)
        self._next_draws[index + 1, start, stop] = self._helper.submit(
            self.draws, index + 1, start, stop)
        return self.draws(index, start, stop) if ready is None else ready.result()


class _ShardFeed:
    """The inputs of one pipeline: rows [shard*b, (shard+1)*b) of each batch, from batch `start`.

    DALI calls it once per batch, in order (ahead of use when it prefetches).
    `with_labels=False` leaves the labels out (the training stream takes them
    from the TrainOrder itself, for all its devices at once).
    """

    def __init__(self, order: TrainOrder, *, shard: int, num_shards: int, start: int,
                 with_labels: bool = True):
        batch = _shard_batch(order.global_batch_size, num_shards, "pipelines")
        self.order, self.rows, self.index = order, (shard * batch, (shard + 1) * batch), start
        self.start, self.with_labels = start, with_labels

    @property
    def by_name(self) -> bool:
        """Whether the pipeline reads files by name (the folder layout), not by byte range."""
        return isinstance(self.order.split, Split)

    @property
    def types(self) -> list:
        """DALI types of the inputs: [names,] [labels,] draws."""
        return [*([types.UINT8] if self.by_name else []),
                *([types.INT32] if self.with_labels else []), types.FLOAT]

    def range_source(self) -> records.RangeSource:
        """The byte-range reads of the same rows, for DALI's worker processes."""
        return records.RangeSource(self.order.split, first=self.rows[0], stop=self.rows[1],
                                   global_batch=self.order.global_batch_size,
                                   seed=self.order.seed, start=self.start)

    def __call__(self):
        rows = self.order.rows(self.index, *self.rows, with_labels=self.with_labels)
        self.index += 1
        return rows


def augmentation_draws(draws, attempts: int = ATTEMPTS):
    """The uniform draws of each image (W numbers, see TrainOrder) as DALI graph nodes:
    (area fractions, log aspect ratios (`attempts` each), window x, y in [0, 1), flip 0/1)."""
    low, high = np.log(np.float32(ASPECT[0])), np.log(np.float32(ASPECT[1]))
    k = attempts
    return (AREA[0] + (AREA[1] - AREA[0]) * draws[0:k], low + (high - low) * draws[k:2 * k],
            draws[2 * k], draws[2 * k + 1], fn.cast(draws[2 * k + 2] < 0.5, dtype=types.INT32))


def crop_window(shape, area, log_ratio, x, y, attempts: int = ATTEMPTS):
    """The random-resized crop window for images of `shape` (H, W, C), as DALI graph nodes.

    `area` and `log_ratio` hold `attempts` draws per image; the first draw whose
    window fits the image wins, with the window's corner at (x, y) of the free
    room; when none fits, the centered fallback (see AREA above). Returns
    (width, height, x, y) for `fn.decoders.image_crop`.
    """
    height, width = shape[0], shape[1]
    ratio = dmath.exp(log_ratio)
    widths = dmath.floor(dmath.sqrt(area * height * width * ratio) + 0.5)
    heights = dmath.floor(dmath.sqrt(area * height * width / ratio) + 0.5)
    fits = (widths <= width) & (heights <= height) & (widths > 0) & (heights > 0)
    # The first draw that fits has the highest rank; no draw fits when the best rank is 0.
    rank = fits * types.Constant(np.arange(attempts, 0, -1, dtype=np.float32))
    best = fn.reductions.max(rank)
    chosen = (rank == best) & fits
    found = best > 0
    fallback_w = dmath.min(width, dmath.floor(height * ASPECT[1] + 0.5))
    fallback_h = dmath.min(height, dmath.floor(width * ASPECT[1] + 0.5))
    return (found * fn.reductions.sum(chosen * widths) + (1 - found) * fallback_w,
            found * fn.reductions.sum(chosen * heights) + (1 - found) * fallback_h,
            found * x + (1 - found) * 0.5, found * y + (1 - found) * 0.5)


@pipeline_def
def _train_pipeline(feed, *, image_size, dtype, on_gpu, antialias=False, normalize=NORMALIZE):
    *names, draws = fn.external_source(
        source=feed, num_outputs=len(feed.types), batch=True, dtype=feed.types)
    labels = names[1:] if feed.by_name else names
    area, log_ratio, x, y, flip = augmentation_draws(draws, feed.order.attempts)
    jpegs = fn.io.file.read(names[0]) if feed.by_name else _read_ranges(feed.range_source())
    width, height, x, y = crop_window(fn.peek_image_shape(jpegs, dtype=types.FLOAT),
                                      area, log_ratio, x, y, feed.order.attempts)
    window = dict(crop_w=width, crop_h=height, crop_pos_x=x, crop_pos_y=y)
    if on_gpu:
        images = fn.decoders.image_crop(jpegs, device="mixed", output_type=types.RGB,
                                        **_MIXED_DECODER, **window)
    else:
        images = fn.decoders.image_crop(jpegs, device="cpu", output_type=types.RGB, **window)
    images = fn.resize(images, resize_x=image_size, resize_y=image_size,
                       interp_type=types.INTERP_LINEAR, antialias=antialias)
    images = fn.crop_mirror_normalize(
        images, dtype=dtype, output_layout="HWC", mean=list(normalize[0]),
        std=list(normalize[1]), mirror=flip)
    return images, *[label.gpu() if on_gpu else label for label in labels]


# DALI's worker processes per pipeline that read record files by byte range: reads, not
# decoding (DALI's threads decode), so a few keep up with a GPU. Spawned, not forked: the
# parent may have CUDA up.
RANGE_WORKERS = 2
RANGE_PIPELINE = dict(py_num_workers=RANGE_WORKERS, py_start_method="spawn")


def _read_ranges(source: records.RangeSource, num_outputs=None):
    """The encoded images (and, for evaluation, labels) that `source` reads in DALI's workers."""
    outputs = {} if num_outputs is None else dict(num_outputs=num_outputs)
    return fn.external_source(source=source, parallel=True, batch=True, batch_info=True,
                              prefetch_queue_depth=2, **outputs,
                              dtype=types.UINT8 if num_outputs is None else
                              [types.UINT8, types.INT32])


def _pipeline_options(split) -> dict:
    """Pipeline arguments a split needs: worker processes for record files."""
    return RANGE_PIPELINE if isinstance(split, RecordSplit) else {}


@pipeline_def
def _eval_pipeline(files, labels, *, resize_size, image_size, dtype, on_gpu, antialias=True,
                   normalize=NORMALIZE):
    # Each pipeline gets exactly its own (padded) file list, read once per pass in order;
    # for record files (`files` a RangeSource), the same list of images by byte range.
    if isinstance(files, records.RangeSource):
        jpegs, labels = _read_ranges(files, num_outputs=2)
    else:
        jpegs, labels = fn.readers.file(files=files, labels=labels, random_shuffle=False,
                                        pad_last_batch=True, name=READER)
    images = fn.decoders.image(jpegs, device="mixed" if on_gpu else "cpu",
                               output_type=types.RGB, **(_MIXED_DECODER if on_gpu else {}))
    images = fn.resize(images, resize_shorter=resize_size, interp_type=types.INTERP_LINEAR,
                       antialias=antialias)
    images = fn.crop_mirror_normalize(
        images, dtype=dtype, output_layout="HWC", crop=(image_size, image_size),
        mean=list(normalize[0]), std=list(normalize[1]), mirror=0)
    return images, _labels_out(labels, on_gpu)


def preprocess_files(files: list[str], *, resize_size: int, image_size: int, image_dtype,
                     on_gpu: bool = False, batch_size: int = 16, num_threads: int = 2,
                     antialias: bool = True, normalize=NORMALIZE) -> np.ndarray:
    """Images as the evaluation sees them (resize, center crop, normalize): (N, H, W, 3).

    The same DALI pipeline as `eval_iterator`, on a plain list of files (any
    paths, any number), returned as one numpy array.
    """
    if resize_size < image_size:
        raise ConfigError(f"eval resize size {resize_size} is smaller than the crop size "
                          f"{image_size}: set the resize size to at least {image_size}")
    batch = max(1, min(batch_size, len(files)))
    pipe = _eval_pipeline(list(files), [0] * len(files), resize_size=resize_size,
                          image_size=image_size, dtype=_dali_dtype(image_dtype), on_gpu=on_gpu,
                          batch_size=batch, device_id=0 if on_gpu else None,
                          num_threads=num_threads, antialias=antialias, normalize=normalize)
    pipe.build()
    out = []
    for _ in range(math.ceil(len(files) / batch)):
        images, _ = pipe.run()
        out.append((images.as_cpu() if on_gpu else images).as_array())
    return np.concatenate(out)[:len(files)]


def single_train_pipeline(split: Split, *, batch_size: int, image_size: int, image_dtype,
                          on_gpu: bool, num_threads: int, seed: int = 0,
                          crop_attempts: int = ATTEMPTS, antialias: bool = False):
    """The training pipeline over all of `split` for one device, built, endless: for another
    framework's loader (the benchmark's PyTorch reference) or for timing it alone."""
    order = TrainOrder(split, global_batch_size=batch_size, seed=seed, attempts=crop_attempts)
    feed = _ShardFeed(order, shard=0, num_shards=1, start=0)
    pipe = _train_pipeline(feed, image_size=image_size, dtype=_dali_dtype(image_dtype),
                           on_gpu=on_gpu, antialias=antialias, batch_size=batch_size,
                           device_id=0 if on_gpu else None, num_threads=num_threads)
    pipe.build()
    return pipe


def _run_cpu(pipe):
    """One batch of a CPU pipeline as numpy arrays (copies, safe after the next run)."""
    images, labels = pipe.run()
    return images.as_array(), labels.as_array()


def train_iterator(split: Split, *, global_batch_size: int, image_size: int, image_dtype,
                   mesh: Mesh, seed: int, backend: str, num_threads: int, start: int = 0,
                   crop_attempts: int = ATTEMPTS, antialias: bool = False,
                   normalize=NORMALIZE) -> Iterator[dict]:
    """The stream of augmented training batches from batch `start` on, sharded over 'data'.

    Random-resized crop (area 8%-100%, aspect 3/4-4/3, `crop_attempts` draws),
    resize to image_size (`antialias`: DALI's antialiased resize, NVIDIA's
    MXNet pipeline; its PyTorch one turns it off), random horizontal flip,
    normalization by `normalize` ((mean, std) per RGB channel, 0..255 scale):
    NVIDIA's DALI ResNet50 recipe. An
    epoch is `data.steps_per_epoch(len(split), global_batch_size)` batches,
    each epoch a new order of the images. What batch g holds depends on
    (seed, g) alone (see TrainOrder), so a run resumed at batch g (`start=g`)
    sees what an uninterrupted run sees, without decoding the batches before.

    The pipelines are built once: one per local GPU (dali_gpu) or per process
    (dali_cpu), each fed its rows of every batch by Python (file names, crop
    draws, flips) and reading, decoding and augmenting them itself, a few
    batches ahead, across epoch ends.
    """
    _check_backend(backend)
    _check_mesh(mesh, backend)
    _check_batch(global_batch_size, mesh)
    return _train_stream(split, global_batch_size=global_batch_size, image_size=image_size,
                         dtype=_dali_dtype(image_dtype), mesh=mesh, seed=seed, start=start,
                         num_threads=num_threads, per_device=backend == "dali_gpu",
                         on_gpu=backend == "dali_gpu", crop_attempts=crop_attempts,
                         antialias=antialias, normalize=normalize)


WORKER_MAIN = "resnet_jax.data.worker_main"


@contextlib.contextmanager
def _light_worker_main():
    """While DALI spawns its workers, the main module they import is WORKER_MAIN (nothing),
    not this process's (the trainer's command line and everything it imports)."""
    main = sys.modules.get("__main__")
    stand_in = pytypes.ModuleType("__main__")
    stand_in.__spec__ = importlib.util.find_spec(WORKER_MAIN)
    sys.modules["__main__"] = stand_in
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _start(pipes) -> None:
    """Builds `pipes` and starts each on its first batches, without waiting for any: their
    start-up runs side by side rather than one after another. Pipelines with worker
    processes start them here (`build`), with WORKER_MAIN as their main module."""
    with _light_worker_main():
        for pipe in pipes:
            pipe.build()
    for pipe in pipes:
        pipe.schedule_run()  # the first call fills the prefetch queue


def _images_out(pipe):
    """The next batch of a started pipeline's first output as a jax.Array on the pipeline's
    device (through DLPack, no copy), and the pipeline set on the batch after it."""
    (images, *_) = pipe.outputs()
    # DALI's default executor hands out buffers it does not reuse: no copy needed.
    array = jax.dlpack.from_dlpack(images.as_tensor())
    pipe.schedule_run()
    return array


def _train_stream(split: Split, *, global_batch_size: int, image_size: int, dtype, mesh: Mesh,
                  seed: int, start: int, num_threads: int, per_device: bool,
                  on_gpu: bool, crop_attempts: int = ATTEMPTS,
                  antialias: bool = False, normalize=NORMALIZE) -> Iterator[dict]:
    """train_iterator's pipelines: one per local device of the mesh (`per_device`, as on
    GPUs, where each decodes on its GPU), else one per process split over its devices.

    The pipelines give the images; the labels come from the TrainOrder, one
    array for all of the process's devices. The pipelines are run directly
    (schedule_run / outputs), not through DALI's iterator: the Python thread
    that drives the GPUs pays a little per pipeline and step (see
    docs/benchmarks.md, "Main-thread cost of the training feed").
    """
    order = TrainOrder(split, global_batch_size=global_batch_size, seed=seed,
                       attempts=crop_attempts)
    sharding = batch_sharded(mesh)
    if per_device:
        # A pipeline per device, fed the device's rows: its place in the mesh.
        shards = [(position, device, device.local_hardware_id if on_gpu else None)
                  for position, device in _local_devices(mesh)]
        num_shards = mesh.size
    else:
        shards = [(jax.process_index(), None, None)]
        num_shards = jax.process_count()
    batch = _shard_batch(global_batch_size, num_shards, "pipelines")
    pipes = [_train_pipeline(_ShardFeed(order, shard=shard, num_shards=num_shards, start=start,
                                        with_labels=False),
                             image_size=image_size, dtype=dtype, on_gpu=on_gpu,
                             antialias=antialias, normalize=normalize, batch_size=batch,
                             device_id=device_id, num_threads=num_threads,
                             **_pipeline_options(split))
             for shard, _, device_id in shards]
    _start(pipes)

    def batches():
        for index in itertools.count(start):
            images = [_images_out(pipe) for pipe in pipes]
            if per_device:
                if not on_gpu:  # DALI's CPU output is on the first CPU device
                    images = [jax.device_put(shard, device)
                              for shard, (_, device, _) in zip(images, shards, strict=True)]
                labels = order.labels(index)
                yield {"images": jax.make_array_from_single_device_arrays(
                           (global_batch_size, *images[0].shape[1:]), sharding, images),
                       "labels": jax.make_array_from_callback(
                           labels.shape, sharding, labels.__getitem__)}
            else:
                (shard, _, _), = shards
                labels = order.labels(index, shard * batch, (shard + 1) * batch)
                yield {"images": jax.make_array_from_process_local_data(sharding, images[0]),
                       "labels": jax.make_array_from_process_local_data(sharding, labels)}

    return batches()


def shard_bounds(num_images: int, num_shards: int) -> list[tuple[int, int]]:
    """[start, end) of each shard: shard i of S gets images [i*N//S, (i+1)*N//S)."""
    return [(i * num_images // num_shards, (i + 1) * num_images // num_shards)
            for i in range(num_shards)]


class _EvalShard:
    """One shard's padded file list and how many of its entries are real."""

    def __init__(self, split: Split | RecordSplit, start: int, end: int, padded_size: int,
                 batch: int = 1):
        # Padding repeats a real file (any will do: the mask hides it); an empty shard,
        # possible when there are fewer images than shards, borrows its neighbour's.
        pad = max(end - 1, 0)
        self.num_real = end - start
        positions = np.concatenate([np.arange(start, end),
                                    np.full(padded_size - self.num_real, pad)])
        self.labels = split.labels[positions].tolist()
        self.files = (records.RangeSource(split, first=0, stop=batch, positions=positions)
                      if isinstance(split, RecordSplit) else [split.files[i] for i in positions])

    def mask(self, step: int, batch: int) -> np.ndarray:
        """Which rows of the shard's batch number `step` are real images."""
        return np.arange(step * batch, (step + 1) * batch) < self.num_real


class EvalData:
    """One pass over the validation set per `iter()`: `num_batches` sharded batches.

    Each image is in exactly one batch row with mask True over all processes and
    devices; padding rows (mask False) fill the last batches, so that every
    process yields the same number of batches.
    """

    def __init__(self, num_batches: int, num_images: int, run_pass):
        self.num_batches = num_batches
        self.num_images = num_images
        self._run_pass = run_pass
        self._unfinished = None

    def __len__(self) -> int:
        """The number of batches in one pass."""
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        """Yields the batches of one full pass over the validation set."""
        if self._unfinished is not None:
            # A pass left early (a `break`) leaves the pipelines mid-epoch: finish it,
            # so that this pass starts at the first image.
            for _ in self._unfinished:
                pass
        self._unfinished = self._run_pass()
        # Not `yield from`: closing this generator early would also close the pass,
        # and then the loop above could not finish it.
        for batch in self._unfinished:  # noqa: UP028
            yield batch
        self._unfinished = None


def eval_iterator(split: Split, *, global_batch_size: int, resize_size: int, image_size: int,
                  image_dtype, mesh: Mesh, backend: str, num_threads: int,
                  antialias: bool = True, normalize=NORMALIZE) -> EvalData:
    """The validation set, resized (shorter side resize_size) and center-cropped to image_size.

    `antialias`: DALI's antialiased resize (as PIL's); NVIDIA's PyTorch pipeline turns it off.
    `normalize`: (mean, std) per RGB channel on the 0..255 scale.

    Returns an EvalData: iterate it for one pass of `num_batches` batches with
    'images', 'labels' and 'mask'. The images are split into one contiguous
    shard per process (dali_cpu) or device (dali_gpu), each padded to the same
    number of batches. The pipelines are built at the first pass and decode
    only during passes: between evaluations they hold no batches.
    """
    _check_backend(backend)
    _check_mesh(mesh, backend)
    _check_batch(global_batch_size, mesh)
    if resize_size < image_size:
        raise ConfigError(f"eval resize size {resize_size} is smaller than the crop size "
                          f"{image_size}: set the resize size to at least {image_size}")
    return _eval_data(split, global_batch_size=global_batch_size, resize_size=resize_size,
                      image_size=image_size, dtype=_dali_dtype(image_dtype), mesh=mesh,
                      per_device=backend == "dali_gpu", on_gpu=backend == "dali_gpu",
                      num_threads=num_threads, antialias=antialias, normalize=normalize)


def _eval_data(split: Split, *, global_batch_size: int, resize_size: int, image_size: int,
               dtype, mesh: Mesh, per_device: bool, on_gpu: bool, num_threads: int,
               antialias: bool = True, normalize=NORMALIZE) -> EvalData:
    """eval_iterator's pipelines: one per local device of the mesh (`per_device`, as on
    GPUs), else one per process split over its devices."""
    sharding = batch_sharded(mesh)
    if per_device:
        num_shards, here = mesh.size, _local_devices(mesh)
    else:
        num_shards, here = jax.process_count(), [(jax.process_index(), None)]
    batch = global_batch_size // num_shards
    bounds = shard_bounds(len(split), num_shards)
    num_batches = max(1, math.ceil(max(end - start for start, end in bounds) / batch))
    shards = [_EvalShard(split, *bounds[position], num_batches * batch, batch)
              for position, _ in here]
    # Defined now (DALI checks the arguments), built at the first pass. Each pipeline's
    # list is num_batches full batches, read in order, wrapping round to its start; a
    # pass schedules exactly its num_batches runs, so none reads ahead into the next.
    depth = min(2, num_batches)
    pipes = [_eval_pipeline(shard.files, shard.labels, on_gpu=on_gpu, batch_size=batch,
                            device_id=device.local_hardware_id if on_gpu else None,
                            prefetch_queue_depth=depth, resize_size=resize_size,
                            image_size=image_size, dtype=dtype, num_threads=num_threads,
                            antialias=antialias, normalize=normalize,
                            **_pipeline_options(split))
             for shard, (_, device) in zip(shards, here, strict=True)]
    started = []

    def assemble(arrays, *, placed: bool):
        """One global array of the shards (`placed`: already on their devices)."""
        if not per_device:
            return jax.make_array_from_process_local_data(sharding, arrays[0])
        if not placed:
            arrays = [jax.device_put(a, d) for a, (_, d) in zip(arrays, here, strict=True)]
        return jax.make_array_from_single_device_arrays(
            (global_batch_size, *arrays[0].shape[1:]), sharding, arrays)

    def run_pass():
        if not started:
            _start(pipes)  # the first run fills the prefetch queue: `depth` batches
            started.append(True)
        else:
            for pipe in pipes:
                for _ in range(depth):
                    pipe.schedule_run()
        for step in range(num_batches):
            outs = [pipe.outputs() for pipe in pipes]
            if step + depth < num_batches:
                for pipe in pipes:
                    pipe.schedule_run()
            yield {key: assemble([jax.dlpack.from_dlpack(out[i].as_tensor()) for out in outs],
                                 placed=on_gpu)
                   for i, key in enumerate(("images", "labels"))} | {
                "mask": assemble([shard.mask(step, batch) for shard in shards], placed=False)}

    return EvalData(num_batches, len(split), run_pass)
