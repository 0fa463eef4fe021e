"""What the commands print: their own lines only, in any environment.

The commands run in conftest's controlled environment, which sets
TF_CPP_MIN_LOG_LEVEL=0 (TensorFlow's and XLA's C++ INFO lines on) as a
user's environment may.
"""

import logging
import os
import subprocess
import sys

from conftest import ROOT, run, start
import pytest

from resnet_jax import quiet

COMMANDS = [
    ["-m", "resnet_jax.main"],
    ["-m", "resnet_jax.classify"],
    ["-m", "resnet_jax.convert"],
    ["-m", "resnet_jax.export"],
    ["-m", "resnet_jax.data.demo"],
    ["-m", "resnet_jax.data.prepare_imagenet"],
    [os.path.join(ROOT, "scripts", "benchmark.py")],
    [os.path.join(ROOT, "scripts", "benchmark_data.py")],
    [os.path.join(ROOT, "scripts", "benchmark_epoch.py")],
    [os.path.join(ROOT, "scripts", "benchmark_feed.py")],
    [os.path.join(ROOT, "scripts", "gpu_check.py")],
    [os.path.join(ROOT, "scripts", "flops.py")],
]


@pytest.fixture(scope="module")
def help_outputs():
    """Every command's --help, run at once (their start-up is most of the time)."""
    processes = [start([sys.executable, *command, "--help"], stderr=subprocess.PIPE)
                 for command in COMMANDS]
    results = {}
    for command, process in zip(COMMANDS, processes, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        results[command[-1]] = (process.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1].rsplit("/", 1)[-1])
def test_help_prints_its_usage_and_nothing_else(command, help_outputs):
    code, stdout, stderr = help_outputs[command[-1]]
    result = subprocess.CompletedProcess(command, code, stdout, stderr)
    result.output = stdout + stderr
    # absl's --help (resnet_jax.main) exits 1 after printing the usage; argparse's exits 0.
    assert result.returncode == (1 if command[-1] == "resnet_jax.main" else 0), result.output
    assert result.stderr == "", result.output
    assert "--" in result.stdout and ("usage" in result.stdout.lower() or "flags" in result.stdout)


def _record(level, pathname, message):
    return logging.LogRecord("absl", level, pathname, 1, message, None, None)


def test_library_info_and_orbax_notes_are_dropped_ours_and_warnings_kept():
    keep = quiet._OwnLinesOnly().filter
    ours = os.path.join(os.path.dirname(quiet.__file__), "train", "loop.py")
    library = os.path.join(os.path.dirname(logging.__file__), "orbax", "manager.py")
    assert keep(_record(logging.INFO, ours, "epoch 1.00/2 step 4/8"))
    assert not keep(_record(logging.INFO, library, "Saving checkpoint at step 4"))
    assert keep(_record(logging.WARNING, library, "disk almost full"))
    assert not keep(_record(logging.WARNING, library, "Given directory is read only=/x"))
    assert not keep(_record(logging.WARNING, library,
                            "CheckpointManagerOptions.read_only=True, setting create=False."))


def test_native_logs_quiet_unless_verbose(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    quiet.quiet_native_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"  # its notice ignores the log level
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")  # the user's choice stands
    quiet.quiet_native_logs()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # quieter already: kept
    quiet.quiet_native_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    quiet.quiet_native_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert quiet.verbose()


def test_verbose_run_shows_the_libraries_lines(tmp_path):
    """RESNET_JAX_VERBOSE=1: XLA's C++ INFO lines come through (TF_CPP_MIN_LOG_LEVEL=0)."""
    result = run([sys.executable, "-c", "import resnet_jax, jax; jax.devices()"],
                 RESNET_JAX_VERBOSE="1")
    assert result.returncode == 0, result.output
    assert "PjRt" in result.stderr or "device count" in result.stderr, result.output
    quiet_result = run([sys.executable, "-c", "import resnet_jax, jax; jax.devices()"])
    assert quiet_result.output == ""


def test_tensorflow_loads_without_a_line():
    """clu's TensorBoard writer loads TensorFlow, which has notices of its own (oneDNN)."""
    result = run([sys.executable, "-c", "import resnet_jax, tensorflow"])
    assert result.returncode == 0 and result.output == "", result.output
