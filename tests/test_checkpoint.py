"""Orbax checkpoints: an exact round trip of the training state, and restore for eval."""

from conftest import assert_tree_equal, tiny_run
import jax
import jax.numpy as jnp
import pytest

from resnet_jax import checkpoint, models, parallel
from resnet_jax.errors import ConfigError

META = {"arch": "resnet_tiny", "num_classes": 3}


@pytest.fixture(scope="module")
def built():
    """A tiny run's model and fresh training state, built once (setup_train_loop)."""
    run = tiny_run()
    return models.build(run.config), run.state


def _state(built, num_devices, seed):
    """The built state replicated on the first `num_devices` devices, made different by
    `seed`: its optimizer state and counters too, so that a round trip checks them."""
    model, state = built
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    opt_state = jax.tree.map(lambda x: x + 0.5 + seed, state.opt_state)
    assert jax.tree.leaves(opt_state)  # the momentum buffers
    state = state.replace(params=jax.tree.map(lambda x: x + seed, state.params),
                          step=jnp.int32(7 + seed), opt_state=opt_state,
                          good_steps=jnp.int32(3 + seed))
    return mesh, model, jax.device_put(state, parallel.replicated(mesh))


def test_save_then_restore_gives_back_every_leaf(built, tmp_path):
    mesh, _, saved = _state(built, 2, seed=0)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
    ckpt.save(saved, META)
    ckpt.wait()
    assert ckpt.latest_step() == 7
    assert ckpt.latest_meta() == META
    _, _, fresh = _state(built, 2, seed=1)
    restored = ckpt.restore(fresh, parallel.replicated(mesh))
    ckpt.close()
    assert_tree_equal(restored, saved)
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)


def test_restore_model_for_eval_from_step_folder_on_other_device_count(built, tmp_path):
    _, model, saved = _state(built, 4, seed=0)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
    ckpt.save(saved, {**META, "epoch": 1})
    ckpt.close()
    step_folder = str(tmp_path / "checkpoints" / "7")
    for path in (str(tmp_path), step_folder):
        opened = checkpoint.Saved(path)
        assert opened.step == 7 and opened.meta["epoch"] == 1
    one_device = parallel.make_mesh(jax.devices()[:1])
    abstract = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), 32))
    variables = opened.restore_model(abstract, parallel.replicated(one_device))
    assert_tree_equal(variables["params"], saved.params)


def test_training_state_moves_between_device_counts_8_then_1_then_4(built, tmp_path):
    meta = META
    _, _, on_8 = _state(built, 8, seed=0)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    ckpt.save(on_8, meta)
    ckpt.close()

    mesh_1, _, fresh = _state(built, 1, seed=1)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    on_1 = ckpt.restore(fresh, parallel.replicated(mesh_1))
    assert_tree_equal(on_1, on_8)
    assert jax.tree.leaves(on_1.params)[0].sharding.device_set == {jax.devices()[0]}
    on_1 = on_1.replace(step=on_1.step + 1,
                        params=jax.tree.map(lambda x: x * 2, on_1.params))
    ckpt.save(on_1, meta)
    ckpt.close()

    mesh_4, _, fresh = _state(built, 4, seed=2)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    assert ckpt.latest_step() == 8
    on_4 = ckpt.restore(fresh, parallel.replicated(mesh_4))
    ckpt.close()
    assert_tree_equal(on_4, on_1)
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
