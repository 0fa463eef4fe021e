"""NVIDIA's TensorFlow ResNet50 v1.5 checkpoints to resnet_jax: logits equal TensorFlow's.

The reference is NVIDIA's network written out here with tf.nn ops as their
code builds it (TensorFlow/Classification/ConvNets, model/resnet.py and
model/blocks/*.py): their variable names, 'SAME' padding (20.06 on) or the
2019 code's explicit padding, BN epsilon 1e-5, 1001 outputs. Its random
weights and BN statistics are saved as a real TF checkpoint (SaveV2) beside
an optimizer's slots and the non-model variables a training run leaves.
"""

import contextlib
import dataclasses
import io
import os
import re
import sys

from conftest import logits, relative_error
import jax
import numpy as np
import pytest
import tensorflow as tf

from resnet_jax import checkpoint, convert, models
from resnet_jax.interop import tensorflow as tf_interop
from resnet_jax.models import abstract_variables, naming

STAGES = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)


def _layout(scope):
    return next(layout for layout in tf_interop.LAYOUTS if layout.scope == scope)


def _block_scope(layout, stage, block):
    return (f"{layout.scope}/btlnck_block_{stage + layout.first_index}_"
            f"{block + layout.first_index}")


def _conv_blocks(layout):
    """(scope, kernel size, in channels, out channels) of every conv2d_block in NVIDIA's order."""
    blocks, channels = [(f"{layout.scope}/conv2d", 7, 3, 64)], 64
    for stage, (size, width) in enumerate(zip(STAGES, WIDTHS, strict=True)):
        for block in range(size):
            scope = _block_scope(layout, stage, block)
            if block == 0:
                blocks.append((f"{scope}/shortcut/conv2d", 1, channels, 4 * width))
            blocks += [(f"{scope}/bottleneck_1", 1, channels, width),
                       (f"{scope}/bottleneck_2", 3, width, width),
                       (f"{scope}/bottleneck_3", 1, width, 4 * width)]
            channels = 4 * width
    return blocks


def _random_weights(layout, seed=0):
    """NVIDIA's variables with random values, BN statistics far from 0 and 1."""
    rng = np.random.default_rng(seed)
    weights = {}
    for scope, size, cin, cout in _conv_blocks(layout):
        weights[f"{scope}/conv2d/kernel"] = (rng.standard_normal((size, size, cin, cout))
                                             * np.sqrt(2 / (size * size * cin)))
        weights[f"{scope}/BatchNorm/gamma"] = rng.uniform(0.5, 1.5, cout)
        weights[f"{scope}/BatchNorm/beta"] = rng.normal(0, 0.2, cout)
        weights[f"{scope}/BatchNorm/moving_mean"] = rng.normal(0, 0.5, cout)
        weights[f"{scope}/BatchNorm/moving_variance"] = rng.uniform(0.5, 2.0, cout)
    weights[f"{layout.scope}/output/dense/kernel"] = rng.normal(0, 0.05, (2048, 1001))
    weights[f"{layout.scope}/output/dense/bias"] = rng.normal(0, 0.1, 1001)
    return {name: value.astype(np.float32) for name, value in weights.items()}


def _renamed(weights, source, target):
    """The same weights under another release's names (scope and block numbering)."""
    blocks = {_block_scope(source, stage, block) + "/": _block_scope(target, stage, block) + "/"
              for stage, size in enumerate(STAGES) for block in range(size)}
    out = {}
    for name, value in weights.items():
        old = next((old for old in blocks if name.startswith(old)), None)
        if old:
            name = blocks[old] + name[len(old):]
        elif name.startswith(source.scope + "/"):
            name = target.scope + name[len(source.scope):]
        out[name] = value
    return out


def _tf_logits(weights, images, layout):
    """NVIDIA's forward pass in inference mode, in TensorFlow."""
    explicit = layout.padding == "symmetric_same_pool"  # the 2019 code's 'SAME_RESNET' mode

    def conv_block(x, scope, stride, relu):
        kernel = weights[f"{scope}/conv2d/kernel"]
        if explicit and stride > 1 and kernel.shape[0] > 1:
            begin = (kernel.shape[0] - 1) // 2
            end = kernel.shape[0] - 1 - begin
            x = tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]])
            x = tf.nn.conv2d(x, kernel, stride, "VALID")
        else:
            x = tf.nn.conv2d(x, kernel, stride, "SAME")
        x, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, *(weights[f"{scope}/BatchNorm/{n}"] for n in
                 ("gamma", "beta", "moving_mean", "moving_variance")),
            epsilon=1e-5, is_training=False)
        return tf.nn.relu(x) if relu else x

    x = conv_block(tf.constant(images), f"{layout.scope}/conv2d", 2, True)
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    for stage, size in enumerate(STAGES):
        for block in range(size):
            scope = _block_scope(layout, stage, block)
            stride = 2 if stage > 0 and block == 0 else 1
            # Every first block changes the channel count: a projection shortcut.
            shortcut = (conv_block(x, f"{scope}/shortcut/conv2d", stride, False) if block == 0
                        else x)
            y = conv_block(x, f"{scope}/bottleneck_1", 1, True)
            y = conv_block(y, f"{scope}/bottleneck_2", stride, True)
            y = conv_block(y, f"{scope}/bottleneck_3", 1, False)
            x = tf.nn.relu(shortcut + y)
    x = tf.reduce_mean(x, axis=[1, 2])
    return (tf.matmul(x, weights[f"{layout.scope}/output/dense/kernel"])
            + weights[f"{layout.scope}/output/dense/bias"]).numpy()


def _save(prefix, tensors):
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])


def _logits(folder, images):
    """The converted checkpoint's logits, with the model its metadata describes."""
    saved = checkpoint.Saved(folder)
    meta = saved.meta
    variables = saved.restore_variables(jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    return meta, logits(models.from_meta(meta), variables, images)


@pytest.fixture(scope="module")
def nvidia(tmp_path_factory):
    """(checkpoint prefix, weights, images, TF's logits) of NVIDIA's 20.06 layout, 64 px."""
    layout = _layout("resnet50")
    weights = _random_weights(layout)
    images = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
    kernel = "resnet50/btlnck_block_0_0/bottleneck_1/conv2d/kernel"
    prefix = str(tmp_path_factory.mktemp("rn50_tf_amp_ckpt") / "model.ckpt-5005")
    # What a training run saves besides the model: Momentum slots (here of two variables),
    # the step, AMP's loss scale; and a moving average that must not be taken for the weights.
    _save(prefix, {**weights, "global_step": np.int64(5005),
                   "current_loss_scale": np.float32(512), "good_steps": np.int64(7),
                   f"{kernel}/Momentum": np.ones_like(weights[kernel]),
                   "resnet50/output/dense/bias/Momentum": np.ones(1001, np.float32),
                   f"{kernel}/ExponentialMovingAverage": np.zeros_like(weights[kernel])})
    return prefix, weights, images, _tf_logits(weights, images, layout)


@pytest.fixture(scope="module")
def converted(nvidia, tmp_path_factory):
    """(folder, the command's line): the fixture's checkpoint converted by the command line."""
    out = str(tmp_path_factory.mktemp("converted") / "rn50")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert convert.main(["--arch", "resnet50", "--tf-checkpoint", nvidia[0],
                             "--output", out]) == 0
    return out, printed.getvalue()


def test_names_are_nvidias(nvidia):
    layout = _layout("resnet50")
    names = set(nvidia[1])
    assert len(names) == 53 * 5 + 2  # 53 convolutions with their BN, the classifier
    # The converter's names of the Flax variables are exactly these.
    abstract = abstract_variables("resnet50_v15", 1001)
    flax_paths = [tuple(k.key for k in key_path) for tree in abstract.values()
                  for key_path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert {naming.tf_name(path, layout) for path in flax_paths} == names
    assert naming.tf_name(("layer2_0", "bn2", "mean"), layout) == (
        "resnet50/btlnck_block_1_0/bottleneck_2/BatchNorm/moving_mean")
    for name in ("resnet50/conv2d/conv2d/kernel", "resnet50/conv2d/BatchNorm/moving_variance",
                 "resnet50/btlnck_block_0_0/shortcut/conv2d/conv2d/kernel",
                 "resnet50/btlnck_block_0_0/shortcut/conv2d/BatchNorm/gamma",
                 "resnet50/btlnck_block_3_2/bottleneck_3/BatchNorm/beta",
                 "resnet50/output/dense/kernel"):
        assert name in names
    old = _renamed({n: 0 for n in names}, layout, _layout("resnet50_v1.5"))
    assert "resnet50_v1.5/btlnck_block_4_3/bottleneck_3/BatchNorm/beta" in old
    assert naming.tf_name(("layer4_2", "bn3", "bias"), _layout("resnet50_v1.5")) == (
        "resnet50_v1.5/btlnck_block_4_3/bottleneck_3/BatchNorm/beta")


def test_command_line_converts_nvidias_checkpoint_exactly(nvidia, converted):
    prefix, _, images, want = nvidia
    out, line = converted
    assert line == (
        "converted 267 tensors (NVIDIA TensorFlow, scope resnet50/, padding 'same'; left out: "
        "2 optimizer slots, 1 moving average, 3 variables outside the model scope, the raw "
        "weights converted; dropped output 1000, which no label trained) to "
        f"resnet50_v15: 25,557,032 parameters, 1000 classes -> {out}/checkpoints/0\n")
    meta, got = _logits(out, images)
    # Output i is ImageNet class i; the last of the 1001 is the one dropped.
    assert got.shape == (2, 1000)
    assert relative_error(got, want[:, :1000]) < 1e-4
    assert meta["model_options"] == {"padding": "same", "bn_epsilon": 1e-5}
    assert meta["mean_rgb"] == [123.68, 116.28, 103.53]
    assert meta["std_rgb"] == [58.395, 57.12, 57.385]
    assert (meta["eval_resize_size"], meta["eval_image_size"], meta["eval_antialias"]) == (
        256, 224, False)
    assert meta["class_names"][:2] == ["tench", "goldfish"] and len(meta["class_names"]) == 1000
    assert meta["source"] == os.path.abspath(prefix)


def test_keep_background_keeps_all_1001_outputs(nvidia, tmp_path, capsys):
    prefix, _, images, want = nvidia
    out = str(tmp_path / "rn50_1001")
    assert convert.main(["--arch", "resnet50_v15", "--tf-checkpoint", prefix + ".index",
                         "--output", out, "--keep-background"]) == 0
    assert capsys.readouterr().out.endswith(
        f"25,559,081 parameters, 1001 classes -> {out}/checkpoints/0\n")
    meta, got = _logits(out, images)
    assert got.shape == (2, 1001)
    assert relative_error(got, want) < 1e-4
    assert meta["class_names"][0] == "tench"
    assert meta["class_names"][1000] == tf_interop.UNUSED_CLASS


def test_2019_layout_pads_convolutions_symmetrically_and_the_max_pool_same(nvidia):
    """The 2019 code (scope resnet50_v1.5/, blocks numbered from 1) pads the stem and the
    strided 3x3s explicitly; its max pool is 'SAME'."""
    _, weights, images, _ = nvidia
    old = _renamed(weights, _layout("resnet50"), _layout("resnet50_v1.5"))
    converted = tf_interop.tf_to_flax("resnet50_v15", old, keep_unused_class=True)
    assert converted.layout.padding == "symmetric_same_pool"
    # Its input: (x - mean) / 255 (utils/data_utils.py of 2019).
    assert converted.layout.mean_rgb == (123.68, 116.78, 103.94)
    assert converted.layout.std_rgb == (255.0, 255.0, 255.0)
    want = _tf_logits(old, images, converted.layout)
    model = models.create("resnet50_v15", num_classes=1001, padding="symmetric_same_pool")
    got = logits(model, converted.variables, images)
    assert relative_error(got, want) < 1e-4


def test_classify_uses_the_recorded_preprocessing(converted, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from resnet_jax import classify
    from resnet_jax.data import dali

    out, _ = converted
    image = str(tmp_path / "cat.jpg")
    pixels = np.random.default_rng(2).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image, quality=90)
    seen = {}
    preprocess = dali.preprocess_files

    def spy(files, **kwargs):
        seen.update(kwargs)
        return preprocess(files, **kwargs)

    monkeypatch.setattr(dali, "preprocess_files", spy)
    assert classify.main(["--checkpoint", out, "--top", "3", image]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 4
    assert all(re.fullmatch(r"  [01]\.\d{4}  \S.*", line) for line in lines[1:]), lines
    assert (seen["resize_size"], seen["image_size"], seen["antialias"]) == (256, 224, False)
    assert seen["normalize"] == ([123.68, 116.28, 103.53], [58.395, 57.12, 57.385])


def test_bad_input_is_one_line_and_exit_2(nvidia, tmp_path, capsys):
    prefix, *_ = nvidia

    def error(*args):
        assert convert.main([*args, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err

    missing = str(tmp_path / "nowhere" / "model.ckpt-1")
    assert (f"--tf-checkpoint {missing!r}: there is no {missing + '.index'!r}: pass the "
            "checkpoint's prefix") in error("--arch", "resnet50_v15", "--tf-checkpoint", missing)
    assert "reads NVIDIA's TensorFlow ResNet50 v1.5 only: pass --arch resnet50_v15, not " \
        "resnext101_32x4d" in error("--arch", "resnext101_32x4d", "--tf-checkpoint", prefix)
    other = str(tmp_path / "other" / "ckpt")
    _save(other, {"dense/kernel": np.zeros((4, 2), np.float32), "global_step": np.int64(1)})
    assert ("is not NVIDIA's TensorFlow ResNet50: no variables under resnet50/ or "
            "resnet50_v1.5/ (its top-level names: dense/, global_step)") in error(
        "--arch", "resnet50_v15", "--tf-checkpoint", other)
    assert (f"--tf-checkpoint {os.path.dirname(prefix)!r} is a folder without a 'checkpoint' "
            f"file: pass the prefix of one of its checkpoints (found: {prefix})") in error(
        "--arch", "resnet50_v15", "--tf-checkpoint", os.path.dirname(prefix))
    garbage = tmp_path / "garbage.index"
    garbage.write_bytes(b"not a checkpoint")
    assert "is not a TensorFlow checkpoint TensorFlow can read" in error(
        "--arch", "resnet50_v15", "--tf-checkpoint", str(tmp_path / "garbage"))
    assert "--keep-background applies to --tf-checkpoint only" in error(
        "--arch", "resnet50_v15", "--torch-checkpoint", "x.pth", "--keep-background")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_:  # argparse: one source or the other
        convert.main(["--arch", "resnet50_v15", "--tf-checkpoint", prefix,
                      "--torch-checkpoint", "x.pth", "--output", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_missing_unexpected_and_misshapen_variables_are_named(nvidia):
    _, weights, _, _ = nvidia
    weights = dict(weights)
    del weights["resnet50/btlnck_block_1_0/bottleneck_2/BatchNorm/moving_mean"]
    weights["resnet50/btlnck_block_0_0/bottleneck_se_layer/dense/kernel"] = np.zeros((1, 1))
    weights["resnet50/conv2d/conv2d/kernel"] = np.zeros((3, 3, 3, 64), np.float32)
    with pytest.raises(tf_interop.ConversionError) as error:
        tf_interop.tf_to_flax("resnet50_v15", weights)
    message = str(error.value)
    assert "\n" not in message
    assert "missing 1: resnet50/btlnck_block_1_0/bottleneck_2/BatchNorm/moving_mean" in message
    assert "unexpected 1: resnet50/btlnck_block_0_0/bottleneck_se_layer/dense/kernel" in message
    assert ("wrong shape 1: resnet50/conv2d/conv2d/kernel (3, 3, 3, 64) -> conv1/kernel needs "
            "(7, 7, 3, 64)") in message
    # Blocks numbered from 1 (2019) under the 20.06 scope: hundreds off, six of each shown
    # (names that exist in both numberings hold other blocks' weights: wrong shapes).
    layout = _layout("resnet50")
    mixed = _renamed(nvidia[1], layout, dataclasses.replace(layout, first_index=1))
    with pytest.raises(tf_interop.ConversionError, match=r"missing 125: resnet50/btlnck_block_0_0/"
                       r".*, \.\.\. 119 more \| unexpected 125: .*, \.\.\. 119 more \| "
                       r"wrong shape 135: resnet50/btlnck_block_1_1/bottleneck_1/BatchNorm/"
                       r"moving_mean \(64,\) -> layer2_1/bn1/mean needs \(128,\);"):
        tf_interop.tf_to_flax("resnet50_v15", mixed)


def test_a_folder_with_a_checkpoint_file_reads_and_tensorflow_is_not_shadowed(nvidia, tmp_path):
    # NGC's zip unpacks to such a folder.
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{nvidia[0]}"\n')
    reader = tf_interop.load_tf_checkpoint(str(tmp_path))  # imports TensorFlow from inside
    assert "global_step" in reader and len(reader) == 267 + 6
    # The module resnet_jax.interop.tensorflow imported TensorFlow itself, not itself.
    package = os.path.dirname(os.path.abspath(tf_interop.__file__))
    real = os.path.dirname(os.path.abspath(sys.modules["tensorflow"].__file__))
    assert real != package and os.path.basename(real) == "tensorflow"
