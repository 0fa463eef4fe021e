"""Several processes: a 2-process run on localhost (gloo collectives) equals a 1-process run.

Each process is `python -m resnet_jax.main` with 1 simulated CPU device,
joined by --coordinator_address / --num_processes / --process_id; the
1-process reference has 2 devices. Both see the same global batches (the
synthetic backend draws the same global array whatever the process count), so
with per-device BN both normalize the same groups and must end with the same
parameters.
"""

import json
import socket
import sys

from conftest import RECIPE, assert_same_variables, final_variables, start

FLAGS = ["--config.arch=resnet_tiny", "--config.num_classes=5", "--config.precision=fp32",
         "--config.data.backend=synthetic", "--config.data.synthetic_train_images=24",
         "--config.per_device_batch_size=4", "--config.image_size=32", "--config.num_epochs=2",
         "--config.warmup_epochs=0", "--config.log_every_steps=1", "--config.tensorboard=false"]


def _start(workdir, devices, *extra):
    command = [sys.executable, "-m", "resnet_jax.main", f"--config={RECIPE}",
               f"--workdir={workdir}", *FLAGS, *extra]
    return start(command, devices=devices)


def _finish(process):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    port = _free_port()
    # All three at once: the 1-process reference and the 2-process job share the cores.
    single = _start(tmp_path / "one", 2)
    processes = [_start(tmp_path / "two", 1, f"--coordinator_address=localhost:{port}",
                        "--num_processes=2", f"--process_id={i}") for i in range(2)]
    outputs = [_finish(p) for p in processes]
    single_output = _finish(single)

    assert "2 devices, 1 processes, global batch 8" in single_output
    assert "2 devices, 2 processes, global batch 8" in outputs[0]
    # Every process says which devices it has; only process 0 logs progress and metrics.
    for i, output in enumerate(outputs):
        assert f"process {i} of 2: 1 local and 2 global devices (cpu)" in output
    assert "img/s" in outputs[0] and "img/s" not in outputs[1]
    with open(tmp_path / "two" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]  # once each: process 1 wrote none

    (step_one, one), (step_two, two) = (final_variables(tmp_path / "one", num_classes=5),
                                        final_variables(tmp_path / "two", num_classes=5))
    assert step_one == step_two == 6
    assert_same_variables(one, two, rtol=1e-5, atol=1e-6)
