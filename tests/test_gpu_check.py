"""scripts/gpu_check.sh --cpu: the GPU owner's first command, dry-run on the CPU."""

import os
import re
import sys

from conftest import ROOT, run


def test_gpu_check_dry_run_trains_evaluates_benchmarks_and_reports(tmp_path):
    out = tmp_path / "check"
    result = run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--cpu",
                  f"--out={out}", "--precisions=bf16"], PY=sys.executable, timeout=600)
    assert result.returncode == 0, result.output
    assert f"every check passed; report in {out}/report.md" in result.stdout
    report = (out / "report.md").read_text()
    assert "# resnet_jax GPU check (dry run on the CPU)" in report
    assert re.search(r"^\d+\.\d+\.\d+ cpu 2$", report, re.M)  # jax version, platform, devices
    (row,) = [line for line in report.splitlines() if line.startswith("| bf16 |")]
    cells = row.strip("|").split("|")
    assert [c.strip().split(":")[0] for c in cells[1:4]] == ["pass", "pass", "pass"], row
    assert "train_step compiled 1 time(s)" in row
    assert "resnet_tiny          train dali_cpu  bf16" in report  # the benchmark's row
    assert report.rstrip().endswith("every check passed")
    for log in ("train_bf16.log", "eval_bf16.log", "benchmark_all devices.log"):
        assert (out / log).is_file()
