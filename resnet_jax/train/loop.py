"""Training with periodic evaluation and checkpoints; evaluation of a saved checkpoint."""

from collections.abc import Callable, Iterator
import dataclasses
import functools
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
import optax

from resnet_jax import checkpoint, models, parallel, reporting
from resnet_jax import config as config_lib
from resnet_jax.errors import ConfigError, TrainingError
from resnet_jax.train import optimizer, precision
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib


@dataclasses.dataclass
class Data:
    """What the loop needs from a data source."""

    num_train_images: int
    class_names: list[str]
    train: Callable[[int], Iterator[dict]]  # seed -> endless iterator of sharded batches
    eval: object | None  # one pass per iteration, with a 'mask'; None: no evaluation


def _num_threads(config, pipelines: int) -> int:
    return config.data.num_threads or max(1, min(8, (os.cpu_count() or 2) // pipelines))


def open_data(config, mesh, *, train_batch: int, eval_batch: int, with_train: bool = True) -> Data:
    """The data source that config.data.backend names, checked against the config."""
    image_dtype = precision.image_dtype(config.precision)
    if config.data.backend == "synthetic":
        from resnet_jax.data import synthetic

        return Data(
            num_train_images=config.data.synthetic_train_images,
            class_names=[],
            train=lambda seed: synthetic.train_iterator(
                global_batch_size=train_batch, image_size=config.image_size,
                image_dtype=image_dtype, num_classes=config.num_classes, mesh=mesh, seed=seed),
            eval=None,
        )
    if config.data.backend == "dali_gpu" and jax.devices()[0].platform != "gpu":
        raise ConfigError(
            f"data.backend 'dali_gpu' needs GPUs, but JAX sees {jax.devices()[0].platform} "
            "devices: use --config.data.backend=dali_cpu (or install jax[cuda12])"
        )
    from resnet_jax.data import dali, folders

    pipelines = jax.local_device_count() if config.data.backend == "dali_gpu" else 1
    threads = _num_threads(config, pipelines)
    # Unreadable image files stop the run with their name, or are left out and counted.
    bad_images = "skip" if config.data.skip_bad_images else "error"
    val = folders.scan_split(config.data.root, "val", bad_images=bad_images)
    train = (folders.scan_split(config.data.root, "train", bad_images=bad_images)
             if with_train else val)
    folders.check_num_classes(train.class_names, config.num_classes, config.data.root)
    folders.check_same_classes(train.class_names, val.class_names, config.data.root)
    return Data(
        num_train_images=len(train),
        class_names=list(train.class_names),
        train=lambda seed: dali.train_iterator(
            train, global_batch_size=train_batch, image_size=config.image_size,
            image_dtype=image_dtype, mesh=mesh, seed=seed, backend=config.data.backend,
            num_threads=threads),
        eval=dali.eval_iterator(
            val, global_batch_size=eval_batch, resize_size=config.eval_resize_size,
            image_size=config.eval_image_size, image_dtype=image_dtype, mesh=mesh,
            backend=config.data.backend, num_threads=threads),
    )


def build_model(config, *, train: bool = True):
    """The configured model in the configured compute precision."""
    sync = config.model.sync_batch_norm and train
    return models.create(
        config.arch, num_classes=config.num_classes,
        dtype=precision.compute_dtype(config.precision),
        conv_init=config.model.conv_init, zero_init_last_bn=config.model.zero_init_last_bn,
        bn_momentum=config.model.bn_momentum, bn_epsilon=config.model.bn_epsilon,
        bn_axis_name=parallel.AXIS if sync else None,
    )


def evaluate(eval_step, params, batch_stats, eval_data) -> dict:
    """Loss, top-1 and top-5 over every evaluation image exactly once."""
    totals = None
    for batch in eval_data:
        sums = eval_step(params, batch_stats, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    return {"loss": float(totals["loss_sum"]) / count, "top1": float(totals["top1_hits"]) / count,
            "top5": float(totals["top5_hits"]) / count, "images": count}


def _check_compatible(saved: dict, config, where: str,
                      keys: tuple[str, ...] = ("arch", "num_classes")) -> None:
    """A checkpoint fits this config only with the same arch and num_classes (`keys`)."""
    for key in keys:
        if saved.get(key) != config[key]:
            raise ConfigError(
                f"{where} holds {key}={saved.get(key)!r} but the config has {key}={config[key]!r}: "
                f"set --config.{key}={saved.get(key)!r}, or use another workdir or checkpoint"
            )


def _init_from_checkpoint(config, state, sharding):
    """Fine-tuning: params and BN statistics from config.init_checkpoint, a fresh optimizer.

    The classifier (fc) is kept only when num_classes matches; otherwise the
    freshly initialised one is used.
    """
    path = config.init_checkpoint
    directory, step = checkpoint.resolve(path)
    saved = checkpoint.read_meta(directory, step)
    # Another num_classes is fine: the classifier is replaced below.
    _check_compatible(saved, config, f"init_checkpoint {path!r}", keys=("arch",))
    from resnet_jax.convert import abstract_variables

    abstract = abstract_variables(config.arch, saved["num_classes"])
    variables = checkpoint.restore_model(directory, step, abstract, sharding)
    params = variables["params"]
    kept = "all layers"
    if saved["num_classes"] != config.num_classes:
        params = {**params, "fc": state.params["fc"]}
        kept = f"all but fc (new fc for {config.num_classes} classes, was {saved['num_classes']})"
    reporting.log(f"initialised from {directory}/{step}: {kept}")
    return state.replace(params=params, batch_stats=variables["batch_stats"])


def _resume_position(state, saved: dict, train_batch: int, sharding):
    """The restored state, its step counted in batches of `train_batch` images.

    A run resumed with another global batch (other batch size or device count)
    goes on from the same number of images seen, and so the same epoch and
    learning-rate position; the optimizer's schedule count moves with the step.
    """
    images = saved.get("images_seen")
    step = int(jax.device_get(state.step))
    if images is None or images == step * train_batch:
        return state
    new_step = images // train_batch
    reporting.log(f"the global batch is now {train_batch} (was {images // max(step, 1)}): "
                  f"step {step} becomes step {new_step}, after the same {images} images")
    # Two arrays, not one: the train step donates every leaf of the state.
    count = lambda: jax.device_put(np.asarray(new_step, state.step.dtype), sharding)  # noqa: E731
    opt_state = optax.tree_utils.tree_set(state.opt_state, count=count())
    return state.replace(step=count(), opt_state=opt_state)


def _mean_metrics(history: list[dict]) -> dict:
    fetched = jax.device_get(history)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _prepare(config) -> None:
    config_lib.validate(config)
    matmul_precision = precision.matmul_precision(config.precision)
    if matmul_precision:
        jax.config.update("jax_default_matmul_precision", matmul_precision)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains config.arch per the config, evaluating and checkpointing every few epochs.

    Restarting with the same workdir resumes from its latest checkpoint.
    Returns the last evaluation's metrics (empty without evaluation data).
    """
    _prepare(config)
    config_lib.check_workdir(workdir)
    mesh = parallel.make_mesh()
    # One optimizer step reads `train_batch` images: `accumulation` batches of the global size.
    accumulation = config_lib.accumulation_steps(config, mesh.size)
    train_batch = config_lib.optimizer_batch_size(config, mesh.size)
    eval_batch = config_lib.eval_global_batch_size(config, mesh.size)
    data = open_data(config, mesh, train_batch=train_batch, eval_batch=eval_batch)
    steps_per_epoch = config_lib.steps_per_epoch(data.num_train_images, train_batch)
    total_steps = steps_per_epoch * config.num_epochs
    peak_lr = config_lib.learning_rate(config, train_batch)
    schedule = optimizer.warmup_cosine(peak_lr, config.warmup_epochs * steps_per_epoch, total_steps)
    tx = optimizer.create(schedule, momentum=config.momentum, nesterov=config.nesterov,
                          weight_decay=config.weight_decay)
    model = build_model(config)
    replicated = parallel.replicated(mesh)
    state = jax.jit(
        functools.partial(state_lib.create, model, tx, image_size=config.image_size,
                          loss_scale=config.loss_scale_init if config.precision == "fp16" else 1.0),
        out_shardings=replicated,
    )(jax.random.key(config.seed))

    meta = {"arch": config.arch, "num_classes": config.num_classes,
            "class_names": data.class_names, "image_size": config.image_size,
            "eval_resize_size": config.eval_resize_size,
            "eval_image_size": config.eval_image_size, "precision": config.precision}
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    saved_step = ckpt.latest_step()
    if saved_step is not None:
        saved = ckpt.latest_meta()
        _check_compatible(saved, config, f"the checkpoint in {ckpt.directory!r}")
        state = _resume_position(ckpt.restore(state, replicated), saved, train_batch,
                                 replicated)
        new_step = int(jax.device_get(state.step))
        if new_step != saved_step:
            # Steps are now counted in other batches: save under the new number first, then
            # drop the old-numbered checkpoints that later saves would collide with.
            ckpt.save(state, saved)
            ckpt.wait()
            ckpt.delete_after(new_step)
        reporting.log(f"resumed from {ckpt.directory} at step {int(state.step)} "
                      f"(epoch {int(state.step) / steps_per_epoch:.2f})")
    elif config.init_checkpoint:
        state = _init_from_checkpoint(config, state, replicated)
    start_step = int(jax.device_get(state.step))

    writer = reporting.create_writer(workdir)
    if start_step == 0:
        writer.write_hparams(dict(_flatten(config.to_dict())))
    batch_text = str(train_batch) + (
        f" ({accumulation} accumulated batches of {train_batch // accumulation})"
        if accumulation > 1 else "")
    reporting.log(
        f"{config.arch}: {mesh.size} devices, {jax.process_count()} processes, "
        f"global batch {batch_text}, "
        f"{data.num_train_images} train images = {steps_per_epoch} steps/epoch, "
        f"{config.num_epochs} epochs = {total_steps} steps, peak lr {peak_lr:.4g}, "
        f"{config.precision}, data {config.data.backend}"
    )

    train_step = step_lib.make_train_step(
        model, tx, schedule, mesh, num_classes=config.num_classes,
        label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
        fp16=config.precision == "fp16",
        loss_scale_growth_interval=config.loss_scale_growth_interval, seed=config.seed,
        accumulation_steps=accumulation)
    eval_step = step_lib.make_eval_step(build_model(config, train=False), mesh)

    progress = reporting.Progress(total_steps=total_steps, start_step=start_step,
                                  global_batch_size=train_batch)
    guard = NonFiniteGuard(config.max_nonfinite_steps if config.precision == "fp16" else 1,
                           config.precision)
    history, eval_metrics, batches, saved_at = [], {}, None, None
    compile_start = time.perf_counter()
    try:
        with StopSignals() as stop:
            for step in range(start_step + 1, total_steps + 1):
                epoch_index, offset = divmod(step - 1, steps_per_epoch)
                if batches is None or offset == 0:
                    batches = None  # frees the last epoch's pipelines first
                    batches = data.train(epoch_seed(config.seed, epoch_index))
                    for _ in range(offset):  # resumed mid-epoch: replay up to here
                        next(batches)
                state, metrics = train_step(state, next(batches))
                history.append(metrics)
                guard.add(metrics["grads_finite"])
                if step == start_step + 1:
                    jax.block_until_ready(metrics)
                    reporting.log(f"first step (compilation included) took "
                                  f"{time.perf_counter() - compile_start:.1f}s")
                    progress.reset(step)
                logged = step % config.log_every_steps == 0 or step == total_steps
                if logged:
                    guard.check(step, ckpt)
                    summary = _mean_metrics(history)
                    speed = progress.mark(step)
                    history = []
                    writer.write_scalars(step, {**{f"train/{k}": v for k, v in summary.items()},
                                                "train/images_per_sec": speed["images_per_sec"]})
                    reporting.log(progress.line(step, step / steps_per_epoch, config.num_epochs,
                                                summary, speed))
                epoch_end = step % steps_per_epoch == 0
                if epoch_end:
                    epoch = step // steps_per_epoch
                    with progress.pause():
                        if data.eval is not None and (epoch % config.eval_every_epochs == 0
                                                      or step == total_steps):
                            eval_metrics = evaluate(eval_step, state.params, state.batch_stats,
                                                    data.eval)
                            writer.write_scalars(
                                step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                            reporting.log(f"eval epoch {epoch}: {_format_eval(eval_metrics)}")
                        if epoch % config.checkpoint_every_epochs == 0 or step == total_steps:
                            guard.check(step, ckpt)
                            ckpt.save(state, {**meta, "epoch": epoch,
                                              "images_seen": step * train_batch})
                            saved_at = step
                # Several processes stop together: they agree at logged steps.
                if stop.requested(collective=logged):
                    guard.check(step, ckpt)
                    if saved_at != step:
                        ckpt.save(state, {**meta, "epoch": step / steps_per_epoch,
                                          "images_seen": step * train_batch})
                    ckpt.wait()
                    reporting.log(f"stopped by {stop.signal_name} after step {step}: checkpoint "
                                  f"saved in {ckpt.directory}; run the same command to resume")
                    break
    finally:
        # Also on an error: pending checkpoint writes finish, metrics reach the disk.
        ckpt.close()
        writer.close()
    return eval_metrics


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of one epoch (file order, crops, flips): a function of both, nothing else."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop after the current step (a second SIGINT aborts).

    Preemption (SLURM, Kubernetes) sends SIGTERM; Ctrl-C sends SIGINT. The loop
    saves a checkpoint and returns normally, so the process exits 0.
    """

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        reporting.log(f"{self.signal_name}: stopping after this step and saving a checkpoint")
        # A second Ctrl-C interrupts at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def requested(self, *, collective: bool) -> bool:
        """True when this process (alone), or at a collective check any process, got a signal."""
        if jax.process_count() == 1:
            return self.signal_name is not None
        if not collective:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
        if np.any(flags) and self.signal_name is None:
            self.signal_name = "a signal to another process"
        return bool(np.any(flags))

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class NonFiniteGuard:
    """Stops training after `limit` steps in a row with non-finite gradients.

    Such a step never changes the parameters (the train step keeps the old
    state); with fp16 it also halves the loss scale, and a few in a row are
    normal at the start. The check fetches the flags of the steps since the
    last check, so it costs no device sync of its own.
    """

    def __init__(self, limit: int, precision_name: str):
        self.limit = max(1, limit)
        self.precision = precision_name
        self._pending = []
        self.in_a_row = 0

    def add(self, finite) -> None:
        """Records one step's `grads_finite` (a device scalar)."""
        self._pending.append(finite)

    def check(self, step: int, ckpt) -> None:
        """Raises TrainingError when the last `limit` steps all had non-finite gradients."""
        for finite in jax.device_get(self._pending):
            self.in_a_row = 0 if finite else self.in_a_row + 1
            if self.in_a_row >= self.limit:
                break
        self._pending = []
        if self.in_a_row >= self.limit:
            last = ckpt.latest_step()
            kept = (f"the last checkpoint (step {last}) is intact" if last is not None
                    else "no checkpoint was written")
            hint = ("raise --config.max_nonfinite_steps if the loss scale is still settling, "
                    if self.precision == "fp16" else "")
            raise TrainingError(
                f"{self.in_a_row} training step(s) in a row up to step {step} had a non-finite "
                f"loss or gradients ({self.precision}); the parameters were not updated by "
                f"them and {kept}. Lower --config.base_learning_rate, {hint}or try "
                f"--config.precision=fp32, then run the same command to resume")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | None) -> dict:
    """Restores params and BN statistics from a checkpoint and evaluates them on data.root/val."""
    _prepare(config)
    path = config.checkpoint or workdir
    if not path:
        raise ConfigError("mode=eval needs a checkpoint: pass --workdir of a training run or "
                          "--config.checkpoint=PATH")
    directory, step = checkpoint.resolve(path)
    _check_compatible(checkpoint.read_meta(directory, step), config, f"checkpoint {path!r}")
    mesh = parallel.make_mesh()
    eval_batch = config_lib.eval_global_batch_size(config, mesh.size)
    data = open_data(config, mesh, train_batch=eval_batch, eval_batch=eval_batch,
                     with_train=False)
    if data.eval is None:
        raise ConfigError("mode=eval needs images: set --config.data.backend=dali_gpu or "
                          "dali_cpu and --config.data.root=DIR with DIR/val/<class>/*.JPEG")
    model = build_model(config, train=False)
    abstract = jax.eval_shape(functools.partial(state_lib.init_variables, model,
                                                image_size=config.eval_image_size),
                              jax.random.key(0))
    variables = checkpoint.restore_model(directory, step, abstract, parallel.replicated(mesh))
    metrics = evaluate(step_lib.make_eval_step(model, mesh), variables["params"],
                       variables["batch_stats"], data.eval)
    reporting.log(f"eval of {path} (step {step}, {config.arch}): {_format_eval(metrics)}")
    return metrics


def _format_eval(metrics: dict) -> str:
    return (f"top1 {100 * metrics['top1']:.2f}% top5 {100 * metrics['top5']:.2f}% "
            f"loss {metrics['loss']:.4f} on {metrics['images']} images")


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
