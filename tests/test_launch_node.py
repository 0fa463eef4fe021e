"""scripts/launch_node.sh: one process per GPU on a node, each told its part of the job."""

import json
import os
import sys

from conftest import ROOT, run

from resnet_jax import parallel

LAUNCH = os.path.join(ROOT, "scripts", "launch_node.sh")
# Stands in for the trainer: prints what it was told, exits with $EXIT_CODE for process 1.
_CHILD = ("import json, os, sys; keys = ('JAX_PROCESS_ID', 'JAX_NUM_PROCESSES', "
          "'JAX_COORDINATOR_ADDRESS', 'JAX_LOCAL_DEVICE_IDS'); "
          "print(json.dumps({k: os.environ[k] for k in keys}), flush=True); "
          "sys.exit(int(os.environ.get('EXIT_CODE', 0)) if os.environ['JAX_PROCESS_ID'] == '1' "
          "else 0)")


def test_each_process_gets_its_gpu_and_the_job_plans_one_process_per_gpu():
    result = run(["bash", LAUNCH, sys.executable, "-c", _CHILD], CUDA_VISIBLE_DEVICES="4,5,6,7",
                 JAX_COORDINATOR_PORT="23456")
    assert result.returncode == 0, result.output
    told = sorted((json.loads(line) for line in result.stdout.splitlines()),
                  key=lambda e: int(e["JAX_PROCESS_ID"]))
    assert [e["JAX_LOCAL_DEVICE_IDS"] for e in told] == ["0", "1", "2", "3"]
    assert {e["JAX_NUM_PROCESSES"] for e in told} == {"4"}
    assert {e["JAX_COORDINATOR_ADDRESS"] for e in told} == {"127.0.0.1:23456"}
    for environ in told:  # what resnet_jax.parallel makes of it on that node
        launch = parallel.plan(environ=dict(environ, CUDA_VISIBLE_DEVICES="4,5,6,7"))
        assert launch.num_processes == 4 and launch.expected_gpus == 1
        assert launch.local_device_ids == (int(environ["JAX_PROCESS_ID"]),)


def test_a_failed_process_fails_the_launch_with_its_code():
    result = run(["bash", LAUNCH, sys.executable, "-c", _CHILD], GPUS="2", EXIT_CODE="3")
    assert result.returncode == 3, result.output


def test_no_gpu_found_says_how_to_set_the_count():
    result = run(["bash", LAUNCH, sys.executable, "-c", "pass"], CUDA_VISIBLE_DEVICES="",
                 PATH="/usr/bin:/bin")
    assert result.returncode == 2
    assert result.stderr.startswith("error: launch_node.sh found no GPU"), result.output
    assert "set GPUS=N" in result.stderr
