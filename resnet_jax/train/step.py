"""Train and eval steps: one jax.jit each over a mesh of all devices.

The batch is sharded on the mesh axis 'data'; the state is replicated. The
forward/backward pass runs under shard_map so that each device normalizes
with the BN statistics of its own part of the batch, as NVIDIA trains; with
`sync_batch_norm` the model's BN layers reduce over 'data' instead, which is
the same as one device seeing the whole batch.
"""

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

from resnet_jax.parallel import AXIS, batch_sharded, replicated
from resnet_jax.train import loss_scale as loss_scale_lib
from resnet_jax.train.state import TrainState, update_ema


def smoothed_targets(labels, num_classes: int, smoothing: float):
    """One-hot labels mixed with the uniform distribution (NVIDIA's label smoothing)."""
    return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)


def cross_entropy(logits, targets):
    """Mean softmax cross-entropy against soft targets, in fp32."""
    logits = logits.astype(jnp.float32)
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))


def mixup(rng, images, targets, alpha: float, per_sample: bool = False):
    """Mixes each example with its mirror in the batch, weight ~ Beta(alpha, alpha): one
    weight for the batch, or with `per_sample` one per example (MXNet's)."""
    lam = jax.random.beta(rng, alpha, alpha, (images.shape[0],) if per_sample else ())

    def weight(x):  # lam against every other axis of x
        return lam.reshape(lam.shape + (1,) * (x.ndim - lam.ndim))

    mixed = (weight(images) * images.astype(jnp.float32)
             + (1 - weight(images)) * images[::-1].astype(jnp.float32))
    return (mixed.astype(images.dtype),
            weight(targets) * targets + (1 - weight(targets)) * targets[::-1])


def all_finite(tree) -> jax.Array:
    """True when every element of every array in `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all()


def keep_if_finite(finite, new, old):
    """`new` where `finite`, else `old`, leaf by leaf: a step with non-finite gradients (an
    fp16 overflow, or a diverging run) leaves the parameters, BN statistics and optimizer
    state as they were."""
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def make_train_step(model, tx, schedule, mesh, *, num_classes: int, label_smoothing: float,
                    mixup_alpha: float, fp16: bool, loss_scale_growth_interval: int, seed: int,
                    accumulation_steps: int = 1, ema_decay: float = 0.0,
                    mixup_per_sample: bool = False,
                    loss_scale_max: float = loss_scale_lib.MAX_LOSS_SCALE):
    """Returns `train_step(state, batch) -> (state, metrics)`, jitted (the state not donated).

    With `accumulation_steps` k > 1 each device splits its part of the batch
    into k micro-batches, run one after the other (the activations of one
    micro-batch in memory at a time), and averages their gradients and BN
    statistics before the one optimizer update: the same update as a step on
    k times the devices, each with one micro-batch.

    A state with `ema` (see state.update_ema) has its moving average updated
    after every step with `ema_decay`, as NVIDIA's --use-ema does (also after
    a non-finite step, which leaves the weights as they were).
    """
    base_key = jax.random.key(seed)

    def micro_batch_grads(state: TrainState, images, labels, micro: int | jax.Array):
        targets = smoothed_targets(labels, num_classes, label_smoothing)
        if mixup_alpha > 0:
            key = jax.random.fold_in(jax.random.fold_in(base_key, state.step),
                                     lax.axis_index(AXIS) * accumulation_steps + micro)
            images, targets = mixup(key, images, targets, mixup_alpha, mixup_per_sample)

        def scaled_loss(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
            loss = cross_entropy(logits, targets)
            scaled = loss * state.loss_scale if fp16 else loss  # the scale is fp16's alone
            return scaled, (loss, logits, updates["batch_stats"])

        grads, (loss, logits, batch_stats) = jax.grad(scaled_loss, has_aux=True)(state.params)
        top1 = jnp.mean(jnp.argmax(logits, -1) == labels)
        return grads, batch_stats, {"loss": loss, "top1": top1}

    def device_grads(state: TrainState, images, labels):
        # Runs once per device on its shard of the batch.
        if accumulation_steps == 1:
            out = micro_batch_grads(state, images, labels, 0)
        else:
            def split(x):  # (B, ...) -> (k, B/k, ...): one row per micro-batch
                return x.reshape(accumulation_steps, -1, *x.shape[1:])

            def accumulate(total, micro):
                out = micro_batch_grads(state, *micro)
                return jax.tree.map(jnp.add, total, out), None

            micro = (split(images), split(labels), jnp.arange(accumulation_steps))
            zeros = jax.eval_shape(lambda: micro_batch_grads(state, *(m[0] for m in micro)))
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)
            total, _ = lax.scan(accumulate, zeros, micro)
            out = jax.tree.map(lambda x: x / accumulation_steps, total)
        # Averaging the per-device means gives the global-batch gradient; running
        # BN statistics are averaged too, so every device keeps the same state.
        return lax.pmean(out, AXIS)

    # check_vma=False: each device's gradient of the replicated parameters must stay its
    # own until the pmean in device_grads. With the check on, JAX treats the replicated
    # parameters as broadcast to every device, and the transpose of that broadcast sums the
    # gradients over 'data' inside the backward pass: the pmean would then average sums.
    sharded_grads = jax.shard_map(
        device_grads, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P(),
        check_vma=False,
    )

    def train_step(state: TrainState, batch):
        grads, batch_stats, metrics = sharded_grads(state, batch["images"], batch["labels"])
        if fp16:  # elsewhere the scale is 1 for good: no pass over the gradients for it
            grads = jax.tree.map(lambda g: g / state.loss_scale, grads)
        finite = all_finite(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite step changes nothing but the loss scale: the loop counts such steps
        # and stops after too many in a row.
        params, opt_state, batch_stats = keep_if_finite(
            finite, (params, opt_state, batch_stats),
            (state.params, state.opt_state, state.batch_stats))
        loss_scale, good_steps = loss_scale_lib.update_loss_scale(
            state.loss_scale, state.good_steps, finite,
            growth_interval=loss_scale_growth_interval, enabled=fp16, max_scale=loss_scale_max,
        )
        metrics = dict(metrics, learning_rate=schedule(state.step), loss_scale=state.loss_scale,
                       grads_finite=finite.astype(jnp.float32))
        ema = state.ema
        if ema is not None:
            ema = update_ema(ema, params, batch_stats, ema_decay, state.step)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, loss_scale=loss_scale,
                                  good_steps=good_steps, ema=ema)
        return new_state, metrics

    # The state is not donated: XLA cannot update the conv kernels and their momentum in
    # place (the gradient arrives in cuDNN's filter layout, and a transposing kernel does not
    # write over its own operand), so with donation it writes them elsewhere and copies them
    # back, 108 copies per RN50 v1.5 step. Without, a step of RN50 v1.5 (bf16, 192 per GPU)
    # launches 105 fewer kernels and moves 1.9 MB less per image, for 157 MB more memory:
    # the new state beside the old (docs/benchmarks.md).
    return jax.jit(
        train_step,
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
    )


def make_eval_step(model, mesh):
    """Returns `eval_step(params, batch_stats, batch) -> sums`, exact over masked batches.

    The sums (loss, top-1 and top-5 hits, images) are over the whole global
    batch; padding examples (mask False) count nowhere.
    """

    def eval_step(params, batch_stats, batch):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["images"],
                             train=False)
        labels, mask = batch["labels"], batch["mask"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        topk = lax.top_k(logits, min(5, logits.shape[-1]))[1]
        hit1 = topk[:, 0] == labels
        hit5 = jnp.any(topk == labels[:, None], axis=-1)
        return {
            "loss_sum": jnp.sum(jnp.where(mask, loss, 0.0)),
            "top1_hits": jnp.sum(hit1 & mask),
            "top5_hits": jnp.sum(hit5 & mask),
            "count": jnp.sum(mask),
        }

    return jax.jit(eval_step,
                   in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh)),
                   out_shardings=replicated(mesh))
