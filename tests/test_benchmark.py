"""scripts/benchmark.py: what it refuses to compare, and what its inference rows report."""

import importlib.util
import json
import os
import sys

from conftest import ROOT, run
import onnxruntime
import pytest


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


def test_inference_rows_report_latency_of_jax_onnx_runtime_and_pytorch(tmp_path):
    """A dry run at tiny sizes: the inference table and JSON carry img/s and latency
    (mean, p90, p95, p99) of resnet_jax, ONNX Runtime and the PyTorch reference."""
    out = tmp_path / "bench.json"
    result = run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                  "--archs=resnet_tiny", "--image-size=32", "--batch-sizes=3",
                  "--modes=infer", "--data=synthetic", "--warmup-steps=1", "--steps=4",
                  "--onnx", f"--json={out}"], timeout=300)
    assert result.returncode == 0, result.output
    assert result.stderr == "", result.output
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("arch "))
    assert lines[header].split()[5:11] == ["img/s", "avg", "ms", "p90", "p95", "p99"]
    assert "onnx img/s" in lines[header] and "torch img/s" in lines[header]
    assert lines[header + 2].startswith("resnet_tiny          infer synthetic fp32     3")
    assert lines[header + 3].startswith("ONNX Runtime: CPUExecutionProvider (fp32 graph)")
    report = json.loads(out.read_text())
    assert report["header"]["onnxruntime"] == onnxruntime.__version__
    (row,) = report["rows"]
    # Two simulated devices: resnet_jax runs a global batch of 6, the others one device's 3.
    assert (row["global_batch"], row["devices"]) == (6, 2)
    for prefix in ("", "onnx_", "torch_"):
        latency = [row[f"{prefix}latency_ms_{q}"] for q in ("avg", "p90", "p95", "p99")]
        assert all(v > 0 for v in latency) and latency[1] <= latency[2] <= latency[3], prefix
        batch = row["global_batch"] if prefix == "" else row["per_device_batch"]
        assert row[f"{prefix}images_per_sec"] == pytest.approx(
            1e3 * batch / row[f"{prefix}latency_ms_avg"])
    assert row["onnx_provider"] == "CPUExecutionProvider" and row["onnx_precision"] == "fp32"
    assert row["onnx_max_rel_diff"] < 1e-4  # the same model: the same logits
