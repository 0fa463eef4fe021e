"""The ONNX Runtime columns of scripts/benchmark.py's inference rows.

A row's model (its freshly initialised weights) is exported once per arch
and precision (resnet_jax.interop.onnx) and run in ONNX Runtime: TensorRT's
provider when this onnxruntime build has it and it starts, else CUDA's, else
the CPU's. The graph is fp32 for fp32/tf32 rows (TF32 allowed for tf32 on
CUDA) and fp16 for fp16 rows; bf16 rows have none (ONNX Runtime's providers
run no bf16 convolutions). The batch stays on the device (IOBinding), so
that a timed call is the model alone.

Only numpy and jax load with this module; onnx and onnxruntime load when used
(`pip install -e '.[export]'`).
"""

import os
import tempfile
import time

import jax
import numpy as np

from resnet_jax import models
from resnet_jax.bench.timing import latency_summary, time_latency
from resnet_jax.errors import ConfigError
from resnet_jax.interop import onnx as onnx_interop

# onnx and onnxruntime are imported inside the functions that use them, so that the benchmark
# runs without them (without --onnx).

# ONNX Runtime's providers, fastest first; 'auto' takes the first that this build has.
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}
# The ONNX graph's precision for a row's.
ONNX_PRECISIONS = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16"}


def providers(choice: str = "auto") -> list[str]:
    """ONNX Runtime providers for `choice` (auto, tensorrt, cuda, cpu), the CPU last as the
    fallback; a ConfigError when this onnxruntime build lacks the one asked for."""
    onnx_interop.require("onnxruntime", purpose="ONNX Runtime")
    import onnxruntime as ort

    available = ort.get_available_providers()
    if choice == "auto":
        return [p for p in PROVIDERS.values() if p in available]
    if choice not in PROVIDERS:
        raise ConfigError(f"ONNX Runtime provider {choice!r}: use auto or one of "
                          f"{', '.join(PROVIDERS)}")
    if PROVIDERS[choice] not in available:
        raise ConfigError(f"this onnxruntime build has no {PROVIDERS[choice]} (it has "
                          f"{', '.join(available)}): install onnxruntime-gpu for cuda/tensorrt")
    return list(dict.fromkeys([PROVIDERS[choice], PROVIDERS["cpu"]]))


def versions(provider: str = "auto", *, purpose: str = "--onnx") -> dict:
    """What the JSON header records of the export and ONNX Runtime; a ConfigError when a
    package is missing or this onnxruntime build lacks `provider`."""
    onnx_interop.require("torch", "onnx", "onnxruntime", purpose=purpose)
    providers(provider)
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "exporter": "torchscript", "opset": onnx_interop.OPSETS["torchscript"]}


def session(path: str, *, provider: str = "auto", precision: str = "fp32"):
    """An ONNX Runtime InferenceSession of `path`; fp16 lets TensorRT build in fp16 and tf32
    lets CUDA use TF32 (else full fp32, as resnet_jax's 'fp32')."""
    onnx_interop.require("onnxruntime", purpose="ONNX Runtime")
    import onnxruntime as ort

    options = {"TensorrtExecutionProvider": {"trt_fp16_enable": str(int(precision == "fp16"))},
               "CUDAExecutionProvider": {"use_tf32": str(int(precision == "tf32"))}}
    chosen = providers(provider)
    return ort.InferenceSession(path, providers=[(p, options.get(p, {})) for p in chosen])


class BoundRunner:
    """Runs a session on one batch that stays on the session's device (ONNX Runtime's
    IOBinding): a call is the model alone, no host copies, and returns when it is done."""

    def __init__(self, sess, images: np.ndarray):
        import onnxruntime as ort

        self.session = sess
        self.provider = sess.get_providers()[0]
        device = "cpu" if self.provider == PROVIDERS["cpu"] else "cuda"
        self._binding = sess.io_binding()
        self._binding.bind_ortvalue_input(
            onnx_interop.INPUT,
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(images, np.float32), device, 0))
        self._binding.bind_output(onnx_interop.OUTPUT, device)

    def __call__(self):
        self.session.run_with_iobinding(self._binding)
        self._binding.synchronize_outputs()

    def logits(self) -> np.ndarray:
        """The last run's logits, copied to the host."""
        return self._binding.copy_outputs_to_cpu()[0]


class OnnxColumns:
    """The ONNX columns of inference rows: exports and sessions kept per (arch, precision) in
    a temporary folder until `clear()`; `close()` removes the folder."""

    def __init__(self, provider: str = "auto"):
        self.provider = provider
        self._folder = tempfile.TemporaryDirectory(prefix="benchmark_onnx_")
        self._sessions: dict = {}

    def _session(self, arch: str, precision: str, config, variables) -> tuple:
        """(session, export seconds) of the row's model, exported on first use."""
        key = (arch, precision)
        if key not in self._sessions:
            path = os.path.join(self._folder.name, f"{arch}_{precision}.onnx")
            start = time.perf_counter()
            onnx_interop.export_variables(
                arch, jax.device_get(variables), path, num_classes=config.num_classes,
                image_size=config.image_size, precision=ONNX_PRECISIONS[precision],
                model_options=models.options(config))
            export_s = time.perf_counter() - start
            self._sessions[key] = (session(path, provider=self.provider, precision=precision),
                                   export_s)
        return self._sessions[key]

    def columns(self, row: dict, config, variables, images: np.ndarray, logits: np.ndarray, *,
                warmup: int, steps: int) -> dict:
        """The `onnx_*` fields of an inference row: `variables` exported, timed
        on one device's `images`, and its logits' distance from resnet_jax's `logits`."""
        sess, export_s = self._session(row["arch"], row["precision"], config, variables)
        runner = BoundRunner(sess, images)
        summary = latency_summary(*time_latency(runner, warmup, steps), row["per_device_batch"])
        got = runner.logits()
        return {**{f"onnx_{k}": v for k, v in summary.items()}, "onnx_provider": runner.provider,
                "onnx_precision": ONNX_PRECISIONS[row["precision"]], "onnx_export_s": export_s,
                "onnx_max_rel_diff": float(np.abs(got - logits).max() / np.abs(logits).max())}

    def clear(self) -> None:
        """Drops the sessions (an arch's are not needed once its rows are done)."""
        self._sessions.clear()

    def close(self) -> None:
        self.clear()
        self._folder.cleanup()
