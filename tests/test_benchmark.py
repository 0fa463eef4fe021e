"""scripts/benchmark.py and resnet_jax.bench: what it refuses to compare, how it sums up
times, and what its inference rows report."""

import json
import os
import re
import sys

from conftest import ROOT, run
import numpy as np
import onnxruntime
import pytest

from resnet_jax.bench import data_loading, inputs, machine, timing, torch_baseline


def test_pytorch_on_another_kind_of_device_than_jax_is_refused():
    import torch

    here = "gpu" if torch.cuda.is_available() else "cpu"
    other = "cpu" if here == "gpu" else "gpu"
    assert torch_baseline.device_mismatch(here) is None
    message = torch_baseline.device_mismatch(other)
    assert message.startswith(f"JAX runs on the {other.upper()} but PyTorch {torch.__version__}")
    assert f"would run on the {here.upper()}" in message
    assert message.endswith("or pass --no-torch")


def test_latency_summary_gives_img_per_s_over_the_mean_and_the_percentiles_in_ms():
    times = [0.001 * (i + 1) for i in range(100)]  # 1 ms .. 100 ms
    row = timing.latency_summary(2.5, times, 0.25, batch=8)
    assert row["latency_ms_avg"] == row["step_ms"] == pytest.approx(50.5)
    assert row["images_per_sec"] == pytest.approx(8 / 0.0505)
    # numpy's linear interpolation between the sorted times.
    assert [row[f"latency_ms_p{q}"] for q in (90, 95, 99)] == pytest.approx([90.1, 95.05, 99.01])
    assert (row["step_ms_min"], row["step_ms_max"]) == pytest.approx((1.0, 100.0))
    assert (row["compile_s"], row["others_load"]) == (2.5, 0.25)


def test_step_summary_gives_img_per_s_over_the_median_step():
    row = timing.step_summary(3.0, [0.2, 0.1, 0.4, 0.1, 0.3], None, batch=16)
    assert row["step_ms"] == pytest.approx(200.0)
    assert row["images_per_sec"] == pytest.approx(80.0)
    assert (row["step_ms_min"], row["step_ms_max"]) == pytest.approx((100.0, 400.0))
    assert (row["compile_s"], row["others_load"]) == (3.0, None)


def test_time_steps_keeps_one_step_queued_and_dispatches_one_more_than_timed():
    events = []

    def dispatch():
        events.append("dispatch")
        return len(events)

    first, times, _ = timing.time_steps(dispatch, lambda handle: events.append("wait"),
                                        warmup=2, steps=3)
    assert len(times) == 3 and first >= 0
    # The first step and the warm-up one at a time, then dispatch i+1 before waiting for i.
    assert events == ["dispatch", "wait"] * 3 + ["dispatch"] + ["dispatch", "wait"] * 3 + [
        "wait"]


def test_others_load_is_the_other_processes_share_of_all_cores_or_none():
    cores = os.cpu_count() or 1
    # 10 s of wall time: the machine busy 5 core-seconds more, this process 1 of them.
    assert timing.others_load((100.0, 10.0), (105.0, 11.0), 10.0) == pytest.approx(
        min(1.0, 4.0 / (10.0 * cores)))
    assert timing.others_load(None, (105.0, 11.0), 10.0) is None
    assert timing.others_load((100.0, 10.0), (105.0, 11.0), 0.5) is None  # under a second


def test_json_header_names_the_cpu_the_command_and_the_date():
    header = {**machine.cpu(), **machine.provenance()}
    assert list(header) == ["cpu", "cpu_count", "command", "date"]
    assert header["cpu"] and header["cpu_count"] == os.cpu_count()
    assert header["date"].endswith("+00:00")


def test_pil_loader_crop_boxes_lie_in_the_image_with_the_aspect_ratios_asked_for():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = data_loading.random_resized_box(rng, 400, 300)
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300
        assert 3 / 4 - 0.02 <= (right - left) / (bottom - top) <= 4 / 3 + 0.02
        assert (right - left) * (bottom - top) >= 0.08 * 400 * 300 * 0.9
    # No random box fits a 1000 x 10 strip: the central crop of the widest allowed ratio.
    assert data_loading.random_resized_box(rng, 1000, 10) == (493, 0, 506, 10)


def test_demo_tree_is_drawn_repeated_to_a_file_list_and_removed(capsys):
    with inputs.demo_tree(num_classes=2, per_class=2, image_size=16, prefix="bench_test_",
                          note="no --data-root: ") as root:
        split = inputs.repeated_split(root, 7)
        assert len(split.files) == 7 and all(os.path.isfile(f) for f in split.files)
        # The tree's 4 files, then again from the first, labels following.
        assert split.files[4:] == split.files[:3]
        assert list(split.labels[4:]) == list(split.labels[:3])
    assert not os.path.exists(root)
    assert capsys.readouterr().out.startswith("no --data-root: drawing 2 x 2 JPEGs of 16 px into ")


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


def test_compiled_benchmark_without_the_cuda_plugin_says_what_to_install():
    """The unit suite's, the demo's and a CPU user's environment has no CUDA plugin (it lives
    in .venv-gpu-compile): JAX neither probes for CUDA nor warns about drivers there."""
    result = run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_compiled.py"),
                  "--archs=resnet_tiny", "--targets=h100"])
    assert result.returncode == 2, result.output
    for warning in ("cudart_stub", "Could not find cuda drivers", "backend 'cuda'"):
        assert warning not in result.output
    assert re.search(r"^error: cannot compile for NVIDIA H100 80GB HBM3 here \(.*\): install the "
                     r"CUDA plugin and ptxas \(pip install -e '\.\[gpu-compile\]'\) and run with "
                     r"JAX_PLATFORMS=cpu$", result.stderr, re.M), result.output
