"""Time to accuracy: MLPerf's evaluation cadence, stopping at target_top1 with the time to it,
and the best evaluation's checkpoint kept beside the latest ones and selectable."""

import json
import os

from conftest import run_main
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import checkpoint, models, parallel
from resnet_jax.train import loop, optimizer
from resnet_jax.train import state as state_lib


def _evals(steps_per_epoch, every, offset, epochs):
    total = steps_per_epoch * epochs
    return [step // steps_per_epoch for step in range(1, total + 1)
            if loop.eval_due(step, steps_per_epoch, every, offset, total)]


def test_eval_cadence_every_n_epochs_with_an_offset():
    # NVIDIA's MLPerf run: EVAL_OFFSET=2 counted from 0, EVAL_PERIOD=4, 37 epochs.
    assert _evals(10, 4, 3, 37) == [3, 7, 11, 15, 19, 23, 27, 31, 35, 37]
    assert _evals(10, 1, 0, 4) == [1, 2, 3, 4]  # the default: every epoch
    assert _evals(10, 2, 0, 5) == [2, 4, 5]  # as before the offset existed
    assert _evals(10, 0, 0, 3) == [3]  # never but at the end


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_target_stops_the_run_with_a_checkpoint_and_the_time_to_it(tmp_path, demo_root):
    workdir = str(tmp_path / "run")
    result = run_main(workdir, demo_root, "--config.num_epochs=3", "--config.warmup_epochs=1",
                      "--config.target_top1=0.01", "--config.log_every_steps=2")
    assert result.returncode == 0, result.output
    assert "target top-1 1.00% reached at epoch 1 (top1 " in result.output
    assert "from the first training step to the end of this evaluation" in result.output
    assert "eval epoch 2" not in result.output  # stopped after the first evaluation
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]
    (target,) = [r for r in _records(workdir) if "target/time_to_target_s" in r]
    assert target["step"] == 4 and target["target/epoch"] == 1 and target["target/reached"] == 1
    assert 0 < target["target/time_to_target_s"] < 300 and target["target/top1"] >= 0.01

    # The best checkpoint (here the only evaluation's) is selectable by name.
    result = run_main(workdir, demo_root, "--config.mode=eval", "--config.checkpoint=best")
    assert result.returncode == 0, result.output
    assert f"{workdir}/best (step 4, resnet_tiny)" in result.output
    assert f"top1 {100 * target['target/top1']:.2f}%" in result.output


def _state(params_offset):
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = models.create("resnet_tiny", num_classes=3)
    tx = optimizer.create(lambda step: 0.1, momentum=0.9, nesterov=False, weight_decay=0.0)
    state = state_lib.create(model, tx, jax.random.key(0), image_size=32, loss_scale=1.0)
    params = jax.tree.map(lambda x: x + params_offset, state.params)
    return mesh, state.replace(step=jnp.int32(params_offset), params=params)


def test_best_checkpoint_survives_rotation_and_opens_like_any_checkpoint(tmp_path):
    meta = {"arch": "resnet_tiny", "num_classes": 3}
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1)
    assert ckpt.best_meta() is None and not os.path.exists(tmp_path / "best")
    for step in (1, 2, 3, 4):
        mesh, state = _state(step)
        ckpt.save(state, meta)
        if step in (1, 2):  # two bests in a row: the first is replaced
            ckpt.save_best(state, {**meta, "eval_top1": step / 10, "epoch": step})
        ckpt.wait()
    ckpt.close()
    assert os.listdir(tmp_path / "checkpoints") == ["4"]
    assert os.listdir(tmp_path / "best") == ["2"]
    reopened = checkpoint.Checkpointer(str(tmp_path), keep=1)
    assert reopened.best_meta()["eval_top1"] == pytest.approx(0.2)
    assert reopened.latest_step() == 4  # a resume continues from the latest, not the best
    reopened.close()
    best = checkpoint.Saved(checkpoint.best_dir(str(tmp_path)))
    assert best.step == 2
    variables = jax.device_get(best.restore_variables(parallel.replicated(mesh)))
    jax.tree.map(np.testing.assert_array_equal, variables["params"],
                 jax.device_get(_state(2)[1].params))
