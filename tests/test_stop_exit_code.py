"""RESNET_JAX_STOP_EXIT_CODE: the exit code of a run that a signal stopped, its checkpoint
saved (0 by default; the Kubernetes manifest sets 143 so that the Job does not count the
pod as done)."""

import os
import signal

from conftest import error_line, main_command, run, start


def test_a_run_stopped_by_sigterm_exits_with_the_configured_code(tmp_path, demo_root):
    command = main_command(tmp_path / "run", demo_root, "--config.num_epochs=3",
                           "--config.warmup_epochs=1", "--config.log_every_steps=1")
    process = start(command, RESNET_JAX_STOP_EXIT_CODE="143")
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "step 2/12" in line:
            process.send_signal(signal.SIGTERM)
            break
    lines.extend(process.stdout)
    process.wait(timeout=300)
    output = "".join(lines)
    assert process.returncode == 143, output
    assert "stopped by SIGTERM after step" in output
    assert os.listdir(tmp_path / "run" / "checkpoints")  # saved before the exit


def test_a_bad_stop_exit_code_stops_before_training(tmp_path, demo_root):
    result = run(main_command(tmp_path / "run", demo_root), RESNET_JAX_STOP_EXIT_CODE="term")
    assert error_line(result) == (
        "error: RESNET_JAX_STOP_EXIT_CODE='term' is not an exit code: set it to a number from "
        "0 to 255 (e.g. 143) or unset it")
    assert not os.path.exists(tmp_path / "run")
