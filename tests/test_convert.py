"""PyTorch weights to resnet_jax: logits equal a PyTorch reference for every arch, and every
naming scheme's keys and shapes are a PyTorch model's, both ways."""

import functools

from conftest import assert_tree_equal, logits, relative_error
import jax
import numpy as np
import pytest
import torch  # a test dependency (pyproject's `test` extra); the converter itself needs none

from resnet_jax import checkpoint, convert, models
from resnet_jax.errors import ConfigError
from resnet_jax.interop import torch as torch_interop
from resnet_jax.interop import torch_reference as ref
from resnet_jax.interop.torch import ConversionError
from resnet_jax.models import abstract_variables, naming

# One naming per arch for the logits (the NVIDIA SE network's gates as nn.Linear, timm's as
# 1x1 convolutions); every naming's keys in test_every_naming_round_trips_exactly.
LOGITS = [("resnet50_v15", "torchvision"), ("resnext101_32x4d", "nvidia"),
          ("se_resnext101_32x4d", "nvidia"), ("seresnext101_32x4d", "timm")]
NAMINGS = [
    ("resnet50_v15", "torchvision"),  # torchvision's and timm's resnet50 have the same keys
    ("resnet50_v15", "nvidia"),
    ("resnet50_v15", "nvidia_ngc"),
    ("resnext101_32x4d", "torchvision"),  # timm's resnext101_32x4d
    ("resnext101_32x4d", "nvidia"),
    ("resnext101_32x4d", "nvidia_ngc"),
    ("seresnext101_32x4d", "timm"),
    ("se_resnext101_32x4d", "nvidia"),
    ("se_resnext101_32x4d", "nvidia_ngc"),
    ("se_resnext101_32x4d", "nvidia_trt"),
]
# 8 images of 32 px and 10 classes, as test_export_onnx: the same compiled forward passes.
CLASSES, SIZE = 10, 32


@functools.cache
def _reference(arch, scheme, num_classes=CLASSES, seed=0):
    """(randomized PyTorch model, 8 NHWC images, its logits), made once per module."""
    torch.manual_seed(seed)
    model = ref.randomized(ref.ResNet(arch, scheme, num_classes), seed)
    images = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        want = model(images).numpy()
    return model, images.numpy().transpose(0, 2, 3, 1), want


@pytest.fixture(scope="module", autouse=True)
def _free_the_references():
    yield
    _reference.cache_clear()  # several full-size PyTorch models


def _numpy_state_dict(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _expected_scheme(arch, scheme):
    return ("nvidia" if scheme in ("nvidia", "nvidia_trt")
            or (scheme == "nvidia_ngc" and arch.startswith("se_")) else "torchvision/timm")


@pytest.mark.parametrize("arch, scheme", LOGITS, ids=[f"{a}-{s}" for a, s in LOGITS])
def test_converted_logits_equal_pytorch(arch, scheme):
    model, images, want = _reference(arch, scheme)
    state_dict = _numpy_state_dict(model)
    assert naming.naming_scheme(state_dict) == _expected_scheme(arch, scheme)
    variables = torch_interop.torch_to_flax(arch, state_dict)
    got = logits(models.create(arch, num_classes=CLASSES), variables, images)
    assert got.shape == want.shape
    assert relative_error(got, want) < 1e-4


@pytest.mark.parametrize("arch, scheme", NAMINGS, ids=[f"{a}-{s}" for a, s in NAMINGS])
def test_every_naming_round_trips_exactly(arch, scheme):
    """resnet_jax -> PyTorch -> resnet_jax gives back every tensor; the PyTorch side has the
    reference model's keys and shapes (a model on the meta device: no weights, no forward
    pass), which loads it with strict=True."""
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda spec: rng.standard_normal(spec.shape, np.float32),
                             abstract_variables(arch, CLASSES))
    state_dict = torch_interop.flax_to_torch(arch, variables, naming=scheme)
    with torch.device("meta"):
        reference = ref.ResNet(arch, scheme, CLASSES)
    want = reference.state_dict()
    assert sorted(state_dict) == sorted(want)
    for key, value in want.items():
        assert state_dict[key].shape == tuple(value.shape), key
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()},
                              strict=True, assign=True)
    assert naming.naming_scheme(state_dict) == _expected_scheme(arch, scheme)
    assert_tree_equal(torch_interop.torch_to_flax(arch, state_dict), variables)


def test_each_se_network_converts_exactly_and_refuses_the_other():
    """NVIDIA's SE gates (16 units) fill se_resnext101_32x4d as they are, nothing padded;
    given to timm's network (channels/16) they are refused with a line saying which is which."""
    model, _, _ = _reference("se_resnext101_32x4d", "nvidia")
    state_dict = _numpy_state_dict(model)
    assert state_dict["layers.2.0.squeeze.squeeze.weight"].shape == (16, 1024)
    variables = torch_interop.torch_to_flax("se_resnext101_32x4d", state_dict)
    se = variables["params"]["layer3_0"]["se"]
    np.testing.assert_array_equal(se["reduce"]["kernel"][0, 0],
                                  state_dict["layers.2.0.squeeze.squeeze.weight"].T)
    np.testing.assert_array_equal(se["expand"]["bias"],
                                  state_dict["layers.2.0.squeeze.expand.bias"])
    # Stages 2-4 misfit (30 blocks x 3 tensors); in stage 1, 256/16 = 16 units fit both.
    with pytest.raises(ConversionError, match=r"wrong shape 90: .*; \.\.\. 84 more\. .*SE gates "
                       r"of 16 units are NVIDIA's \(--arch se_resnext101_32x4d\)"):
        torch_interop.torch_to_flax("seresnext101_32x4d", state_dict)
    timm, _, _ = _reference("seresnext101_32x4d", "timm")
    with pytest.raises(ConversionError, match=r"of channels/16 timm's"):
        torch_interop.torch_to_flax("se_resnext101_32x4d", _numpy_state_dict(timm))
    with pytest.raises(ValueError, match="timm's SE gates, which scheme 'nvidia' does not name"):
        ref.ResNet("seresnext101_32x4d", "nvidia")


def test_torch_tensors_ddp_prefix_and_other_class_counts():
    model, images, want = _reference("resnet_tiny", "torchvision", num_classes=7)
    state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}  # torch tensors
    assert any(k.endswith("num_batches_tracked") for k in state_dict)
    variables = torch_interop.torch_to_flax("resnet_tiny", state_dict)
    assert variables["params"]["fc"]["kernel"].shape == (64, 7)
    assert relative_error(logits(models.create("resnet_tiny", num_classes=7), variables, images),
                          want) < 1e-4


def test_missing_unexpected_and_misshapen_keys_are_named():
    model, _, _ = _reference("resnet_tiny", "torchvision")
    state_dict = _numpy_state_dict(model)
    del state_dict["layer2.0.bn2.running_var"]
    state_dict["layer5.0.conv1.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    state_dict["layer1.0.conv2.weight"] = np.zeros((4, 4, 5, 5), np.float32)
    with pytest.raises(ConversionError) as error:
        torch_interop.torch_to_flax("resnet_tiny", state_dict)
    message = str(error.value)
    assert "missing 1: layer2.0.bn2.running_var" in message
    assert "unexpected 1: layer5.0.conv1.weight" in message
    assert "wrong shape 1: layer1.0.conv2.weight" in message and "(3, 3, 4, 4)" in message


def test_wrong_arch_is_reported_with_the_choices():
    model, _, _ = _reference("resnet50_v15", "torchvision")
    with pytest.raises(ConversionError, match=r"does not fit arch resnext101_32x4d.*--arch"):
        torch_interop.torch_to_flax("resnext101_32x4d", _numpy_state_dict(model))


def test_command_line_writes_a_checkpoint_that_restores(tmp_path):
    model, images, want = _reference("resnet_tiny", "nvidia", num_classes=1000)
    path = tmp_path / "nvidia_tiny.pth.tar"
    torch.save({"epoch": 90, "state_dict": model.state_dict(), "best_prec1": 0.5}, path)
    out = tmp_path / "converted"
    assert convert.main(["--arch", "resnet_tiny", "--torch-checkpoint", str(path),
                         "--output", str(out)]) == 0
    saved = checkpoint.Saved(str(out))
    meta = saved.meta
    assert (meta["arch"], meta["num_classes"], saved.step) == ("resnet_tiny", 1000, 0)
    assert meta["class_names"][:2] == ["tench", "goldfish"]
    variables = saved.restore_model(abstract_variables("resnet_tiny", 1000),
                                    jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    assert relative_error(logits(models.create("resnet_tiny", num_classes=1000), variables,
                                 images), want) < 1e-4
    # A second conversion into the same folder would mix checkpoints: refused.
    assert convert.main(["--arch", "resnet_tiny", "--torch-checkpoint", str(path),
                         "--output", str(out)]) == 2


def test_nvidia_arch_names_are_aliases(tmp_path, capsys):
    model, _, _ = _reference("resnext101_32x4d", "nvidia")
    variables = torch_interop.torch_to_flax("resnext101-32x4d", _numpy_state_dict(model))
    assert variables["params"]["fc"]["kernel"].shape == (2048, CLASSES)
    tiny, _, _ = _reference("resnet_tiny", "torchvision")
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    assert convert.main(["--arch", "resnet101", "--torch-checkpoint", str(path),
                         "--output", str(tmp_path / "o")]) == 2
    assert ("error: arch 'resnet101' is not supported: use one of resnet50_v15, resnet_tiny, "
            "resnext101_32x4d, se_resnext101_32x4d, seresnext101_32x4d or NVIDIA's names "
            "(resnet50 = resnet50_v15, resnext101-32x4d = resnext101_32x4d, "
            "se-resnext101-32x4d = se_resnext101_32x4d) "
            "(--arch=NAME)\n") == capsys.readouterr().err


def test_command_line_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    assert convert.main(["--arch", "resnet_tiny", "--torch-checkpoint", str(missing),
                         "--output", str(tmp_path / "o")]) == 2
    assert "nope.pth' does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert convert.main(["--arch", "resnet_tiny", "--torch-checkpoint", str(garbage),
                         "--output", str(tmp_path / "o")]) == 2
    assert "garbage.pth' is not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


class _Recipe:  # an object torch's weights_only loader refuses
    arch = "resnet_tiny"


def test_files_with_python_objects_need_allow_pickle(tmp_path, capsys):
    model, _, _ = _reference("resnet_tiny", "torchvision")
    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": model.state_dict(), "args": _Recipe()}, path)
    args = ["--arch", "resnet_tiny", "--torch-checkpoint", str(path)]
    assert convert.main([*args, "--output", str(tmp_path / "a")]) == 2
    assert "holds Python objects besides tensors: if you trust the file, add --allow-pickle" in (
        capsys.readouterr().err)
    assert convert.main([*args, "--output", str(tmp_path / "b"), "--allow-pickle"]) == 0


def test_class_names_for_display():
    from resnet_jax.data.folders import display_names

    wnids = [f"n{i:08d}" for i in range(1000)]
    names = display_names({"num_classes": 1000, "class_names": wnids})
    assert names[0] == "tench (n00000000)" and names[999] == "toilet tissue (n00000999)"
    assert display_names({"num_classes": 1000, "class_names": []})[1] == "goldfish"
    assert display_names({"num_classes": 4, "class_names": ["cat", "dog"]}) == [
        "cat", "dog", "class 2", "class 3"]


def test_export_command_writes_a_state_dict_that_runs(tmp_path, capsys):
    from resnet_jax import export

    model, images, want = _reference("resnet_tiny", "nvidia", num_classes=3)
    folder = str(tmp_path / "tiny")
    convert.write_checkpoint(folder, "resnet_tiny",
                             torch_interop.torch_to_flax("resnet_tiny", _numpy_state_dict(model)),
                             source="test")
    out = tmp_path / "tiny.pth"
    assert export.main(["--checkpoint", folder, "--format", "torch", "--output", str(out),
                        "--naming", "torchvision"]) == 0
    assert "exported resnet_tiny: " in capsys.readouterr().out
    loaded = ref.ResNet("resnet_tiny", "torchvision", 3)
    loaded.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        got = loaded.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_array_equal(got, want)
    # No moving average in a converted checkpoint; a timm SE network in NVIDIA's naming.
    assert export.main(["--checkpoint", folder, "--format", "torch", "--output", str(out),
                        "--ema"]) == 2
    assert "holds no EMA of the weights" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="timm's SE gates: export it with --naming timm"):
        torch_interop.flax_to_torch("seresnext101_32x4d", {}, naming="nvidia")
    # TensorFlow's padding (weights from NVIDIA's TF checkpoint): PyTorch's ResNets lack it.
    same = str(tmp_path / "same")
    convert.write_checkpoint(same, "resnet_tiny",
                             torch_interop.torch_to_flax("resnet_tiny", _numpy_state_dict(model)),
                             source="test", model_options={"padding": "same"})
    assert export.main(["--checkpoint", same, "--format", "torch", "--output",
                        str(tmp_path / "same.pth")]) == 2
    assert "TensorFlow's padding ('same')" in capsys.readouterr().err
    assert not (tmp_path / "same.pth").exists()
