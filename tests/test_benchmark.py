"""scripts/benchmark.py: what it refuses to compare."""

import importlib.util
import os

from conftest import ROOT


def _benchmark_script():
    path = os.path.join(ROOT, "scripts", "benchmark.py")
    spec = importlib.util.spec_from_file_location("benchmark_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pytorch_on_another_kind_of_device_than_jax_is_refused():
    import torch

    bench = _benchmark_script()
    here = "gpu" if torch.cuda.is_available() else "cpu"
    other = "cpu" if here == "gpu" else "gpu"
    assert bench.torch_device_mismatch(here) is None
    message = bench.torch_device_mismatch(other)
    assert message.startswith(f"JAX runs on the {other.upper()} but PyTorch {torch.__version__}")
    assert f"would run on the {here.upper()}" in message
    assert message.endswith("or pass --no-torch")
