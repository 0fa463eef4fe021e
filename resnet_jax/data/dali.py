"""ImageNet input pipelines in DALI, as in NVIDIA's ResNet50 recipe, yielding sharded jax.Arrays.

Two back-ends:

* 'dali_gpu': one DALI pipeline per local GPU (decoding on the GPU with the
  'mixed' decoder), gathered into global arrays by DALI's JAX iterator, as in
  the DALI JAX plugin's documentation.
* 'dali_cpu': one CPU pipeline per process; its batch is split over the
  process's devices by `jax.make_array_from_process_local_data`. DALI's JAX
  iterator cannot shard CPU pipelines, so this path runs the pipeline itself.

Batches are dicts of jax.Arrays whose leading (batch) axis is sharded over the
mesh axis 'data': 'images' (B, size, size, 3), normalized, and 'labels' int32
(B,); evaluation batches add 'mask' bool (B,), False on padding.
"""

from collections.abc import Iterator
import math

import jax
from jax.sharding import Mesh
import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.jax import DALIGenericIterator

from resnet_jax import config as config_lib
from resnet_jax.data import BACKENDS as ALL_BACKENDS
from resnet_jax.data.folders import Split
from resnet_jax.errors import ConfigError
from resnet_jax.parallel import AXIS, batch_sharded

BACKENDS = tuple(b for b in ALL_BACKENDS if b.startswith("dali_"))

# ImageNet channel statistics on the 0..255 scale, as NVIDIA's pipeline uses them.
MEAN = tuple(255.0 * m for m in (0.485, 0.456, 0.406))
STD = tuple(255.0 * s for s in (0.229, 0.224, 0.225))

# NVIDIA's values for the mixed decoder (DALI's ResNet50 examples): buffers big
# enough for ImageNet's largest JPEGs, so that nvJPEG does not reallocate during
# the first epoch, and the hardware JPEG decoder of A100/H100 (NVJPG) sized
# ahead for the largest image (5980 x 6430). Only the 'mixed' decoder takes them.
_MIXED_DECODER = dict(device_memory_padding=211025920, host_memory_padding=140544512,
                      preallocate_width_hint=5980, preallocate_height_hint=6430)

READER = "Reader"  # the name by which DALI iterators find the file reader


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


def _pipeline_seed(seed: int, shard: int) -> int:
    """DALI's seed for one shard's pipeline: distinct per shard, within int32."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0] % (2**31 - 1))


def _labels_out(labels, on_gpu: bool):
    # The reader gives each label as a 1-element tensor; the model wants a scalar per image.
    labels = fn.squeeze(labels, axes=[0])
    return labels.gpu() if on_gpu else labels


@pipeline_def
def _train_pipeline(files, labels, *, shard_id, num_shards, image_size, dtype, on_gpu):
    jpegs, labels = fn.readers.file(
        files=files, labels=labels, random_shuffle=False, shard_id=shard_id,
        num_shards=num_shards, name=READER)
    if on_gpu:
        images = fn.decoders.image_random_crop(
            jpegs, device="mixed", output_type=types.RGB, **_MIXED_DECODER,
            random_area=[0.08, 1.0], random_aspect_ratio=[0.75, 4.0 / 3.0], num_attempts=100)
    else:
        images = fn.decoders.image_random_crop(
            jpegs, device="cpu", output_type=types.RGB,
            random_area=[0.08, 1.0], random_aspect_ratio=[0.75, 4.0 / 3.0], num_attempts=100)
    images = fn.resize(images, resize_x=image_size, resize_y=image_size,
                       interp_type=types.INTERP_LINEAR, antialias=False)
    images = fn.crop_mirror_normalize(
        images, dtype=dtype, output_layout="HWC", mean=list(MEAN), std=list(STD),
        mirror=fn.random.coin_flip(probability=0.5))
    return images, _labels_out(labels, on_gpu)


@pipeline_def
def _eval_pipeline(files, labels, *, resize_size, image_size, dtype, on_gpu):
    # Each pipeline gets exactly its own (padded) file list, read once per pass in order.
    jpegs, labels = fn.readers.file(files=files, labels=labels, random_shuffle=False,
                                    pad_last_batch=True, name=READER)
    images = fn.decoders.image(jpegs, device="mixed" if on_gpu else "cpu",
                               output_type=types.RGB, **(_MIXED_DECODER if on_gpu else {}))
    images = fn.resize(images, resize_shorter=resize_size, interp_type=types.INTERP_LINEAR,
                       antialias=True)
    images = fn.crop_mirror_normalize(
        images, dtype=dtype, output_layout="HWC", crop=(image_size, image_size),
        mean=list(MEAN), std=list(STD), mirror=0)
    return images, _labels_out(labels, on_gpu)


def preprocess_files(files: list[str], *, resize_size: int, image_size: int, image_dtype,
                     on_gpu: bool = False, batch_size: int = 16,
                     num_threads: int = 2) -> np.ndarray:
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
                          num_threads=num_threads)
    pipe.build()
    out = []
    for _ in range(math.ceil(len(files) / batch)):
        images, _ = pipe.run()
        out.append((images.as_cpu() if on_gpu else images).as_array())
    return np.concatenate(out)[:len(files)]


def single_train_pipeline(split: Split, *, batch_size: int, image_size: int, image_dtype,
                          on_gpu: bool, num_threads: int, seed: int = 0):
    """The training pipeline over all of `split` for one device, built (no sharding, files in
    folder order): for another framework's loader, e.g. the benchmark's PyTorch reference."""
    pipe = _train_pipeline(split.files, split.labels.tolist(), shard_id=0, num_shards=1,
                           image_size=image_size, dtype=_dali_dtype(image_dtype), on_gpu=on_gpu,
                           batch_size=batch_size, device_id=0 if on_gpu else None,
                           seed=_pipeline_seed(seed, 0), num_threads=num_threads)
    pipe.build()
    return pipe


def _run_cpu(pipe):
    """One batch of a CPU pipeline as numpy arrays (copies, safe after the next run)."""
    images, labels = pipe.run()
    return images.as_array(), labels.as_array()


def train_iterator(split: Split, *, global_batch_size: int, image_size: int, image_dtype,
                   mesh: Mesh, seed: int, backend: str, num_threads: int) -> Iterator[dict]:
    """An endless stream of augmented training batches, sharded over the mesh axis 'data'.

    Random-resized crop (area 8%-100%, aspect 3/4-4/3), resize to image_size,
    random horizontal flip, normalization: NVIDIA's DALI ResNet50 recipe. Each
    process (dali_cpu) or device (dali_gpu) reads its own shard of the files in
    an order drawn from `seed`; an epoch is `config.steps_per_epoch(len(split),
    global_batch_size)` steps. The order and the random crops and flips depend
    on `seed` alone: the training loop builds one iterator per epoch with a seed
    made from (config.seed, epoch), so that a run restarted at any step sees the
    batches an uninterrupted run sees.
    """
    _check_backend(backend)
    _check_mesh(mesh, backend)
    _check_batch(global_batch_size, mesh)
    dtype = _dali_dtype(image_dtype)
    config_lib.steps_per_epoch(len(split), global_batch_size)  # at least one full batch
    # The same permutation in every process (same seed), so that the shards partition it.
    order = np.random.default_rng(seed).permutation(len(split))
    files = [split.files[i] for i in order]
    labels = split.labels[order].tolist()
    sharding = batch_sharded(mesh)
    common = dict(image_size=image_size, dtype=dtype, num_threads=num_threads)
    # Pipeline seeds differ per shard, else all shards would draw the same crops and flips.

    if backend == "dali_gpu":
        batch = _shard_batch(global_batch_size, mesh.size, "devices")
        pipelines = []
        for position, device in _local_devices(mesh):
            pipe = _train_pipeline(files, labels, shard_id=position, num_shards=mesh.size,
                                   on_gpu=True, batch_size=batch,
                                   device_id=device.local_hardware_id,
                                   seed=_pipeline_seed(seed, position), **common)
            pipelines.append(pipe)
        iterator = DALIGenericIterator(
            pipelines, ["images", "labels"], reader_name=READER, auto_reset=True,
            last_batch_policy=LastBatchPolicy.DROP, sharding=sharding)

        def gpu_batches():
            while True:
                # One DALI epoch per round (auto_reset restarts it): the stream is endless.
                yield from iterator

        return gpu_batches()

    process, num_processes = jax.process_index(), jax.process_count()
    pipe = _train_pipeline(files, labels, shard_id=process, num_shards=num_processes,
                           on_gpu=False, batch_size=global_batch_size // num_processes,
                           device_id=None, seed=_pipeline_seed(seed, process), **common)
    pipe.build()

    def cpu_batches():
        while True:
            images, labels = _run_cpu(pipe)
            yield {"images": jax.make_array_from_process_local_data(sharding, images),
                   "labels": jax.make_array_from_process_local_data(sharding, labels)}

    return cpu_batches()


def shard_bounds(num_images: int, num_shards: int) -> list[tuple[int, int]]:
    """[start, end) of each shard: shard i of S gets images [i*N//S, (i+1)*N//S)."""
    return [(i * num_images // num_shards, (i + 1) * num_images // num_shards)
            for i in range(num_shards)]


class _EvalShard:
    """One shard's padded file list and how many of its entries are real."""

    def __init__(self, split: Split, start: int, end: int, padded_size: int):
        files = split.files[start:end]
        labels = split.labels[start:end].tolist()
        # Padding repeats a real file (any will do: the mask hides it); an empty shard,
        # possible when there are fewer images than shards, borrows its neighbour's.
        pad = max(end - 1, 0)
        self.num_real = end - start
        self.files = files + [split.files[pad]] * (padded_size - self.num_real)
        self.labels = labels + [int(split.labels[pad])] * (padded_size - self.num_real)

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
                  image_dtype, mesh: Mesh, backend: str, num_threads: int) -> EvalData:
    """The validation set, resized (shorter side resize_size) and center-cropped to image_size.

    Returns an EvalData: iterate it for one pass of `num_batches` batches with
    'images', 'labels' and 'mask'. The images are split into one contiguous
    shard per process (dali_cpu) or device (dali_gpu), each padded to the same
    number of batches.
    """
    _check_backend(backend)
    _check_mesh(mesh, backend)
    _check_batch(global_batch_size, mesh)
    dtype = _dali_dtype(image_dtype)
    if resize_size < image_size:
        raise ConfigError(f"eval resize size {resize_size} is smaller than the crop size "
                          f"{image_size}: set the resize size to at least {image_size}")
    sharding = batch_sharded(mesh)
    common = dict(resize_size=resize_size, image_size=image_size, dtype=dtype,
                  num_threads=num_threads)

    if backend == "dali_gpu":
        num_shards, here = mesh.size, _local_devices(mesh)
    else:
        num_shards, here = jax.process_count(), [(jax.process_index(), None)]
    batch = global_batch_size // num_shards
    bounds = shard_bounds(len(split), num_shards)
    num_batches = max(1, math.ceil(max(end - start for start, end in bounds) / batch))
    shards = [_EvalShard(split, *bounds[position], num_batches * batch) for position, _ in here]

    if backend == "dali_gpu":
        pipelines = [
            _eval_pipeline(shard.files, shard.labels, on_gpu=True, batch_size=batch,
                           device_id=device.local_hardware_id, **common)
            for shard, (_, device) in zip(shards, here, strict=True)]
        iterator = DALIGenericIterator(
            pipelines, ["images", "labels"], reader_name=READER, auto_reset=True,
            last_batch_policy=LastBatchPolicy.FILL, sharding=sharding)

        def run_gpu_pass():
            # Every pipeline's list is num_batches full batches, so DALI's epoch ends
            # (StopIteration, then auto reset) exactly after num_batches batches.
            step = -1
            for step, out in enumerate(iterator):
                masks = [jax.device_put(shard.mask(step, batch), device)
                         for shard, (_, device) in zip(shards, here, strict=True)]
                out["mask"] = jax.make_array_from_single_device_arrays(
                    (global_batch_size,), sharding, masks)
                yield out
            assert step + 1 == num_batches, (step + 1, num_batches)

        return EvalData(num_batches, len(split), run_gpu_pass)

    (shard,) = shards
    pipe = _eval_pipeline(shard.files, shard.labels, on_gpu=False, batch_size=batch,
                          device_id=None, **common)
    pipe.build()

    def run_cpu_pass():
        for step in range(num_batches):
            images, labels = _run_cpu(pipe)
            mask = shard.mask(step, batch)
            yield {"images": jax.make_array_from_process_local_data(sharding, images),
                   "labels": jax.make_array_from_process_local_data(sharding, labels),
                   "mask": jax.make_array_from_process_local_data(sharding, mask)}

    return EvalData(num_batches, len(split), run_cpu_pass)
