"""The data source a config names (config.data.*), checked against the config.

`open_data` is the one place where the trainer, the evaluation and the
benchmark get their batches: synthetic, or DALI pipelines over data.root in
the layout data.format names (the folder tree, or RecordIO, TFRecord or
WebDataset record files, see records.py).
"""

from collections.abc import Callable, Iterator
import dataclasses
import os

from absl import logging
import jax

from resnet_jax import precision
from resnet_jax.data import folders, records, synthetic
from resnet_jax.errors import ConfigError


@dataclasses.dataclass
class Data:
    """What the loop needs from a data source."""

    num_train_images: int
    class_names: list[str]
    # First batch index (steps already trained) -> the endless stream of sharded batches.
    train: Callable[[int], Iterator[dict]]
    eval: object | None  # one pass per iteration, with a 'mask'; None: no evaluation


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM task's own), not the node's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 2


def num_threads(config, pipelines: int) -> int:
    """DALI CPU threads per pipeline: data.num_threads, else the usable cores per pipeline, <= 8."""
    return config.data.num_threads or max(1, min(8, usable_cores() // pipelines))


def _log(message: str) -> None:
    if jax.process_index() == 0:
        logging.info("%s", message)


def _split(config, split: str, bad_images: str):
    """One split of data.root in the layout of data.format (labels checked against
    num_classes for record files, whose classes are the labels themselves)."""
    if config.data.format == "folder":
        return folders.scan_split(config.data.root, split, bad_images=bad_images)
    first_label = config.data.tfrecord_first_label if config.data.format == "tfrecord" else 0
    return records.open_split(config.data.root, config.data.format, split,
                              num_classes=config.num_classes, first_label=first_label,
                              bad_images=bad_images, log=_log)


def open_data(config, mesh, *, train_batch: int, eval_batch: int, with_train: bool = True,
              with_eval: bool = True) -> Data:
    """The data source that config.data.backend names, checked against the config.

    `with_train=False` reads val/ alone (evaluation); `with_eval=False` leaves
    val/ unread (benchmarks).
    """
    image_dtype = precision.image_dtype(config.precision)
    if config.data.backend == "synthetic":
        return Data(
            num_train_images=config.data.synthetic_train_images,
            class_names=[],
            train=lambda start: synthetic.train_iterator(
                global_batch_size=train_batch, image_size=config.image_size,
                image_dtype=image_dtype, num_classes=config.num_classes, mesh=mesh,
                seed=config.seed),
            eval=None,
        )
    if config.data.backend == "dali_gpu" and jax.devices()[0].platform != "gpu":
        raise ConfigError(
            f"data.backend 'dali_gpu' needs GPUs, but JAX sees {jax.devices()[0].platform} "
            "devices: use --config.data.backend=dali_cpu (or install jax[cuda12])"
        )
    # Here, not above: DALI loads only for its back-ends, so that synthetic data runs on a
    # machine without DALI (ready-made GPU containers).
    from resnet_jax.data import dali

    pipelines = jax.local_device_count() if config.data.backend == "dali_gpu" else 1
    threads = num_threads(config, pipelines)
    # Unreadable image files stop the run with their name, or are left out and counted.
    bad_images = "skip" if config.data.skip_bad_images else "error"
    val = _split(config, "val", bad_images) if with_eval else None
    train = _split(config, "train", bad_images) if with_train else val
    if config.data.format == "folder":
        folders.check_num_classes(train.class_names, config.num_classes, config.data.root)
        if val is not None:
            folders.check_same_classes(train.class_names, val.class_names, config.data.root)
    normalize = (tuple(config.mean_rgb), tuple(config.std_rgb))
    return Data(
        num_train_images=len(train),
        class_names=list(train.class_names),
        train=lambda start: dali.train_iterator(
            train, global_batch_size=train_batch, image_size=config.image_size,
            image_dtype=image_dtype, mesh=mesh, seed=config.seed, backend=config.data.backend,
            num_threads=threads, start=start, crop_attempts=config.crop_attempts,
            antialias=config.train_antialias, normalize=normalize),
        eval=None if val is None else dali.eval_iterator(
            val, global_batch_size=eval_batch, resize_size=config.eval_resize_size,
            antialias=config.eval_antialias, normalize=normalize,
            image_size=config.eval_image_size, image_dtype=image_dtype, mesh=mesh,
            backend=config.data.backend, num_threads=threads),
    )
