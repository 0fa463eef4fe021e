"""The train step: learning, fp16 loss scaling, and BN statistics per device or global."""

from conftest import assert_tree_equal
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from resnet_jax import models, parallel
from resnet_jax.train import loss_scale, optimizer
from resnet_jax.train import state as state_lib
from resnet_jax.train import step as step_lib

NUM_CLASSES, SIZE, BATCH = 5, 32, 16


def _setup(num_devices, *, sync_bn=False, dtype=jnp.float32, fp16=False, lr=0.05, wd=1e-4,
           accumulation_steps=1, mixup_alpha=0.0, ema_decay=0.0, **model_kwargs):
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    model = models.create("resnet_tiny", num_classes=NUM_CLASSES, dtype=dtype,
                          bn_axis_name="data" if sync_bn else None, **model_kwargs)
    schedule = optimizer.warmup_cosine(lr, 0, 1000)
    tx = optimizer.create(schedule, momentum=0.875, nesterov=False, weight_decay=wd)
    state = jax.jit(
        lambda key: state_lib.create(model, tx, key, image_size=SIZE,
                                     loss_scale=2.0**16 if fp16 else 1.0, ema=ema_decay > 0),
        out_shardings=parallel.replicated(mesh))(jax.random.key(0))
    train_step = step_lib.make_train_step(
        model, tx, schedule, mesh, num_classes=NUM_CLASSES, label_smoothing=0.1,
        mixup_alpha=mixup_alpha, fp16=fp16, loss_scale_growth_interval=3, seed=0,
        accumulation_steps=accumulation_steps, ema_decay=ema_decay)
    return mesh, model, state, train_step


def _batch(mesh, seed=0, dtype=np.float32, batch=BATCH):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    # Class-dependent mean so that the batch is learnable.
    images = rng.normal(size=(batch, SIZE, SIZE, 3)) + labels[:, None, None, None] * 0.5
    return jax.device_put({"images": images.astype(dtype), "labels": labels},
                          NamedSharding(mesh, P("data")))


def test_loss_falls_over_a_few_steps():
    # 2 devices, as test_train_and_eval_steps_copy_nothing...: the same compiled program.
    mesh, _, state, train_step = _setup(2)
    batch = _batch(mesh)
    losses = []
    for _ in range(8):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses
    assert int(state.step) == 8


def test_train_and_eval_steps_copy_nothing_between_host_and_device():
    mesh, model, state, train_step = _setup(2)
    batch = _batch(mesh)
    eval_batch = dict(batch, mask=jax.device_put(np.ones(BATCH, bool),
                                                 NamedSharding(mesh, P("data"))))
    eval_step = step_lib.make_eval_step(model, mesh)
    with jax.transfer_guard("disallow"):
        for _ in range(2):
            state, metrics = train_step(state, batch)
        sums = eval_step(state.params, state.batch_stats, eval_batch)
    assert int(jax.device_get(sums["count"])) == BATCH
    assert np.isfinite(jax.device_get(metrics["loss"]))


def test_fp16_overflow_skips_update_and_halves_scale():
    mesh, _, state, train_step = _setup(1, dtype=jnp.float16, fp16=True)
    batch = _batch(mesh, dtype=np.float16)
    state, metrics = train_step(state, batch)  # a finite step first, so momentum is non-zero
    assert float(metrics["grads_finite"]) == 1.0
    before = jax.device_get(state)
    # A scale near the fp32 maximum makes the scaled loss and gradients overflow.
    state = state.replace(loss_scale=jnp.asarray(3e38, jnp.float32))
    state, metrics = train_step(state, batch)
    after = jax.device_get(state)
    assert float(metrics["grads_finite"]) == 0.0
    for name in ("params", "batch_stats", "opt_state"):
        assert_tree_equal(getattr(after, name), getattr(before, name))
    assert float(after.loss_scale) == pytest.approx(1.5e38)
    assert int(after.step) == int(before.step) + 1 and int(after.good_steps) == 0


def test_keep_if_finite_takes_the_new_tree_only_when_finite():
    new = {"w": jnp.array([1.0, 2.0]), "opt": (jnp.int32(3),)}
    old = {"w": jnp.array([5.0, 6.0]), "opt": (jnp.int32(7),)}
    taken = step_lib.keep_if_finite(jnp.bool_(True), new, old)
    kept = step_lib.keep_if_finite(jnp.bool_(False), new, old)
    assert_tree_equal(taken, new)
    assert_tree_equal(kept, old)


def test_loss_scale_doubles_after_growth_interval_finite_steps():
    scale, good = jnp.float32(8.0), jnp.int32(0)
    for expected_scale in (8.0, 8.0, 16.0):
        scale, good = loss_scale.update_loss_scale(scale, good, jnp.bool_(True),
                                                  growth_interval=3, enabled=True)
        assert float(scale) == expected_scale
    assert int(good) == 0
    scale, good = loss_scale.update_loss_scale(scale, good, jnp.bool_(False),
                                              growth_interval=3, enabled=True)
    assert float(scale) == 8.0


def test_loss_scale_growth_stops_at_its_ceiling():
    scale, good = jnp.float32(2.0**23), jnp.int32(0)
    for expected_scale in (2.0**24, 2.0**24, 2.0**24):  # never 2**25, never inf
        scale, good = loss_scale.update_loss_scale(scale, good, jnp.bool_(True),
                                                  growth_interval=1, enabled=True)
        assert float(scale) == expected_scale
    assert loss_scale.MAX_LOSS_SCALE == 2.0**24  # NVIDIA apex's max_loss_scale
    scale, good = loss_scale.update_loss_scale(jnp.float32(64.0), jnp.int32(0), jnp.bool_(True),
                                              growth_interval=1, enabled=True, max_scale=100.0)
    assert float(scale) == 100.0
    scale, good = loss_scale.update_loss_scale(scale, good, jnp.bool_(False),
                                              growth_interval=1, enabled=True, max_scale=100.0)
    assert float(scale) == 50.0  # an overflow still halves it


def test_global_bn_on_8_devices_equals_one_device():
    results = []
    for num_devices in (1, 8):
        mesh, _, state, train_step = _setup(num_devices, sync_bn=True)
        for seed in range(2):
            state, metrics = train_step(state, _batch(mesh, seed))
        results.append(jax.device_get((state.params, state.batch_stats, metrics["loss"])))
    assert_tree_equal(*results, rtol=2e-4, atol=2e-6)


def test_per_device_bn_matches_per_shard_reference():
    """Default BN: each device normalizes its own 4 images; grads and stats are averaged."""
    # Without zero-gamma blocks every parameter gets a gradient on the first step.
    mesh, model, state, train_step = _setup(8, wd=0.0, zero_init_last_bn=False)
    batch = _batch(mesh, batch=32)
    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    images, labels = np.asarray(batch["images"]), np.asarray(batch["labels"])

    def shard_loss(p, x, y):
        logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                      mutable=["batch_stats"])
        targets = step_lib.smoothed_targets(y, NUM_CLASSES, 0.1)
        return step_lib.cross_entropy(logits, targets), updates["batch_stats"]

    shard_grad = jax.jit(jax.grad(shard_loss, has_aux=True))  # one device, one shard
    grads, stats = [], []
    for x, y in zip(np.split(images, 8), np.split(labels, 8), strict=True):
        g, s = shard_grad(params, x, y)
        grads.append(g)
        stats.append(s)
    mean = lambda trees: jax.tree.map(lambda *xs: np.mean(xs, axis=0), *trees)  # noqa: E731
    new_state, _ = train_step(state, batch)
    new_params, new_stats = jax.device_get((new_state.params, new_state.batch_stats))
    # First SGD step from zero momentum and no decay is p - lr * g: recover g.
    applied = jax.tree.map(lambda new, old: (old - new) / 0.05, new_params, params)
    expected = mean(grads)
    # Tiny per-device BN batches amplify float32 rounding to ~1e-3 of a leaf's largest
    # gradient; BN over the global batch instead would be off by far more.
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(applied)[0],
                            jax.tree.leaves(expected), strict=True):
        error = np.abs(a - b).max() / np.abs(b).max()
        assert error < 2e-3, (jax.tree_util.keystr(path), error)
    assert_tree_equal(new_stats, mean(stats), rtol=1e-5, atol=1e-6)


def test_accumulated_micro_batches_equal_one_step_on_more_devices():
    """k=2 micro-batches of 16 images on 4 devices == one step of 32 images on 8 devices.

    Both normalize the same groups of 4 images (per-device BN) and average the
    same 8 group gradients and BN statistics, so the updates are the same. The
    same 32 images on 4 devices without accumulation (groups of 8) differ.
    """
    results = {}
    for num_devices, k in ((8, 1), (4, 2), (4, 1)):
        mesh, _, state, train_step = _setup(num_devices, accumulation_steps=k)
        for seed in range(2):
            state, metrics = train_step(state, _batch(mesh, seed, batch=32))
        results[num_devices, k] = jax.device_get((state.params, state.batch_stats,
                                                  metrics["loss"]))

    def error(a, b):  # largest difference relative to each leaf's largest value
        return max(jax.tree.leaves(jax.tree.map(
            lambda x, y: float(np.abs(x - y).max() / np.abs(y).max()), a, b)))

    # Per-device BN over 4 images amplifies float32 rounding to ~2e-4.
    assert error(results[4, 2], results[8, 1]) < 1e-3
    assert error(results[4, 1], results[8, 1]) > 0.1


def test_mixup_mixes_images_and_targets_with_one_weight():
    images = jnp.arange(4.0).reshape(4, 1, 1, 1)
    targets = jax.nn.one_hot(jnp.arange(4), 4)
    mixed, mixed_targets = step_lib.mixup(jax.random.key(1), images, targets, 0.2)
    lam = float(mixed_targets[0, 0])
    assert 0 < lam < 1
    np.testing.assert_allclose(mixed[:, 0, 0, 0], lam * images[:, 0, 0, 0]
                               + (1 - lam) * images[::-1, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)


def test_ema_follows_nvidias_formula():
    """NVIDIA's EMA: after update t (0-based), mu = min(decay, (1+t)/(10+t)) and
    ema = mu*ema + (1-mu)*weights, BN statistics included; it starts as the initial weights."""
    decay = 0.6  # reached at t = 13: both regimes of min() within 25 steps
    mesh, _, state, train_step = _setup(2, ema_decay=decay)
    reference = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    assert_tree_equal(state.ema, reference)
    mus = []
    for t in range(25):
        state, _ = train_step(state, _batch(mesh, seed=t))
        weights = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        mu = min(decay, (1.0 + t) / (10.0 + t))
        mus.append(mu)
        reference = jax.tree.map(lambda e, w, mu=mu: mu * e + (1 - mu) * w, reference, weights)
    assert_tree_equal(state.ema, reference, rtol=1e-5, atol=1e-7)
    assert mus[0] == 0.1 and mus[12] < decay == mus[13] == mus[-1]
    ema, params = jax.device_get(state.ema["params"]), jax.device_get(state.params)
    assert not np.allclose(ema["fc"]["kernel"], params["fc"]["kernel"])  # an average, not a copy
