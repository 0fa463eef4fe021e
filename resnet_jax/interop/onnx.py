"""A resnet_jax model as ONNX, and as a Triton model repository.

The command line is `python -m resnet_jax.export --format onnx|triton` (resnet_jax/export.py).

The route: the Flax variables go bit-exactly into the PyTorch reference
model (resnet_jax.interop.torch.flax_to_torch, resnet_jax.interop.torch_reference),
and PyTorch's exporter `torch.onnx.export` writes the graph, as NVIDIA's
ConvNets `model2onnx.py` does. The graph takes `images`, float32 NHWC
[N, H, W, 3] normalized as in training ((pixel - mean_rgb) / std_rgb), and
returns `logits`, float32 [N, classes]; N is dynamic, H and W are the
checkpoint's evaluation crop. In fp16 the weights and the computation are
half precision inside the graph, the input and output stay float32.

Two of torch's exporters work (torch 2.13): 'torchscript', the default,
traces the model (opset 17); it is about 4x faster than 'dynamo' (224 px on
a 2-core CPU: RN50 2.2 s against 10.1 s, SE-ResNeXt101 4.7 s against 20.0 s)
and needs no other package, but torch has deprecated it since 2.9. 'dynamo'
(torch.export, opset 18) is torch's maintained one and needs `onnxscript`.
Both give the same operators (BN folded into the convolutions), the same
`batch` dimension and logits within 1e-6 of each other.

Only numpy and jax load with this module; torch and onnx load when used
(`pip install -e '.[export]'`). ONNX Runtime sessions of the graph, for
timing it, are resnet_jax.bench.onnx_runtime's.
"""

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import warnings

import numpy as np

from resnet_jax import models
from resnet_jax.errors import ConfigError
from resnet_jax.interop import torch as torch_interop
from resnet_jax.models import naming
from resnet_jax.models.resnet import PADDINGS

# torch, onnx and torch_reference (which imports torch) are imported inside the
# functions that use them, so that importing this module loads none of them.

EXPORTERS = ("torchscript", "dynamo")
OPSETS = {"torchscript": 17, "dynamo": 18}
PRECISIONS = ("fp32", "fp16")
INPUT, OUTPUT = "images", "logits"
INSTALL_HINT = "pip install -e '.[export]' in the resnet_jax checkout"
# The model options (ResNet keyword arguments a checkpoint records) that the export honours,
# and those that only shape training and so change nothing in an exported graph.
_OPTIONS = ("padding", "bn_epsilon")
_TRAINING_ONLY_OPTIONS = ("conv_init", "zero_init_last_bn", "zero_var_last_bn", "bn_momentum")


def require(*packages: str, purpose: str = "the ONNX export") -> None:
    """A one-line ConfigError naming the packages of `packages` that are not installed."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"{purpose} needs {', '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}")


def reference_options(model_options: dict | None) -> dict:
    """The reference model's keyword arguments for a checkpoint's `model_options`; a
    ConfigError for an option the export would get wrong."""
    options = dict(model_options or {})
    kept = {k: options.pop(k) for k in _OPTIONS if k in options}
    for name in _TRAINING_ONLY_OPTIONS:
        options.pop(name, None)
    if options:
        raise ConfigError(f"the checkpoint's model options {sorted(options)} are not supported "
                          f"by the ONNX export (it knows {', '.join(_OPTIONS)})")
    if kept.get("padding", "symmetric") not in PADDINGS:
        raise ConfigError(f"the checkpoint's model option padding={kept['padding']!r} is not "
                          f"one the ONNX export knows ({', '.join(PADDINGS)})")
    return kept


def torch_module(arch: str, variables: dict, *, num_classes: int, precision: str = "fp32",
                 model_options: dict | None = None):
    """The PyTorch module that the graph is traced from: NHWC float32 in, float32 logits out."""
    require("torch")
    import torch

    from resnet_jax.interop import torch_reference as reference

    scheme = naming.native_naming(arch)
    options = reference_options(model_options)
    state_dict = torch_interop.flax_to_torch(arch, variables, naming=scheme)
    with torch.device("meta"):  # no initial weights drawn: they are all replaced
        model = reference.ResNet(arch, scheme, num_classes, **options)
    # Copies: arrays restored from a checkpoint are read-only, which torch warns about.
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                          strict=True, assign=True)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    return reference.NHWCLogits(model.to(dtype), dtype).eval()


@contextlib.contextmanager
def _exporter_quiet():
    """Drops what the exporters print about themselves: the TorchScript exporter's deprecation
    and tracer notes (chosen knowingly, see the module docstring), the dynamo exporter's
    progress lines on stdout and its notes about torchvision's missing operators."""
    import torch

    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # F.pad's amounts, which fold_constants folds instead.
            warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
            warnings.filterwarnings("ignore", "TF32 acceleration on top of oneDNN", UserWarning)
            yield
    finally:
        onnx_logger.setLevel(level)


def _trace(module, image_size: int, exporter: str):
    """The ONNX ModelProto of `module`, NHWC images of `image_size` px in."""
    import onnx
    import torch

    # The tracer runs the model on the example (a batch of 1 is the cheapest); torch.export
    # does not, but takes a size of 1 for a constant.
    example = torch.zeros(1 if exporter == "torchscript" else 2, image_size, image_size, 3)
    names = dict(input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSETS[exporter])
    with _exporter_quiet(), torch.no_grad():
        if exporter == "torchscript":
            # The tracer runs the model once; oneDNN would first build kernels for each
            # layer's shapes (1-2 s for a 101-layer model), which one run never repays.
            buffer = io.BytesIO()
            with torch.backends.mkldnn.flags(enabled=False):
                torch.onnx.export(module, (example,), buffer, dynamo=False,
                                  dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                                  **names)
            return onnx.load_from_string(buffer.getvalue())
        batch = torch.export.Dim("batch")
        return torch.onnx.export(module, (example,), dynamo=True,
                                 dynamic_shapes={INPUT: {0: batch}}, **names).model_proto


def fold_constants(model):
    """Replaces each node whose inputs are all constants by its value (an initializer), in
    place. The TorchScript exporter leaves the pad amounts of F.pad (the 'same' padding) as
    a chain of Constant, Concat, Slice, ... nodes; TensorRT and other consumers want them
    as one constant, as the dynamo exporter writes them."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    folded: dict[str, np.ndarray] = {}

    def value(name):
        return folded[name] if name in folded else numpy_helper.to_array(initializers[name])

    opsets = [opset for opset in model.opset_import if opset.domain == ""]
    kept = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.domain or not all(name in folded or name in initializers for name in inputs):
            kept.append(node)
            continue
        arrays = {name: value(name) for name in inputs}
        one_node = helper.make_model(helper.make_graph(
            [node], "fold",
            [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                           a.shape) for name, a in arrays.items()],
            [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
             for name in node.output]), opset_imports=opsets)
        folded.update(zip(node.output, ReferenceEvaluator(one_node).run(None, arrays),
                          strict=True))
    if not folded:
        return model
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    tensors = [t for name, t in initializers.items() if name in used] + [
        numpy_helper.from_array(np.asarray(a), name) for name, a in folded.items()
        if name in used]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(kept)
    graph.initializer.extend(tensors)
    return model


def export_variables(arch: str, variables: dict, output: str, *, num_classes: int,
                     image_size: int, precision: str = "fp32", model_options: dict | None = None,
                     exporter: str = "torchscript", metadata: dict | None = None) -> None:
    """Writes `variables` ({'params', 'batch_stats'}) of `arch` as an ONNX file.

    `metadata` goes into the file's metadata_props (values as JSON), beside
    what the graph is: arch, classes, image size, layout, precision.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: the ONNX export writes "
                          f"{' or '.join(PRECISIONS)}")
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    require("torch", "onnx", *(("onnxscript",) if exporter == "dynamo" else ()))
    import onnx

    module = torch_module(arch, variables, num_classes=num_classes, precision=precision,
                          model_options=model_options)
    model = fold_constants(_trace(module, image_size, exporter))
    model.doc_string = (f"resnet_jax {models.canonical(arch)}: {INPUT} float32 [N, {image_size}, "
                        f"{image_size}, 3] (NHWC, RGB, (pixel - mean_rgb) / std_rgb) -> "
                        f"{OUTPUT} float32 [N, {num_classes}]; computed in {precision}")
    props = {"arch": models.canonical(arch), "num_classes": num_classes,
             "image_size": image_size, "layout": "NHWC", "precision": precision,
             "model_options": dict(model_options or {}), "exporter": exporter,
             **(metadata or {})}
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save(model, output)


# --- Triton ---------------------------------------------------------------------------------


def triton_config(name: str, *, image_size: int, num_classes: int, max_batch_size: int,
                  mean_rgb=None, std_rgb=None, labels: str | None = None) -> str:
    """config.pbtxt of the exported model for Triton's ONNX Runtime backend, on one GPU."""
    norm = ""
    if mean_rgb is not None and std_rgb is not None:
        norm = (f"\n# pixels: RGB 0-255, (pixel - {[round(m, 3) for m in mean_rgb]}) / "
                f"{[round(s, 3) for s in std_rgb]}")
    label_line = f'\n    label_filename: "{labels}"' if labels else ""
    return f"""# resnet_jax: python -m resnet_jax.export --format triton{norm}
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32
    dims: [ {image_size}, {image_size}, 3 ]
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]{label_line}
  }}
]
dynamic_batching {{ }}
instance_group [
  {{
    count: 1
    kind: KIND_GPU
  }}
]
"""


def check_triton_name(name: str) -> str:
    """A model name that is also a folder name; a ConfigError otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise ConfigError(f"--name {name!r}: a Triton model name is a folder name: letters, "
                          "digits, '_', '.' and '-'")
    return name


def triton_paths(repository: str, name: str) -> dict:
    """Where the repository's files go: {'config', 'model', 'labels'}."""
    folder = os.path.join(repository, name)
    return {"config": os.path.join(folder, "config.pbtxt"),
            "model": os.path.join(folder, "1", "model.onnx"),
            "labels": os.path.join(folder, "labels.txt")}

