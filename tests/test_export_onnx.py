"""ONNX export: ONNX Runtime's logits equal resnet_jax's for every arch; the command's onnx
and triton formats, fp16, EMA, model options and errors.

Images are 32 px (37 px for the 'same' paddings, whose odd sizes pad unevenly) and
models have 10 classes, so that the 101-layer models export in a few seconds each.
"""

import functools
import importlib.util
import re
import sys

from conftest import logits, relative_error, run
import jax
import numpy as np
import onnx  # test dependencies (pyproject's `test` extra), as the `export` extra has them
import onnxruntime as ort
import orbax.checkpoint as ocp
import pytest

from resnet_jax import checkpoint, convert, export, models
from resnet_jax.interop import onnx as onnx_interop
from resnet_jax.models import abstract_variables

SIZE = 32
CLASSES = 10
FP32_BOUND = 1e-4  # relative: max |difference| over max |logit|
# fp16 rounds every weight and activation to 11 significant bits: ONNX Runtime's fp16 graph
# lands 0.7-1.7e-3 from the fp32 logits here, as resnet_jax's own fp16 model does (1.3-2.4e-3).
FP16_BOUND = 1e-2


def _random_variables(arch: str, num_classes: int = CLASSES, seed: int = 0) -> dict:
    """Random weights and BN statistics (not the identity) of the shapes the arch has."""
    rng = np.random.default_rng(seed)

    def draw(path, spec):
        name, shape = path[-1].key, spec.shape
        if name == "kernel":  # variance 1/fan_in: logits of order 1 through 101 layers
            return rng.standard_normal(shape, np.float32) * np.float32(np.prod(shape[:-1])) ** -0.5
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return rng.standard_normal(shape, np.float32) * np.float32(0.1)  # biases, BN means

    return jax.tree_util.tree_map_with_path(draw, abstract_variables(arch, num_classes))


def _images(count: int, size: int = SIZE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, size, size, 3), np.float32)


def _jax_logits(meta: dict, variables: dict, images: np.ndarray) -> np.ndarray:
    return logits(models.from_meta(meta), variables, images)


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ort_logits(path, images: np.ndarray) -> np.ndarray:
    """The logits of images[:1] and images[1:], run as two batches (1 and len - 1)."""
    session = _session(path)
    return np.concatenate([session.run(None, {"images": images[:1]})[0],
                           session.run(None, {"images": images[1:]})[0]])


def _meta(arch: str, num_classes: int = CLASSES, size: int = SIZE, **model_options) -> dict:
    return {"arch": arch, "num_classes": num_classes, "eval_image_size": size,
            "model_options": model_options}


@functools.cache
def _case(arch: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(random variables, 8 images, resnet_jax's logits of them) of an arch, made once."""
    variables = _random_variables(arch)
    images = _images(8)
    # One JAX batch of 8: in eval mode each image's logits are its own.
    return variables, images, _jax_logits(_meta(arch), variables, images)


@pytest.mark.parametrize("arch", [*models.FULL_SIZE, "resnet_tiny"])
def test_onnx_runtime_logits_equal_jax_at_batch_1_and_7(arch, tmp_path):
    variables, images, want = _case(arch)
    path = tmp_path / "model.onnx"
    onnx_interop.export_variables(arch, variables, str(path), num_classes=CLASSES,
                                 image_size=SIZE)
    session = _session(path)
    (images_in,), (logits_out,) = session.get_inputs(), session.get_outputs()
    assert (images_in.name, images_in.shape, images_in.type) == (
        "images", ["batch", SIZE, SIZE, 3], "tensor(float)")
    assert (logits_out.name, logits_out.shape, logits_out.type) == (
        "logits", ["batch", CLASSES], "tensor(float)")
    for batch in (slice(0, 1), slice(1, 8)):
        got = session.run(None, {"images": images[batch]})[0]
        assert got.dtype == np.float32 and got.shape == (batch.stop - batch.start, CLASSES)
        assert relative_error(got, want[batch]) < FP32_BOUND, batch


def test_fp16_weights_and_compute_in_half_precision_float32_at_the_edges(tmp_path):
    arch = "resnet50_v15"
    variables, images, want = _case(arch)
    path = tmp_path / "fp16.onnx"
    onnx_interop.export_variables(arch, variables, str(path), num_classes=CLASSES,
                                 image_size=SIZE, precision="fp16")
    graph = onnx.load(str(path))
    assert {t.data_type for t in graph.graph.initializer} == {onnx.TensorProto.FLOAT16}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert len(convs) == 53  # BN folded into each of RN50's convolutions
    session = _session(path)
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float)"
    got = _ort_logits(path, images)
    assert got.dtype == np.float32
    assert FP32_BOUND < relative_error(got, want) < FP16_BOUND  # rounded, but close


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 3-class resnet_tiny checkpoint of 32 px images, as `convert` writes one."""
    folder = str(tmp_path_factory.mktemp("tiny"))
    variables = _random_variables("resnet_tiny", 3)
    convert.write_checkpoint(folder, "resnet_tiny", variables, source="test",
                             class_names=["cat", "dog", "owl"], eval_resize_size=36,
                             eval_image_size=SIZE)
    return folder, variables


def test_command_writes_onnx_that_runs_like_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    folder, variables = tiny_checkpoint
    out = tmp_path / "tiny.onnx"
    assert export.main(["--checkpoint", folder, "--format", "onnx", "--output", str(out)]) == 0
    assert capsys.readouterr().out.startswith(
        "exported resnet_tiny to ONNX in fp32: images [N, 32, 32, 3] float32 -> logits [N, 3] "
        f"float32, opset 17 -> {out} (")
    images = _images(5)
    want = _jax_logits(_meta("resnet_tiny", 3), variables, images)
    assert relative_error(_ort_logits(out, images), want) < FP32_BOUND
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert (props["arch"], props["image_size"], props["layout"], props["ema"]) == (
        '"resnet_tiny"', "32", '"NHWC"', "false")
    assert props["mean_rgb"] == "[123.675, 116.28, 103.53]"
    # fp16 through the command line too.
    half = tmp_path / "tiny16.onnx"
    assert export.main(["--checkpoint", folder, "--format", "onnx", "--output", str(half),
                        "--precision", "fp16"]) == 0
    assert relative_error(_ort_logits(half, images), want) < FP16_BOUND


# torch.export imports triton when the torch build ships it (PyPI's Linux wheels, CUDA builds).
# In a fresh .venv on the 2-core CPU VM (no GPU) that import crashed the test process with a
# segmentation fault, so the torch.export-based exporter is tested with CPU builds of torch
# only; the default (TorchScript) exporter never imports triton.
_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(_TRITON, reason="this torch build ships triton, whose import by "
                    "torch.export crashed the process on a machine without a GPU")
def test_dynamo_exporter_gives_the_same_graph_signature_and_logits(tiny_checkpoint, tmp_path):
    folder, variables = tiny_checkpoint
    out = tmp_path / "dynamo.onnx"
    assert export.main(["--checkpoint", folder, "--format", "onnx", "--output", str(out),
                        "--exporter", "dynamo"]) == 0
    assert onnx.load(str(out)).opset_import[0].version == 18
    session = _session(out)
    assert session.get_inputs()[0].shape == ["batch", SIZE, SIZE, 3]
    images = _images(5)
    want = _jax_logits(_meta("resnet_tiny", 3), variables, images)
    assert relative_error(_ort_logits(out, images), want) < FP32_BOUND


def _write_checkpoint_with_ema(workdir, arch, variables, ema, meta):
    """A checkpoint with the items a training run with an EMA writes (less `train`)."""
    manager = ocp.CheckpointManager(checkpoint.checkpoint_dir(str(workdir)),
                                    item_names=("model", "meta", "ema"))
    manager.save(0, args=ocp.args.Composite(model=ocp.args.StandardSave(variables),
                                            meta=ocp.args.JsonSave(meta),
                                            ema=ocp.args.StandardSave(ema)))
    manager.wait_until_finished()
    manager.close()


def test_ema_exports_the_moving_average_not_the_weights(tmp_path, capsys):
    weights, ema = _random_variables("resnet_tiny", seed=0), _random_variables("resnet_tiny",
                                                                               seed=5)
    meta = {**_meta("resnet_tiny"), "class_names": [f"c{i}" for i in range(CLASSES)]}
    _write_checkpoint_with_ema(tmp_path / "run", "resnet_tiny", weights, ema, meta)
    images = _images(4)
    for flag, variables, other in (([], weights, ema), (["--ema"], ema, weights)):
        out = tmp_path / f"model{len(flag)}.onnx"
        assert export.main(["--checkpoint", str(tmp_path / "run"), "--format", "onnx",
                            "--output", str(out), *flag]) == 0
        got = _ort_logits(out, images)
        assert relative_error(got, _jax_logits(meta, variables, images)) < FP32_BOUND
        assert relative_error(got, _jax_logits(meta, other, images)) > 0.01
    assert "exported resnet_tiny (EMA) to ONNX" in capsys.readouterr().out


@pytest.mark.parametrize("padding", ["same", "symmetric_same_pool"])
def test_tensorflow_padding_and_bn_epsilon_from_the_model_options(padding, tmp_path):
    """TensorFlow's 'SAME' pads the odd row and column at the bottom and right: at 37 px
    every stride-2 layer sees an odd size (37, 19, 10, 5, 3)."""
    options = {"padding": padding, "bn_epsilon": 1e-3}
    variables = _random_variables("resnet_tiny")
    folder = str(tmp_path / "ckpt")
    convert.write_checkpoint(folder, "resnet_tiny", variables, source="test",
                             model_options=options, eval_resize_size=40, eval_image_size=37)
    out = tmp_path / "model.onnx"
    assert export.main(["--checkpoint", folder, "--format", "onnx", "--output", str(out)]) == 0
    assert {n.op_type for n in onnx.load(str(out)).graph.node} <= {
        "Transpose", "Pad", "Conv", "Relu", "MaxPool", "Add", "ReduceMean", "Gemm"}
    images = _images(4, size=37)
    got = _ort_logits(out, images)
    assert relative_error(got, _jax_logits(_meta("resnet_tiny", size=37, **options),
                                            variables, images)) < FP32_BOUND
    # The options matter: the default model computes something else.
    assert relative_error(got, _jax_logits(_meta("resnet_tiny", size=37), variables,
                                            images)) > 1e-3


def _parse_pbtxt(text: str):
    """Protobuf text format (as config.pbtxt uses it) into dicts; repeated fields as lists."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.sub(r"#[^\n]*", "", text))
    position = 0

    def scalar(token):
        return token[1:-1] if token.startswith('"') else int(token) if re.fullmatch(
            r"-?\d+", token) else token

    def value():
        nonlocal position
        token = tokens[position]
        position += 1
        if token == "{":
            return message("}")
        if token == "[":
            items = []
            while tokens[position] != "]":
                items.append(value())
                position += tokens[position] == ","
            position += 1
            return items
        return scalar(token)

    def message(end):
        nonlocal position
        fields = {}
        while position < len(tokens) and tokens[position] != end:
            name = tokens[position]
            position += 1 + (tokens[position + 1] == ":")
            fields[name] = value()
        position += 1
        return fields

    return message(None)


def test_triton_repository_layout_config_and_model(tiny_checkpoint, tmp_path):
    """The command as a user runs it: one line of output, and a repository that Triton's
    ONNX Runtime backend loads as it is."""
    folder, variables = tiny_checkpoint
    repository = tmp_path / "models"
    result = run([sys.executable, "-m", "resnet_jax.export", "--checkpoint", folder,
                  "--format", "triton", "--output", str(repository), "--name", "tiny",
                  "--max-batch-size", "64"])
    assert result.returncode == 0, result.output
    assert result.stderr == "" and len(result.stdout.splitlines()) == 1, result.output
    assert result.stdout.startswith("exported resnet_tiny for Triton in fp32: images [N, 32, 32, "
                                    "3] float32 -> logits [N, 3] float32, max_batch_size 64 -> ")
    assert sorted(p.relative_to(repository).as_posix() for p in repository.rglob("*")) == [
        "tiny", "tiny/1", "tiny/1/model.onnx", "tiny/config.pbtxt", "tiny/labels.txt"]
    config = _parse_pbtxt((repository / "tiny" / "config.pbtxt").read_text())
    assert config == {
        "name": "tiny", "platform": "onnxruntime_onnx", "max_batch_size": 64,
        "input": [{"name": "images", "data_type": "TYPE_FP32", "dims": [SIZE, SIZE, 3]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [3],
                    "label_filename": "labels.txt"}],
        "dynamic_batching": {}, "instance_group": [{"count": 1, "kind": "KIND_GPU"}]}
    assert (repository / "tiny" / "labels.txt").read_text() == "cat\ndog\nowl\n"
    images = _images(7)
    got = _ort_logits(repository / "tiny" / "1" / "model.onnx", images)
    assert relative_error(got, _jax_logits(_meta("resnet_tiny", 3), variables,
                                            images)) < FP32_BOUND


def test_command_errors_are_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    folder, _ = tiny_checkpoint
    base = ["--checkpoint", folder]

    def error(*args) -> str:
        assert export.main([*args]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.splitlines()) == 1, captured
        return captured.err

    with pytest.raises(SystemExit) as exit_:
        export.main([*base, "--format", "tflite", "--output", str(tmp_path / "m")])
    assert exit_.value.code == 2
    assert "argument --format: invalid choice: 'tflite'" in capsys.readouterr().err
    assert "checkpoint" in error("--checkpoint", str(tmp_path / "nope"), "--format", "onnx",
                                 "--output", str(tmp_path / "m.onnx"))
    assert "does not exist" in error(*base, "--format", "onnx", "--output",
                                     str(tmp_path / "no" / "m.onnx"))
    assert "does not exist" in error(*base, "--format", "triton", "--output",
                                     str(tmp_path / "no" / "repo"))
    assert "--naming is for --format torch, not onnx: drop it" in error(
        *base, "--format", "onnx", "--output", str(tmp_path / "m.onnx"), "--naming", "timm")
    assert "--max-batch-size 0: give 1 or more" in error(
        *base, "--format", "triton", "--output", str(tmp_path / "r"), "--max-batch-size", "0")
    assert "a Triton model name is a folder name" in error(
        *base, "--format", "triton", "--output", str(tmp_path / "r"), "--name", "../x")
    assert "holds no EMA of the weights" in error(*base, "--format", "onnx", "--output",
                                                  str(tmp_path / "m.onnx"), "--ema")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    missing = error(*base, "--format", "onnx", "--output", str(tmp_path / "m.onnx"))
    assert ("the ONNX export needs onnx, which is not installed: pip install -e "
            "'.[export]' in the resnet_jax checkout") in missing
    assert not list(tmp_path.glob("*.onnx")) and not (tmp_path / "r").exists()


def test_model_options_the_export_does_not_know_are_refused(tmp_path, capsys):
    folder = str(tmp_path / "ckpt")
    convert.write_checkpoint(folder, "resnet_tiny", _random_variables("resnet_tiny"),
                             source="test", model_options={"padding": "same", "stem": "deep"},
                             eval_image_size=SIZE)
    assert export.main(["--checkpoint", folder, "--format", "onnx", "--output",
                        str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err == (
        "error: the checkpoint's model options ['stem'] are not supported by the ONNX export "
        "(it knows padding, bn_epsilon)\n")
    # Options that only shape training change nothing in the graph: accepted.
    assert onnx_interop.reference_options({"conv_init": "mxnet", "bn_epsilon": 1e-3}) == {
        "bn_epsilon": 1e-3}
