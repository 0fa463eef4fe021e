"""Model structure: exact parameter counts, shapes, dtypes and NVIDIA's initialisation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.errors import ConfigError
from resnet_jax.models import flops


def _abstract_variables(model, size=224):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("arch, expected", [
    ("resnet50_v15", 25_557_032),
    ("resnext101_32x4d", 44_177_704),
    ("se_resnext101_32x4d", 45_251_128),  # NVIDIA's: 16 hidden units in every SE gate
    ("seresnext101_32x4d", 48_955_416),  # timm's: channels/16
])
def test_full_size_models_have_reference_parameter_counts(arch, expected):
    variables = _abstract_variables(models.create(arch))
    assert _count(variables["params"]) == expected


@pytest.mark.parametrize("arch, gmacs", [
    ("resnet50_v15", 4.09), ("resnext101_32x4d", 7.97), ("se_resnext101_32x4d", 7.97),
    ("seresnext101_32x4d", 7.97)])
def test_forward_macs_per_image_at_224(arch, gmacs):
    # Published: ResNet50 4.1 GMACs, ResNeXt101-32x4d 8.0.
    assert flops.forward_macs(models.create(arch), 224) / 1e9 == pytest.approx(gmacs, abs=0.01)


def test_macs_count_grouped_convolutions_by_group_width():
    # One 3x3 conv, 64 -> 64 channels, 32 groups of 2 inputs: 2 * 9 MACs per output.
    conv = nn.Conv(64, (3, 3), feature_group_count=32, padding="SAME", use_bias=False)
    x = jnp.zeros((1, 8, 8, 64))
    variables = conv.init(jax.random.key(0), x)
    closed = jax.make_jaxpr(conv.apply)(variables, x)
    assert flops._jaxpr_macs(closed.jaxpr) == 8 * 8 * 64 * 2 * 9


def test_resnet50_logits_shape_and_v15_stride_on_3x3():
    model = models.create("resnet50_v15", dtype=jnp.bfloat16)
    variables = _abstract_variables(model)
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros((2, 224, 224, 3)))
    assert out.shape == (2, 1000) and out.dtype == jnp.float32
    params = variables["params"]
    # v1.5: the downsampling block of stage 2 strides on its 3x3; output 28x28 after stage 2.
    assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert params["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
        variables, jnp.zeros((2, 224, 224, 3)))
    assert jax.tree.leaves(state)[0].dtype == jnp.float32


def test_params_fp32_and_compute_in_half_precision():
    model = models.create("resnet_tiny", num_classes=7, dtype=jnp.float16)
    # Jitted: run op by op, a fresh machine would compile each operation alone (~20 s).
    variables = jax.jit(lambda: models.init_variables(model, jax.random.key(0), 32))()
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                                 jnp.ones((2, 32, 32, 3)))
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_nvidia_init_zero_last_bn_gamma_and_kaiming_fan_out():
    model = models.create("resnet50_v15")
    variables = jax.jit(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))()
    params = variables["params"]
    for name, block in params.items():
        if name.startswith("layer"):
            assert np.all(block["bn3"]["scale"] == 0), name
            assert np.all(block["bn1"]["scale"] == 1), name
    kernel = np.asarray(params["layer3_1"]["conv2"]["kernel"])  # 3x3x256x256
    fan_out = 3 * 3 * 256
    assert kernel.std() == pytest.approx(np.sqrt(2 / fan_out), rel=0.02)
    assert np.all(variables["batch_stats"]["bn1"]["var"] == 1)


def test_se_gate_init_follows_its_source():
    """NVIDIA's gates are nn.Linear layers (weight and bias U(+-1/sqrt(fan_in))); timm's
    are convolutions with the network's Kaiming init and zero biases."""
    def gate(**se):
        model = models.create("resnet_tiny", num_classes=3, **se)
        params = jax.jit(lambda: models.init_variables(model, jax.random.key(0), 32))()
        return params["params"]["layer4_0"]["se"]  # 64 channels

    nvidia = gate(se_hidden=16)
    for layer, fan_in in ("reduce", 64), ("expand", 16):
        bound = fan_in**-0.5
        for leaf in "kernel", "bias":
            values = np.asarray(nvidia[layer][leaf])
            assert np.abs(values).max() <= bound
            assert values.std() == pytest.approx(bound / np.sqrt(3), rel=0.2), (layer, leaf)
    assert nvidia["reduce"]["kernel"].shape == (1, 1, 64, 16)
    timm = gate(se_reduction=16)
    assert timm["reduce"]["kernel"].shape == (1, 1, 64, 4)
    assert not np.any(timm["reduce"]["bias"]) and not np.any(timm["expand"]["bias"])
    assert np.asarray(timm["expand"]["kernel"]).std() == pytest.approx(np.sqrt(2 / 64), rel=0.2)


def test_mxnet_init_is_nvidias_xavier_with_zero_last_bn():
    """NVIDIA's MXNet ResNet: Xavier gaussian, factor 'in', magnitude 2*sqrt(groups) for
    convolutions and the classifier (zero bias); gamma and running variance 0 on the last BN."""
    model = models.create("resnext101_32x4d", num_classes=10, conv_init="mxnet",
                          zero_var_last_bn=True)
    variables = jax.jit(lambda: models.init_variables(model, jax.random.key(0), 32))()
    params, stats = variables["params"], variables["batch_stats"]
    grouped = np.asarray(params["layer3_1"]["conv2"]["kernel"])  # 3x3, 32 groups of 16
    assert grouped.shape == (3, 3, 16, 512)
    assert grouped.std() == pytest.approx(np.sqrt(2 * np.sqrt(32) / (9 * 16)), rel=0.02)
    plain = np.asarray(params["layer3_1"]["conv1"]["kernel"])  # 1x1, 1024 inputs
    assert plain.std() == pytest.approx(np.sqrt(2 / 1024), rel=0.02)
    assert np.asarray(params["fc"]["kernel"]).std() == pytest.approx(np.sqrt(2 / 2048), rel=0.05)
    assert not np.any(params["fc"]["bias"])
    for name, block in stats.items():
        if name.startswith("layer"):
            assert not np.any(block["bn3"]["var"]) and np.all(block["bn2"]["var"] == 1), name
            assert not np.any(params[name]["bn3"]["scale"]), name


def test_batch_norm_uses_nvidia_momentum_and_epsilon():
    model = models.create("resnet_tiny", num_classes=3)
    assert model.bn_momentum == 0.9 and model.bn_epsilon == 1e-5


def test_unknown_arch_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"arch 'resnet51'.*resnet50_v15"):
        models.create("resnet51")


@pytest.mark.parametrize("alias, arch", [("resnet50", "resnet50_v15"),
                                         ("resnext101-32x4d", "resnext101_32x4d"),
                                         ("se-resnext101-32x4d", "se_resnext101_32x4d")])
def test_nvidia_arch_names_build_the_same_network(alias, arch):
    assert models.canonical(alias) == arch
    assert models.create(alias, num_classes=7) == models.create(arch, num_classes=7)
    for near_miss in (alias.upper(), alias.replace("-", "_") + "x", "resnet50-v15"):
        with pytest.raises(ConfigError, match=rf"arch '{near_miss}' is not supported"):
            models.canonical(near_miss)


def test_same_padding_is_tensorflows_one_more_at_the_bottom_and_right():
    """'same' (NVIDIA's TensorFlow ResNet50) pads a stride-2 7x7 on 64 px by 2 above and 3
    below, where 'symmetric' pads 3 and 3. Parameters and output sizes are the same for every
    padding: TF's ceil(n / stride), for odd sizes too (where TF's 'SAME' is symmetric)."""
    from resnet_jax.models.resnet import PADDINGS

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 64, 64, 3)), jnp.float32)
    # Random weights drawn by numpy: compiling Flax's initializers would take seconds.
    variables = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32),
                             _abstract_variables(models.create("resnet_tiny", num_classes=5), 64))
    odd = jnp.zeros((1, 65, 65, 3))
    logits = {}
    for padding in PADDINGS:
        model = models.create("resnet_tiny", num_classes=5, padding=padding)
        assert jax.tree.map(jnp.shape, _abstract_variables(model, 64)) == jax.tree.map(
            jnp.shape, variables)
        apply = functools.partial(model.apply, train=False, capture_intermediates=True)
        _, state = jax.eval_shape(apply, variables, odd)
        sizes = [state["intermediates"][f"layer{stage}_0"]["__call__"][0].shape[1]
                 for stage in (1, 2, 3, 4)]
        assert sizes == [17, 9, 5, 3], padding  # 65 -> 33 (stem) -> 17 (max pool) -> ...
        logits[padding], state = jax.jit(apply)(variables, x)
        pads = (2, 3) if padding == "same" else (3, 3)
        stem = jax.lax.conv_general_dilated(x, variables["params"]["conv1"]["kernel"], (2, 2),
                                            [pads, pads],
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(state["intermediates"]["conv1"]["__call__"][0], stem,
                                   rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits["same"], logits["symmetric"], atol=1e-3)
    # Only the max pool differs between these two.
    assert not np.allclose(logits["symmetric_same_pool"], logits["symmetric"], atol=1e-3)
    with pytest.raises(ValueError, match="padding must be one of symmetric, same"):
        models.create("resnet_tiny", padding="valid").init(jax.random.key(0), x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_relu_is_flaxs_with_a_hand_written_backward(dtype):
    """models.batchnorm.BatchNorm: flax's variables, outputs and running averages, and the
    gradients autodiff gives through nn.BatchNorm and nn.relu (the training step's backward
    pass is written out), with and without the ReLU; eval mode is flax's too."""
    from resnet_jax.models.batchnorm import BatchNorm

    x = (3 * jax.random.normal(jax.random.key(1), (4, 5, 5, 6)) + 1).astype(dtype)
    dy = jax.random.normal(jax.random.key(2), x.shape).astype(dtype)
    kw = dict(momentum=0.9, epsilon=1e-5, dtype=dtype)
    for relu in (False, True):
        ours = BatchNorm(relu=relu, **kw)
        theirs = nn.BatchNorm(use_running_average=False, **kw)
        variables = theirs.init(jax.random.key(0), x)
        variables = {"params": {"scale": jnp.linspace(0.5, 1.5, 6), "bias": jnp.linspace(
            -1, 1, 6)}, "batch_stats": variables["batch_stats"]}
        assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(
            variables)

        def run(module, activation, params, x, variables=variables):
            y, new = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
            return activation(y), new

        outputs = []
        for module, activation in ((ours, lambda y: y),
                                   (theirs, nn.relu if relu else lambda y: y)):
            forward = functools.partial(run, module, activation)
            y, new = forward(variables["params"], x)
            grads = jax.grad(lambda p, x, f=forward: jnp.sum(
                f(p, x)[0].astype(jnp.float32) * dy.astype(jnp.float32)),
                argnums=(0, 1))(variables["params"], x)
            outputs.append((y, new, grads))
        (y, new, grads), (y_ref, new_ref, grads_ref) = outputs
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(new_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                       rtol=tolerance, atol=tolerance)
        # Evaluation: the running averages, as flax uses them.
        frozen = BatchNorm(relu=relu, use_running_average=True, **kw)
        reference = nn.BatchNorm(use_running_average=True, **kw)
        evaluated = frozen.apply({**variables, "batch_stats": new_ref["batch_stats"]}, x)
        expected = reference.apply({**variables, "batch_stats": new_ref["batch_stats"]}, x)
        np.testing.assert_array_equal(np.asarray(evaluated, np.float32), np.asarray(
            nn.relu(expected) if relu else expected, np.float32))
