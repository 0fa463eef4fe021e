"""Several processes: a 2-process run on localhost (gloo collectives) equals a 1-process run.

Each process is `python -m resnet_jax.main` with 4 simulated CPU devices,
joined by --coordinator_address / --num_processes / --process_id; the
1-process reference has 8 devices. Both see the same global batches (the
synthetic backend draws the same global array whatever the process count), so
with per-device BN both normalize the same groups and must end with the same
parameters.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from resnet_jax import checkpoint, convert, parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "resnet50_v15.py")
FLAGS = ["--config.arch=resnet_tiny", "--config.num_classes=5", "--config.precision=fp32",
         "--config.data.backend=synthetic", "--config.data.synthetic_train_images=24",
         "--config.per_device_batch_size=1", "--config.image_size=32", "--config.num_epochs=2",
         "--config.warmup_epochs=0", "--config.log_every_steps=1"]


def _start(workdir, devices, *extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    command = [sys.executable, "-m", "resnet_jax.main", f"--config={RECIPE}",
               f"--workdir={workdir}", *FLAGS, *extra]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _final_params(workdir):
    directory, step = checkpoint.resolve(workdir)
    abstract = convert.abstract_variables("resnet_tiny", 5)
    mesh = parallel.make_mesh(jax.devices()[:1])
    return step, jax.device_get(
        checkpoint.restore_model(directory, step, abstract, parallel.replicated(mesh)))


def test_two_processes_train_like_one(tmp_path):
    single = _start(tmp_path / "one", 8)
    single_output = _finish(single)
    port = _free_port()
    processes = [_start(tmp_path / "two", 4, f"--coordinator_address=localhost:{port}",
                        "--num_processes=2", f"--process_id={i}") for i in range(2)]
    outputs = [_finish(p) for p in processes]

    assert "8 devices, 1 processes, global batch 8" in single_output
    assert "8 devices, 2 processes, global batch 8" in outputs[0]
    # Only process 0 logs progress and writes metrics.
    assert "img/s" in outputs[0] and "img/s" not in outputs[1]
    with open(tmp_path / "two" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]  # once each: process 1 wrote none

    (step_one, one), (step_two, two) = _final_params(tmp_path / "one"), _final_params(
        tmp_path / "two")
    assert step_one == step_two == 6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one, two)
