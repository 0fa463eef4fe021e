"""scripts/gpu_check.sh: the GPU owner's first command, dry-run on the CPU."""

import json
import os
import re
import sys
import time
import zipfile

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
# And a benchmark killed as it starts its second row (as a time limit or a crash would): the
# rows it finished must still reach the report.
_KILL_AT_SECOND_ROW = '''
import importlib.util
import os
import signal


class _KillAtSecondRow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "resnet_jax.bench.throughput":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            measure, calls = module.measure, []

            def measure_then_die(*args, **kwargs):
                calls.append(1)
                if len(calls) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return measure(*args, **kwargs)

            module.measure = measure_then_die

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _KillAtSecondRow())
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
    # The probe ran with the settings the parts use, and said which they were.
    assert "GPUs seen before JAX starts: 0 (from CUDA_VISIBLE_DEVICES)" in report
    assert re.search(r"^with XLA_FLAGS='[^']*--xla_force_host_platform_device_count=2[^']*': a "
                     r"jitted matmul on cpu agrees$", report, re.M)
    parts = ["devices", "benchmark resnet_tiny bf16", "DALI smoke test", "train bf16"]
    assert re.findall(r"^### (.+): pass", report, re.M) == parts
    assert "- train batch (8, 32, 32, 3) float16, sharded over 2 cpu device(s)" in report
    assert "- train_step compiled 1 time(s)" in report
    loss = re.search(r"loss ([\d.]+) -> ([\d.]+) \(mean of the first and last", report)
    assert float(loss.group(2)) < float(loss.group(1))
    # The CPU is deterministic: the same top-1 to the last digit.
    assert re.search(r"mode=eval top1 ([\d.]+)% vs \1% in training \(the same\)", report)
    # The throughput table: the benchmark's rows, then the training part's DALI rate.
    rows = [line for line in report.splitlines() if line.startswith("| resnet_tiny |")]
    assert [r.split("|")[2:5] for r in rows] == [
        [" train ", " synthetic ", " bf16 "], [" train ", " dali_cpu ", " bf16 "],
        [" train ", " dali_cpu ", " bf16 "]]
    assert report.rstrip().endswith("every check passed")
    summary = json.loads((out / "report.json").read_text())
    assert [p["status"] for p in summary["parts"]] == ["pass"] * 4
    # The terminal has the benchmark's figure as soon as its part ends.
    assert re.search(r"^gpu_check: benchmark resnet_tiny bf16: pass \(\d+ s\): train synthetic "
                     r"batch 4/GPU on 2 device\(s\): [\d,]+ img/s per GPU$", result.stdout, re.M)
    for log in ("devices.log", "dali_smoke.log", "train_bf16.log", "eval_bf16.log",
                "benchmark_resnet_tiny_bf16.log"):
        assert (out / log).is_file()


def test_quick_check_without_dali_or_tensorflow_reports_every_part_despite_failures(
        tmp_path):
    """--quick in a Python that has JAX but neither DALI nor TensorFlow: the DALI parts are
    skipped with one line each, the synthetic benchmarks run, a part made to fail is a
    failed line (exit 1) while the parts after it still run, and a benchmark killed after
    its first row keeps that row in the report."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_WITHOUT_DALI_AND_TENSORFLOW + _KILL_AT_SECOND_ROW)
    out = tmp_path / "check"
    result = run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--cpu", "--quick",
                  f"--out={out}", "--precisions=bf16", "--fail=devices"],
                 PY=sys.executable, PYTHONPATH=str(blocker), timeout=600)
    assert result.returncode == 1, result.output
    summary = json.loads((out / "report.json").read_text())
    statuses = {p["name"]: (p["status"], p["lines"]) for p in summary["parts"]}
    assert list(statuses) == ["devices", "benchmark resnet_tiny bf16", "DALI smoke test",
                              "train bf16", "benchmark resnet_tiny bf16 inference"]
    assert statuses["devices"][0] == "FAIL"
    assert "injected failure of devices" in statuses["devices"][1][0]
    for part in ("DALI smoke test", "train bf16"):
        assert statuses[part] == ("skipped", [
            "DALI is not installed here (it is nvidia-dali-cuda120 on PyPI): this part reads "
            "JPEGs through it"])
    assert statuses["benchmark resnet_tiny bf16"][0] == "pass"
    # Killed at its second row (batch 8): the first (batch 1) is kept, in the part and table.
    status, lines = statuses["benchmark resnet_tiny bf16 inference"]
    assert status == "FAIL"
    assert re.fullmatch(r"the benchmark exited -9: .*\(see benchmark_resnet_tiny_bf16_infer"
                        r"\.log\); the 1 row\(s\) it finished are below", lines[0])
    assert re.fullmatch(r"- infer synthetic batch 1/GPU on 2 device\(s\): [\d,]+ img/s per GPU",
                        lines[1])
    assert [(r["mode"], r["data"], r["batch"]) for r in summary["throughput"]] == [
        ("train", "synthetic", 4), ("infer", "synthetic", 1)]
    report = (out / "report.md").read_text()
    assert "### devices: **FAIL**" in report
    assert report.rstrip().endswith(
        "failed: devices, benchmark resnet_tiny bf16 inference (skipped: DALI smoke test, "
        "train bf16)")
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


def test_quick_plan_gives_the_first_figure_first_and_measures_command_buffers():
    parts = gpu_check.plan(quick=True, cpu=False, precisions=["bf16", "fp16"], devices=8)
    assert [p.name for p in parts] == [
        "devices", "benchmark resnet50_v15 bf16", "benchmark resnet50_v15 bf16, one GPU",
        "benchmark resnet50_v15 bf16, no command buffers", "compiled program resnet50_v15 bf16",
        "DALI smoke test", "train bf16", "train fp16", "benchmark resnet50_v15 fp16",
        "benchmark se_resnext101_32x4d bf16", "benchmark resnet50_v15 bf16 inference"]
    assert gpu_check.QUICK_BUDGET == 7 * 60
    # RN50 v1.5 bf16 training beside PyTorch is out within 3 minutes at the latest.
    assert parts[0].timeout + parts[1].timeout <= gpu_check.FIRST_FIGURE_SECONDS == 180
    # On one GPU without DALI (a ready-made container), RN50 v1.5 bf16 with and without
    # command buffers and its counted ceiling fit the budget even if each part takes its
    # whole time limit, with room for fp16 when they take half of it.
    one_gpu = [p for p in gpu_check.plan(quick=True, cpu=False, precisions=["bf16", "fp16"],
                                         devices=1) if not p.needs_dali]
    assert [p.name for p in one_gpu][:5] == [
        "devices", "benchmark resnet50_v15 bf16",
        "benchmark resnet50_v15 bf16, no command buffers", "compiled program resnet50_v15 bf16",
        "benchmark resnet50_v15 fp16"]
    assert sum(p.timeout for p in one_gpu[:4]) <= gpu_check.QUICK_BUDGET
    assert sum(p.timeout for p in one_gpu[:4]) / 2 + one_gpu[4].timeout <= gpu_check.QUICK_BUDGET


def test_a_part_that_no_longer_fits_the_budget_is_skipped_not_failed(tmp_path):
    """A part starts only when its whole time limit fits in what is left: the check ends
    within its budget, and a part cut short by it cannot happen."""
    now = [0.0]
    ran = []

    def part(name, seconds):
        def run(ctx, timeout):
            ran.append((name, timeout))
            now[0] += seconds
            return [f"- {name} done"]
        return run

    parts = [gpu_check.Part("a", part("a", 10), 30), gpu_check.Part("b", part("b", 70), 80),
             gpu_check.Part("c", part("c", 5), 30), gpu_check.Part("d", part("d", 5), 20),
             gpu_check.Part("e", part("e", 5), 10, needs_dali=True)]
    report = gpu_check.Report(str(tmp_path), ["# check", ""], [])
    gpu_check.run_parts(parts, None, report, deadline=100.0, budget=100.0, has_dali=False,
                        clock=lambda: now[0])
    assert ran == [("a", 30), ("b", 80), ("d", 20)]
    assert [(p["name"], p["status"]) for p in report.parts] == [
        ("a", "pass"), ("b", "pass"), ("c", "skipped (budget)"), ("d", "pass"),
        ("e", "skipped")]
    assert report.parts[2]["lines"] == [
        "it may take 30 s and 20 s of the 100 s budget are left: raise --budget, or run the "
        "full check (without --quick)"]
    assert report.finish() == "every check passed (skipped: c, e)"
    assert not report.failed


def test_gpu_check_runs_from_a_checkout_with_wheels_and_nothing_installed(tmp_path):
    """scripts/gpu_check.py puts the checkout and the wheels of $WHEELS (default .whl/) on its
    own path and on PYTHONPATH for the parts' processes."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "marker-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("wheel_marker.py", "FROM_WHEEL = True\n")
    probe = ("import os, runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); "
             "import resnet_jax, wheel_marker; "
             "print(os.path.dirname(os.path.dirname(resnet_jax.__file__))); "
             "print(os.environ['PYTHONPATH'])")
    result = run([sys.executable, "-c", probe, os.path.join(ROOT, "scripts", "gpu_check.py")],
                 WHEELS=str(wheels))
    assert result.returncode == 0, result.output
    package_root, pythonpath = result.stdout.splitlines()[-2:]
    assert package_root == ROOT
    assert pythonpath.split(os.pathsep)[:2] == [
        ROOT, str(wheels / "marker-1.0-py3-none-any.whl")]
