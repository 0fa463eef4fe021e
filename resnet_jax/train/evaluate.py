"""Evaluation: exact top-1/top-5 over a validation pass, and of a saved checkpoint (mode=eval)."""

import os

import jax
import ml_collections

from resnet_jax import checkpoint, models, parallel, reporting
from resnet_jax import config as config_lib
from resnet_jax.data.source import open_data
from resnet_jax.errors import ConfigError
from resnet_jax.train import step as step_lib
from resnet_jax.train.setup import prepare


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


def format_eval(metrics: dict) -> str:
    """'top1 76.12% top5 92.87% loss 0.9412 on 50000 images'."""
    return (f"top1 {100 * metrics['top1']:.2f}% top5 {100 * metrics['top5']:.2f}% "
            f"loss {metrics['loss']:.4f} on {metrics['images']} images")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | None) -> dict:
    """Restores params and BN statistics from a checkpoint and evaluates them on data.root/val."""
    prepare(config)
    path = config.checkpoint or workdir
    if not path:
        raise ConfigError("mode=eval needs a checkpoint: pass --workdir of a training run or "
                          "--config.checkpoint=PATH")
    if config.checkpoint == "best":
        path = best_checkpoint(workdir)
    saved = checkpoint.Saved(path)
    _adopt_recorded(config, saved.meta, path)
    checkpoint.check_compatible(saved.meta, config, f"checkpoint {path!r}")
    mesh = parallel.make_mesh()
    eval_batch = config_lib.eval_global_batch_size(config, mesh.size)
    data = open_data(config, mesh, train_batch=eval_batch, eval_batch=eval_batch,
                     with_train=False)
    if data.eval is None:
        raise ConfigError("mode=eval needs images: set --config.data.backend=dali_gpu or "
                          "dali_cpu and --config.data.root=DIR with DIR/val/<class>/*.JPEG")
    parallel.log_devices()
    model = models.build(config, train=False)
    variables = saved.restore_variables(parallel.replicated(mesh), ema=config.eval_ema)
    metrics = evaluate(step_lib.make_eval_step(model, mesh), variables["params"],
                       variables["batch_stats"], data.eval)
    which = ", EMA of the weights" if config.eval_ema else ""
    reporting.log(f"eval of {path} (step {saved.step}, {config.arch}{which}): "
                  f"{format_eval(metrics)}")
    return metrics


def best_checkpoint(workdir: str | None) -> str:
    """WORKDIR/best, the best evaluation's checkpoint of the training run in `workdir`."""
    if not workdir:
        raise ConfigError("--config.checkpoint=best needs --workdir of a training run (or pass "
                          "--config.checkpoint=WORKDIR/best)")
    path = checkpoint.best_dir(workdir)
    if not os.path.isdir(path):
        raise ConfigError(f"--workdir {workdir!r} has no best checkpoint ({path!r}): a training "
                          "run writes it at its first evaluation")
    return path


def _adopt_recorded(config: ml_collections.ConfigDict, meta: dict, path: str) -> None:
    """Evaluates the weights as they were trained: the model options (padding, BN epsilon)
    and the input normalization a checkpoint records win over the config's, with a log line
    for each that differs (older checkpoints record none)."""
    recorded = [(config.model, "model.", key, value)
                for key, value in meta.get("model_options", {}).items()]
    recorded += [(config, "", key, meta[key]) for key in ("mean_rgb", "std_rgb") if key in meta]
    for section, prefix, key, value in recorded:
        # JSON gives lists back; the config holds tuples.
        mine = tuple(section[key]) if isinstance(value, list) else section[key]
        theirs = tuple(value) if isinstance(value, list) else value
        if mine != theirs:
            reporting.log(f"{prefix}{key}={theirs} as checkpoint {path!r} records (the config "
                          f"has {mine})")
            section[key] = theirs
