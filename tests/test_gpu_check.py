"""scripts/gpu_check.sh: the GPU owner's first command, dry-run on the CPU."""

import json
import os
import re
import sys
import time

from conftest import ROOT, run

from resnet_jax.bench import gpu_check

# A Python without DALI, TensorFlow or clu, as in ready-made GPU containers: importing them
# fails as it would there.
_WITHOUT_DALI_AND_TENSORFLOW = '''
import importlib.abc
import sys


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "clu") or name.startswith("nvidia.dali"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Absent())
'''


def test_gpu_check_dry_run_trains_evaluates_benchmarks_and_reports(tmp_path):
    out = tmp_path / "check"
    result = run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--cpu",
                  f"--out={out}", "--precisions=bf16"], PY=sys.executable, timeout=600)
    assert result.returncode == 0, result.output
    assert f"every check passed; report in {out}/report.md" in result.stdout
    report = (out / "report.md").read_text()
    assert "# resnet_jax GPU check (dry run on the CPU)" in report
    assert re.search(r"^jax \d+\.\d+\.\d+: cpu, 2 device\(s\): cpu$", report, re.M)
    for part in ("devices", "DALI smoke test", "train bf16", "benchmark resnet_tiny bf16"):
        assert f"### {part}: pass" in report, part
    assert "- train batch (8, 32, 32, 3) float16, sharded over 2 cpu device(s)" in report
    assert "- train_step compiled 1 time(s)" in report
    loss = re.search(r"loss ([\d.]+) -> ([\d.]+) \(mean of the first and last", report)
    assert float(loss.group(2)) < float(loss.group(1))
    assert re.search(r"mode=eval top1 ([\d.]+)% vs \1% in training", report)
    # The throughput table: the training part's DALI rate and the benchmark's rows.
    rows = [line for line in report.splitlines() if line.startswith("| resnet_tiny |")]
    assert [r.split("|")[2:5] for r in rows] == [
        [" train ", " dali_cpu ", " bf16 "], [" train ", " synthetic ", " bf16 "],
        [" train ", " dali_cpu ", " bf16 "]]
    assert report.rstrip().endswith("every check passed")
    summary = json.loads((out / "report.json").read_text())
    assert [p["status"] for p in summary["parts"]] == ["pass"] * 4
    for log in ("devices.log", "dali_smoke.log", "train_bf16.log", "eval_bf16.log",
                "benchmark_resnet_tiny_bf16.log"):
        assert (out / log).is_file()


def test_quick_check_without_dali_or_tensorflow_reports_every_part_despite_a_failure(
        tmp_path):
    """--quick in a Python that has JAX but neither DALI nor TensorFlow: the DALI parts are
    skipped with one line each, the synthetic benchmark runs, and a part made to fail is a
    failed line (exit 1) while the parts after it still run and are reported."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_WITHOUT_DALI_AND_TENSORFLOW)
    out = tmp_path / "check"
    result = run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--cpu", "--quick",
                  f"--out={out}", "--precisions=bf16", "--fail=devices"],
                 PY=sys.executable, PYTHONPATH=str(blocker), timeout=600)
    assert result.returncode == 1, result.output
    summary = json.loads((out / "report.json").read_text())
    statuses = {p["name"]: (p["status"], p["lines"]) for p in summary["parts"]}
    assert list(statuses) == ["devices", "DALI smoke test", "train bf16",
                              "benchmark resnet_tiny bf16"]
    assert statuses["devices"][0] == "FAIL"
    assert "injected failure of devices" in statuses["devices"][1][0]
    for part in ("DALI smoke test", "train bf16"):
        assert statuses[part] == ("skipped", [
            "DALI is not installed here (it is nvidia-dali-cuda120 on PyPI): this part reads "
            "JPEGs through it"])
    assert statuses["benchmark resnet_tiny bf16"][0] == "pass"
    assert [(r["mode"], r["data"]) for r in summary["throughput"]] == [
        ("train", "synthetic"), ("infer", "synthetic")]
    report = (out / "report.md").read_text()
    assert "### devices: **FAIL**" in report
    assert report.rstrip().endswith(
        "failed: devices (skipped: DALI smoke test, train bf16)")
    assert "gpu_check: devices: FAIL" in result.stdout


def test_a_part_that_hangs_is_killed_at_its_limit_and_its_output_kept(tmp_path):
    log = str(tmp_path / "hang.log")
    start = time.perf_counter()
    outcome = gpu_check.run_logged(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
        log, timeout=2, env=dict(os.environ))
    assert outcome.code is None and time.perf_counter() - start < 20
    assert "started" in outcome.output
    try:
        gpu_check._ended(outcome, "the benchmark")
    except gpu_check.PartFailed as failure:
        assert str(failure) == "the benchmark timed out after 2 s (see hang.log)"
    else:
        raise AssertionError("a timed-out part must fail")


def test_quick_plan_fits_its_budget_and_puts_training_first():
    parts = gpu_check.plan(quick=True, cpu=False, precisions=["bf16", "fp16"], devices=8)
    assert [p.name for p in parts] == [
        "devices", "DALI smoke test", "train bf16", "benchmark resnet50_v15 bf16",
        "benchmark resnet50_v15 bf16, one GPU", "train fp16", "benchmark resnet50_v15 fp16",
        "benchmark se_resnext101_32x4d bf16"]
    assert gpu_check.QUICK_BUDGET == 8 * 60
