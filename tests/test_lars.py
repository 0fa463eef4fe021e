"""The large-batch recipe: MLPerf's LARS step and polynomial schedule against the formulas
written out here, MXNet's SGD form, the recipe's values and presets, and a short CPU run."""

import os

from conftest import main_command, run
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax.train import optimizer

LARS_RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "resnet50_lars.py")


def _params():
    return {"conv1": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])},
            "bn1": {"scale": jnp.array([1.0, 0.8]), "bias": jnp.array([0.1, -0.2])},
            "fc": {"kernel": jnp.array([[0.3], [-0.4]]), "bias": jnp.array([0.05])}}


GRADS = [
    {"conv1": {"kernel": jnp.array([[0.2, 0.1], [-0.3, 0.4]])},
     "bn1": {"scale": jnp.array([0.5, -0.1]), "bias": jnp.array([0.2, 0.3])},
     "fc": {"kernel": jnp.array([[-0.7], [0.2]]), "bias": jnp.array([0.9])}},
    {"conv1": {"kernel": jnp.array([[-0.1, 0.3], [0.2, -0.2]])},
     "bn1": {"scale": jnp.array([-0.4, 0.2]), "bias": jnp.array([0.1, -0.6])},
     "fc": {"kernel": jnp.array([[0.1], [0.5]]), "bias": jnp.array([-0.3])}},
]


def _steps(tx):
    params = _params()
    state = tx.init(params)
    for grads in GRADS:
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda a, b: a + b, params, updates)
    return jax.device_get(params)


def test_lars_step_is_mlperf_trust_ratio_then_momentum_then_rate():
    """NVIDIA's SGDwFASTLARS, written out: on kernels trust = eta*|w|/(|g| + wd*|w|), BN and
    biases skipped; decay on kernels and the fc bias; buf = m*buf + trust*(g + wd*w);
    w -= lr*buf. The rate changes between the two steps."""
    lrs, m, wd, eta = [2.0, 5.0], 0.9, 0.01, 0.001
    tx = optimizer.create(lambda step: jnp.asarray(lrs)[step], momentum=m, nesterov=False,
                          weight_decay=wd, weight_decay_rule="kernels_and_fc_bias",
                          kind="lars", lars_eta=eta)
    got = _steps(tx)

    want = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in _params().items()}
    buf = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in want.items()}
    for lr, grads in zip(lrs, GRADS, strict=True):
        for layer, names in want.items():
            for name, w in names.items():
                g = np.asarray(grads[layer][name])
                decayed = name == "kernel" or (layer, name) == ("fc", "bias")
                decay = wd if decayed else 0.0
                trust = 1.0
                if name == "kernel":
                    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
                    trust = eta * w_norm / (g_norm + decay * w_norm)
                buf[layer][name] = m * buf[layer][name] + trust * (g + decay * w)
                names[name] = w - lr * buf[layer][name]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


def test_lars_trust_ratio_is_one_where_a_norm_is_zero():
    tx = optimizer.create(lambda step: 1.0, momentum=0.0, nesterov=False, weight_decay=0.0,
                          kind="lars")
    params = {"conv": {"kernel": jnp.zeros((2, 2))}, "fc": {"kernel": jnp.ones((2, 1))}}
    grads = {"conv": {"kernel": jnp.ones((2, 2))}, "fc": {"kernel": jnp.zeros((2, 1))}}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["kernel"], -np.ones((2, 2)))  # trust 1, not 0/1
    np.testing.assert_allclose(updates["fc"]["kernel"], np.zeros((2, 1)))


def test_sgd_mxnet_keeps_the_rate_inside_the_momentum_buffer():
    """MXNet's sgd_mom_update, written out: v = m*v - lr*(g + wd*w); w += v. While the rate
    changes it differs from PyTorch's (buf = m*buf + d; w -= lr*buf)."""
    lrs, m, wd = [0.1, 0.4], 0.875, 0.01
    schedule = lambda step: jnp.asarray(lrs)[step]  # noqa: E731
    got = _steps(optimizer.create(schedule, momentum=m, nesterov=False, weight_decay=wd,
                                  weight_decay_rule="all", kind="sgd_mxnet"))
    torch_form = _steps(optimizer.create(schedule, momentum=m, nesterov=False, weight_decay=wd,
                                         weight_decay_rule="all", kind="sgd"))
    want = jax.tree.map(np.asarray, _params())
    v = jax.tree.map(np.zeros_like, want)
    for lr, grads in zip(lrs, GRADS, strict=True):
        v = jax.tree.map(lambda v, g, w, lr=lr: m * v - lr * (np.asarray(g) + wd * w),
                         v, grads, want)
        want = jax.tree.map(lambda w, v: w + v, want, v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    differs = jax.tree.map(lambda a, b: not np.allclose(a, b), got, torch_form)
    assert any(jax.tree.leaves(differs))


def test_polynomial_schedule_equals_written_out_formula():
    """Warmup from 0 over W epochs, then end + (peak - end)*(1 - (t - W)/(E - W))**2."""
    peak, end, warmup, epochs, per_epoch = 11.0, 1e-4, 2, 37, 400

    def formula(step):
        t = step / per_epoch
        if t < warmup:
            return peak * t / warmup
        return end + (peak - end) * (1 - (t - warmup) / (epochs - warmup)) ** 2

    lr = optimizer.schedule(peak, warmup_epochs=warmup, num_epochs=epochs,
                            steps_per_epoch=per_epoch, unit="step", warmup_from_zero=True,
                            decay="polynomial", end=end, power=2.0)
    steps = [0, 1, 399, 799, 800, 801, 5000, 10_000, 14_000, epochs * per_epoch - 1,
             epochs * per_epoch]
    got = np.array(jax.vmap(lr)(jnp.array(steps)))
    np.testing.assert_allclose(got, [formula(s) for s in steps], rtol=1e-5, atol=1e-7)
    assert got[0] == 0 and got[4] == pytest.approx(peak) and got[-1] == pytest.approx(end)


def test_lars_recipe_is_nvidias_mlperf_run_and_presets_follow_the_reference_table():
    config = config_lib.recipe("resnet50_lars")
    assert (config.arch, config.optimizer, config.global_batch_size) == (
        "resnet50_v15", "lars", 3200)
    assert config_lib.learning_rate(config, 3200) == 11.0  # not scaled with the batch
    assert (config.warmup_epochs, config.num_epochs, config.lr_schedule) == (2, 37, "polynomial")
    assert (config.lr_decay_power, config.end_learning_rate) == (2.0, 1e-4)
    assert (config.weight_decay, config.momentum, config.lars_eta) == (5e-5, 0.9, 0.001)
    assert config.label_smoothing == 0.1 and config.mixup_alpha == 0
    assert config.weight_decay_rule == "kernels_and_fc_bias"
    assert (config.eval_every_epochs, config.eval_offset_epochs) == (4, 3)
    assert config.target_top1 == 0.759
    for batch, lr, warmup in [(4096, 10.0, 5), (16384, 25.0, 5), (32768, 29.0, 18),
                              (65536, 23.08, 33)]:
        preset = config_lib.recipe("resnet50_lars", str(batch))
        assert (preset.global_batch_size, preset.base_learning_rate,
                preset.warmup_epochs) == (batch, lr, warmup)
    with pytest.raises(ValueError, match="table stops at a global batch of 65536"):
        config_lib.recipe("resnet50_lars", "131072")


def lars_command(workdir, data_root, *overrides):
    """The tiny model trained by the LARS recipe (global batch 8 on 2 devices)."""
    command = main_command(workdir, data_root, "--config.global_batch_size=8", *overrides)
    return [f"--config={LARS_RECIPE}" if a.startswith("--config=") else a for a in command]


def test_lars_recipe_trains_on_the_cpu(tmp_path, demo_root):
    workdir = str(tmp_path / "run")
    result = run(lars_command(workdir, demo_root, "--config.num_epochs=3",
                              "--config.warmup_epochs=1", "--config.eval_every_epochs=2",
                              "--config.eval_offset_epochs=1", "--config.checkpoint_every_epochs=1",
                              "--config.log_every_steps=4", "--config.target_top1=1.0"))
    assert result.returncode == 0, result.output
    assert "peak lr 11" in result.output and "4 steps/epoch" in result.output
    # Offset 1, every 2: after epochs 1 and 3 (the last), not 2.
    evals = [line.split("eval epoch ")[1][:1] for line in result.output.splitlines()
             if "eval epoch " in line]
    assert evals == ["1", "3"]
    assert "target top-1 100.00% not reached in 3 epochs: best top-1 " in result.output
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "4", "8"]
