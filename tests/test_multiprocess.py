"""Several processes: a 2-node SLURM job, simulated on localhost, trains exactly like 1 process.

Each process is `python -m resnet_jax.main` started with the environment that
`srun` gives a one-task-per-node job (SLURM_PROCID, SLURM_NODEID,
SLURM_STEP_TASKS_PER_NODE=1(x2), SLURM_JOB_NODELIST=localhost) and 2
simulated CPU devices, joined over gloo; the reference is 1 process with 4
devices (on 2 cores, 4 devices a node prove what 8 would, in half the time).
Both see the same global batches (the synthetic backend draws the same global
array whatever the process count), and with per-device BN both normalize the
same groups of 4 images, so they must end with the same parameters. A process
that drove only one device of its node, as JAX's own SLURM detection would
make it, would change the global batch and fail here.
"""

import json
import socket
import sys

from conftest import RECIPE, TINY, assert_tree_equal, final_variables, start

# The tiny recipe on synthetic images: 32 a epoch, 2 steps of 16.
FLAGS = [*TINY, "--config.data.backend=synthetic", "--config.data.synthetic_train_images=32",
         "--config.num_epochs=2", "--config.warmup_epochs=0", "--config.log_every_steps=1"]


def _start(workdir, devices, **env):
    command = [sys.executable, "-m", "resnet_jax.main", f"--config={RECIPE}",
               f"--workdir={workdir}", *FLAGS]
    return start(command, devices=devices, **env)


def _finish(process, code=0):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == code, output
    return output


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _srun_env(procid, port):
    """What srun sets for task `procid` of `sbatch --nodes=2 --ntasks-per-node=1`."""
    return {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_PROCID": str(procid), "SLURM_LOCALID": "0", "SLURM_NODEID": str(procid),
            "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_TASKS_PER_NODE": "1(x2)",
            "SLURM_JOB_NODELIST": "localhost", "SLURM_STEP_NODELIST": "localhost",
            "JAX_COORDINATOR_PORT": str(port)}


def test_two_slurm_nodes_of_2_devices_train_like_one_process_of_4(tmp_path):
    port = _free_port()
    # All three at once: the 1-process reference and the 2-process job share the cores.
    single = _start(tmp_path / "one", 4)
    processes = [_start(tmp_path / "two", 2, **_srun_env(i, port)) for i in range(2)]
    outputs = [_finish(p) for p in processes]
    single_output = _finish(single)

    assert "4 devices, 1 processes, global batch 16" in single_output
    assert "4 devices, 2 processes, global batch 16" in outputs[0]
    # Every process says which devices it has; only process 0 logs progress and metrics.
    for i, output in enumerate(outputs):
        assert f"process {i} of 2: 2 local and 4 global devices (cpu)" in output
    assert "img/s" in outputs[0] and "img/s" not in outputs[1]
    with open(tmp_path / "two" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == [1, 2, 3, 4]  # once each: process 1 wrote none

    (step_one, one), (step_two, two) = (final_variables(tmp_path / "one"),
                                        final_variables(tmp_path / "two"))
    assert step_one == step_two == 4
    assert_tree_equal(one, two, rtol=1e-5, atol=1e-6)


def test_processes_with_different_device_counts_stop_with_one_line(tmp_path):
    port = _free_port()
    processes = [_start(tmp_path / "run", devices, **_srun_env(i, port))
                 for i, devices in enumerate((2, 1))]
    outputs = [_finish(p, code=2) for p in processes]
    for output in outputs:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert errors == ["error: the processes drive different numbers of devices (process 0: "
                          "2, process 1: 1): give every process the same number of GPUs (the "
                          "same --gpus-per-node on every node, or the same count in "
                          "JAX_LOCAL_DEVICE_IDS)"], output
        assert "Traceback" not in output
