"""Orbax checkpoints: an exact round trip of the training state, and restore for eval."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import checkpoint, models, parallel
from resnet_jax.errors import ConfigError
from resnet_jax.train import optimizer
from resnet_jax.train import state as state_lib


@functools.cache
def _factory(num_devices):
    """(mesh, model, jitted state constructor): compiled once per device count."""
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    model = models.create("resnet_tiny", num_classes=4)
    tx = optimizer.create(optimizer.warmup_cosine(0.1, 1, 10), momentum=0.875, nesterov=False,
                          weight_decay=1e-4)
    create = jax.jit(lambda key: state_lib.create(model, tx, key, image_size=32, loss_scale=8.0),
                     out_shardings=parallel.replicated(mesh))
    return mesh, model, create


def _state(num_devices, seed):
    mesh, model, create = _factory(num_devices)
    state = create(jax.random.key(seed))
    # Non-trivial optimizer state and counters, so that the round trip checks them too.
    opt_state = jax.tree.map(lambda x: x + 0.5 + seed, state.opt_state)
    assert jax.tree.leaves(opt_state)  # the momentum buffers
    return mesh, model, state.replace(step=jnp.int32(7 + seed), opt_state=opt_state,
                                      good_steps=jnp.int32(3 + seed))


def test_save_then_restore_gives_back_every_leaf(tmp_path):
    mesh, _, saved = _state(2, seed=0)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
    ckpt.save(saved, {"arch": "resnet_tiny", "num_classes": 4})
    ckpt.wait()
    assert ckpt.latest_step() == 7
    assert ckpt.latest_meta() == {"arch": "resnet_tiny", "num_classes": 4}
    _, _, fresh = _state(2, seed=1)
    restored = ckpt.restore(fresh, parallel.replicated(mesh))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored),
                 jax.device_get(saved))
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)


def test_restore_model_for_eval_from_step_folder_on_other_device_count(tmp_path):
    _, model, saved = _state(4, seed=0)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
    ckpt.save(saved, {"arch": "resnet_tiny", "num_classes": 4, "epoch": 1})
    ckpt.close()
    step_folder = str(tmp_path / "checkpoints" / "7")
    for path in (str(tmp_path), step_folder):
        opened = checkpoint.Saved(path)
        assert opened.step == 7 and opened.meta["epoch"] == 1
    one_device = parallel.make_mesh(jax.devices()[:1])
    abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), 32))
    variables = opened.restore_model(abstract, parallel.replicated(one_device))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]),
                 jax.device_get(saved.params))


def test_missing_or_empty_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint '.*nowhere' does not exist"):
        checkpoint.Saved(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        checkpoint.Saved(str(tmp_path))


def test_training_state_moves_between_device_counts_8_then_1_then_4(tmp_path):
    meta = {"arch": "resnet_tiny", "num_classes": 4}
    _, _, on_8 = _state(8, seed=0)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    ckpt.save(on_8, meta)
    ckpt.close()

    mesh_1, _, fresh = _state(1, seed=1)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    on_1 = ckpt.restore(fresh, parallel.replicated(mesh_1))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(on_1), jax.device_get(on_8))
    assert jax.tree.leaves(on_1.params)[0].sharding.device_set == {jax.devices()[0]}
    on_1 = on_1.replace(step=on_1.step + 1,
                        params=jax.tree.map(lambda x: x * 2, on_1.params))
    ckpt.save(on_1, meta)
    ckpt.close()

    mesh_4, _, fresh = _state(4, seed=2)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    assert ckpt.latest_step() == 8
    on_4 = ckpt.restore(fresh, parallel.replicated(mesh_4))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(on_4), jax.device_get(on_1))
    assert jax.tree.leaves(on_4.opt_state)[0].sharding.device_set == set(jax.devices()[:4])


def test_checkpoint_fits_only_a_config_of_its_arch_classes_and_padding():
    from resnet_jax import config as config_lib

    config = config_lib.recipe("resnet50_v15")
    meta = {"arch": "resnet50_v15", "num_classes": 1000}
    checkpoint.check_compatible(meta, config, "old")  # older checkpoints record no padding
    same = {**meta, "model_options": {"padding": "same", "bn_epsilon": 1e-5}}
    with pytest.raises(ConfigError, match=r"^tf holds a model with padding='same' but the "
                                          r"config has model.padding='symmetric': set "
                                          r"--config.model.padding=same$"):
        checkpoint.check_compatible(same, config, "tf")
    config.model.padding = "same"
    checkpoint.check_compatible(same, config, "tf")
    with pytest.raises(ConfigError, match=r"num_classes=1000 but the config has num_classes=5"):
        config.num_classes = 5
        checkpoint.check_compatible(same, config, "tf")
