"""Launches: what each process of a SLURM, Open MPI, Kubernetes or explicit launch joins and
drives, and a join that cannot happen stopping at once.

`parallel.plan` reads a launcher's environment as it is on a real node; each
case gives the environment a process would see and checks the coordinator,
process count and id, and the GPUs it drives (None: every GPU it sees).
`parallel.check_coordinator` runs before JAX joins: an unresolvable host or a
port that never opens is one error line within seconds, not JAX's 300 s wait.
"""

import socket
import sys
import threading
import time

from conftest import error_line, main_command, run
import pytest

from resnet_jax import config as config_lib
from resnet_jax import parallel
from resnet_jax.errors import ConfigError


def _slurm(procid, localid, nodeid, *, ntasks, tasks_per_node, nodelist="gpu[007-008]",
           job_id="4242", **extra):
    env = {"SLURM_JOB_ID": job_id, "SLURM_NTASKS": str(ntasks),
           "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_PROCID": str(procid),
           "SLURM_LOCALID": str(localid), "SLURM_NODEID": str(nodeid),
           "SLURM_STEP_TASKS_PER_NODE": tasks_per_node, "SLURM_TASKS_PER_NODE": tasks_per_node,
           "SLURM_JOB_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist}
    env.update(extra)
    return env


PORT_4242 = 61440 + 4242 % 4096


def test_slurm_one_task_per_node_drives_every_gpu_of_its_node():
    """sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8: 16 GPUs, not 2."""
    for procid in (0, 1):
        env = _slurm(procid, 0, procid, ntasks=2, tasks_per_node="1(x2)",
                     CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7", SLURM_STEP_GPUS="0,1,2,3,4,5,6,7")
        launch = parallel.plan(environ=env)
        assert (launch.launcher, launch.num_processes, launch.process_id) == ("slurm", 2, procid)
        assert launch.coordinator_address == f"gpu007:{PORT_4242}"
        assert launch.local_device_ids is None and launch.expected_gpus == 8


def test_slurm_one_task_per_gpu_drives_one_gpu_each():
    # Tasks that all see the node's 8 GPUs take one each, by local rank.
    for procid, localid, nodeid in ((0, 0, 0), (5, 5, 0), (13, 5, 1)):
        env = _slurm(procid, localid, nodeid, ntasks=16, tasks_per_node="8(x2)",
                     CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7", SLURM_STEP_GPUS="0,1,2,3,4,5,6,7")
        launch = parallel.plan(environ=env)
        assert launch.process_id == procid and launch.local_device_ids == (localid,)
    # Tasks that SLURM bound to their own GPU (--gpus-per-task=1) keep it.
    env = _slurm(13, 5, 1, ntasks=16, tasks_per_node="8(x2)", CUDA_VISIBLE_DEVICES="5",
                 SLURM_STEP_GPUS="0,1,2,3,4,5,6,7")
    launch = parallel.plan(environ=env)
    assert launch.local_device_ids is None and launch.expected_gpus == 1


def test_slurm_two_tasks_per_node_share_the_gpus_evenly_or_say_how():
    env = _slurm(3, 1, 1, ntasks=4, tasks_per_node="2(x2)", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
    assert parallel.plan(environ=env).local_device_ids == (4, 5, 6, 7)
    env = _slurm(3, 2, 1, ntasks=6, tasks_per_node="3(x2)", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
    with pytest.raises(ConfigError, match=r"the 8 GPUs of this node cannot be shared evenly by "
                                          r"its 3 processes .*: start 1, 2, 4, 8 processes"):
        parallel.plan(environ=env)


def test_slurm_outside_srun_or_with_one_task_is_a_single_process():
    assert parallel.plan(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}).launcher == "single"
    env = _slurm(0, 0, 0, ntasks=1, tasks_per_node="1")
    assert parallel.plan(environ=env).num_processes == 1


@pytest.mark.parametrize("nodelist, host", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-016],host2", "node001"),
    ("node[007,009-015]", "node007"), ("rack[2-3]-gpu[01-04]", "rack2-gpu01"),
    ("a-b[3,5]-ib,c", "a-b3-ib"),
])
def test_first_host_of_a_slurm_host_list(nodelist, host):
    assert parallel.first_host(nodelist) == host


def test_slurm_task_counts():
    assert parallel.tasks_per_node("8(x2),4") == [8, 8, 4]
    with pytest.raises(ConfigError, match="is not in SLURM's format"):
        parallel.tasks_per_node("eight")


def _ompi(rank, local_rank, *, size, local_size, **extra):
    env = {"OMPI_COMM_WORLD_SIZE": str(size), "OMPI_COMM_WORLD_RANK": str(rank),
           "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank),
           "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size)}
    env.update(extra)
    return env


def test_open_mpi_4_one_process_per_node():
    uri = "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"
    env = _ompi(1, 0, size=2, local_size=1, OMPI_MCA_orte_hnp_uri=uri,
                CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
                # mpirun inside a SLURM allocation: SLURM's variables are there too.
                SLURM_JOB_ID="9", SLURM_NTASKS="2", SLURM_PROCID="0", SLURM_LOCALID="0")
    launch = parallel.plan(environ=env)
    assert (launch.launcher, launch.num_processes, launch.process_id) == ("openmpi", 2, 1)
    assert launch.coordinator_address == f"10.96.0.1:{61440 + (1531576320 // 4096) % 4096}"
    assert launch.local_device_ids is None and launch.expected_gpus == 8


def test_open_mpi_5_one_process_per_gpu():
    """Open MPI 5 (PRRTE) has no OMPI_MCA_orte_hnp_uri; mpirun's host is in the namespace."""
    env = _ompi(9, 1, size=16, local_size=8, PMIX_NAMESPACE="prterun-dgx-a01-123456@1",
                PMIX_RANK="9", PRTE_LAUNCHED="1", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
    launch = parallel.plan(environ=env)
    assert launch.coordinator_address == f"dgx-a01:{61440 + 123456 % 4096}"
    assert (launch.num_processes, launch.process_id, launch.local_device_ids) == (16, 9, (1,))


def test_open_mpi_without_a_coordinator_says_how_to_give_one():
    env = _ompi(0, 0, size=2, local_size=1)
    with pytest.raises(ConfigError, match=r"cannot tell where process 0 runs from the openmpi "
                                          r"launch \(OMPI_COMM_WORLD_SIZE.*\): pass "
                                          r"--coordinator_address=HOST:PORT"):
        parallel.plan(environ=env)
    launch = parallel.plan("head:1234", environ=env)  # the flag completes the launch
    assert (launch.launcher, launch.coordinator_address, launch.num_processes) == (
        "flags", "head:1234", 2)


def test_explicit_values_and_local_device_ids():
    launch = parallel.plan(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                    "JAX_PROCESS_ID": "1", "JAX_LOCAL_DEVICE_IDS": "2,3"})
    assert (launch.launcher, launch.process_id, launch.local_device_ids) == ("flags", 1, (2, 3))
    launch = parallel.plan("h:1", 2, 0, environ={}, gpus=8)
    assert launch.local_device_ids is None and launch.expected_gpus == 8
    with pytest.raises(ConfigError, match="needs all of --coordinator_address"):
        parallel.plan(None, 2, 0, environ={})
    with pytest.raises(ConfigError, match=r"process id 2 is not in 0..1"):
        parallel.plan("h:1", 2, 2, environ={})
    with pytest.raises(ConfigError, match="JAX_LOCAL_DEVICE_IDS='a,b' is not a list"):
        parallel.plan("h:1", 2, 0, environ={"JAX_LOCAL_DEVICE_IDS": "a,b"})


def _pod(index, *, completions=2, job="resnet-jax", service="resnet-jax", **extra):
    """What scripts/k8s/resnet50.yaml gives pod `index` of its Indexed Job."""
    env = {"JOB_COMPLETION_INDEX": str(index), "JOB_COMPLETIONS": str(completions),
           "JOB_NAME": job, "JOB_SERVICE": service, "HOSTNAME": f"{job}-{index}",
           "KUBERNETES_SERVICE_HOST": "10.0.0.1", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    env.update(extra)
    return env


def test_kubernetes_indexed_job_pods_join_pod_0_through_the_headless_service():
    for index in (0, 3):
        launch = parallel.plan(environ=_pod(index, completions=4))
        assert (launch.launcher, launch.num_processes, launch.process_id) == (
            "kubernetes", 4, index)
        assert launch.coordinator_address == "resnet-jax-0.resnet-jax:55527"
        assert launch.local_device_ids is None and launch.expected_gpus == 8
        assert launch.describe() == "JOB_COMPLETION_INDEX, JOB_COMPLETIONS, JOB_NAME, JOB_SERVICE"
    launch = parallel.plan(environ=_pod(1, JAX_COORDINATOR_PORT="12345"))
    assert launch.coordinator_address == "resnet-jax-0.resnet-jax:12345"
    # Without $JOB_NAME, the pod's hostname (<job>-<index>) gives the Job's name.
    env = _pod(1, job="rn50")
    del env["JOB_NAME"]
    launch = parallel.plan(environ=env)
    assert launch.coordinator_address == "rn50-0.resnet-jax:55527" and "HOSTNAME" in launch.read
    # A JobSet's Job is <jobset>-<replicated job>-<i>, its default subdomain the JobSet's name.
    launch = parallel.plan(environ=_pod(1, job="rn50-workers-0", service="rn50"))
    assert launch.coordinator_address == "rn50-workers-0-0.rn50:55527"


def test_kubernetes_launch_needs_the_service_and_a_valid_index():
    with pytest.raises(ConfigError, match=r"cannot tell where process 0 runs from the kubernetes "
                                          r"launch \(.*JOB_SERVICE\): set \$JOB_SERVICE"):
        parallel.plan(environ=_pod(1, service=""))
    with pytest.raises(ConfigError, match=r"process id 2 is not in 0..1 \(JOB_COMPLETION_INDEX"):
        parallel.plan(environ=_pod(2))
    with pytest.raises(ConfigError, match="JOB_COMPLETIONS='two' is not a whole number"):
        parallel.plan(environ=_pod(1, completions="two"))
    # An Indexed Job without JOB_COMPLETIONS (a sweep of independent runs), or of one pod.
    env = _pod(1)
    del env["JOB_COMPLETIONS"]
    assert parallel.plan(environ=env).launcher == "single"
    assert parallel.plan(environ=_pod(0, completions=1)).launcher == "single"
    # Explicit values win over the pod's.
    launch = parallel.plan("head:1", environ=_pod(1))
    assert (launch.launcher, launch.coordinator_address, launch.process_id) == (
        "flags", "head:1", 1)


def _closed_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_unresolvable_coordinator_stops_at_once_naming_the_address():
    launch = parallel.plan("nonexistent-host.invalid:1234", 2, 1, environ={}, gpus=None)
    start = time.monotonic()
    # The wait only bounds a resolver that cannot answer (EAI_AGAIN): a name that does not
    # exist is final at once outside Kubernetes.
    with pytest.raises(ConfigError, match=r"process 1 of 2 cannot join: the coordinator address "
                                          r"nonexistent-host.invalid:1234 \(from "
                                          r"--coordinator_address, .*\) does not resolve .*: "
                                          r"pass --coordinator_address=HOST:PORT"):
        parallel.check_coordinator(launch, environ={"RESNET_JAX_COORDINATOR_WAIT": "3"})
    assert time.monotonic() - start < 4
    # Process 0 looks its own name up too: every process connects to it.
    launch = parallel.plan("nonexistent-host.invalid:1234", 2, 0, environ={}, gpus=None)
    with pytest.raises(ConfigError, match="does not resolve"):
        parallel.check_coordinator(launch, environ={"RESNET_JAX_COORDINATOR_WAIT": "3"})


def test_kubernetes_waits_for_pod_0_name_then_names_the_service():
    env = _pod(1, service="no-such-service.invalid", RESNET_JAX_COORDINATOR_WAIT="1")
    launch = parallel.plan(environ=env)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"resnet-jax-0.no-such-service.invalid:55527 \(from "
                                          r"JOB_COMPLETION_INDEX, .*\) does not resolve .*: "
                                          r"check that the headless Service \$JOB_SERVICE"):
        parallel.check_coordinator(launch, environ=env)
    assert 0.9 < time.monotonic() - start < 4  # retried for the wait: pod 0 may come later


def test_unreachable_coordinator_port_stops_after_the_wait():
    address = f"localhost:{_closed_port()}"
    launch = parallel.plan(address, 2, 1, environ={}, gpus=None)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"process 1 of 2 cannot join: the coordinator address "
                                          rf"{address} \(from --coordinator_address, .*\) does "
                                          rf"not answer after 1 s .*: check that process 0 was "
                                          rf"started .* RESNET_JAX_COORDINATOR_WAIT=SECONDS"):
        parallel.check_coordinator(launch, environ={"RESNET_JAX_COORDINATOR_WAIT": "1"})
    assert time.monotonic() - start < 4
    # Process 0 opens the port only when it joins: it is not checked. Nor with a wait of 0.
    start = time.monotonic()
    parallel.check_coordinator(parallel.plan(address, 2, 0, environ={}, gpus=None),
                               environ={"RESNET_JAX_COORDINATOR_WAIT": "1"})
    parallel.check_coordinator(launch, environ={"RESNET_JAX_COORDINATOR_WAIT": "0"})
    assert time.monotonic() - start < 0.5


def test_coordinator_that_opens_later_is_waited_for():
    server = socket.socket()
    server.bind(("localhost", 0))
    address = f"localhost:{server.getsockname()[1]}"
    opener = threading.Timer(0.7, server.listen)  # process 0 starts a little later
    opener.start()
    try:
        start = time.monotonic()
        parallel.check_coordinator(parallel.plan(address, 2, 1, environ={}, gpus=None),
                                   environ={"RESNET_JAX_COORDINATOR_WAIT": "10"})
        assert 0.6 < time.monotonic() - start < 5
    finally:
        opener.join()
        server.close()


def test_coordinator_wait_is_a_number_of_seconds():
    assert parallel.coordinator_wait({}) == parallel.DEFAULT_COORDINATOR_WAIT == 120
    assert parallel.coordinator_wait({"RESNET_JAX_COORDINATOR_WAIT": " 2.5 "}) == 2.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ConfigError, match=f"RESNET_JAX_COORDINATOR_WAIT='{bad}' is not a "
                                              "number of seconds: set it like 300"):
            parallel.coordinator_wait({"RESNET_JAX_COORDINATOR_WAIT": bad})
    launch = parallel.plan("node0", 2, 1, environ={}, gpus=None)
    with pytest.raises(ConfigError, match="coordinator address 'node0' is not HOST:PORT"):
        parallel.check_coordinator(launch, environ={})


def test_command_that_cannot_join_says_so_in_one_line(tmp_path):
    # The command checks the coordinator before JAX's own wait (the messages of every case:
    # the check_coordinator tests above).
    host, problem = "localhost", "does not answer after 1 s"
    for split in ("train", "val"):  # the data is read only after the join
        (tmp_path / "data" / split).mkdir(parents=True)
    address = f"{host}:{_closed_port()}"
    start = time.monotonic()
    result = run(main_command(tmp_path / "run", tmp_path / "data",
                              f"--coordinator_address={address}", "--num_processes=2",
                              "--process_id=1"),
                 RESNET_JAX_COORDINATOR_WAIT="1", timeout=60)
    line = error_line(result)
    assert line.startswith(f"error: process 1 of 2 cannot join: the coordinator address "
                           f"{address} (from --coordinator_address, "), line
    assert problem in line
    assert time.monotonic() - start < 30  # seconds (start-up included), not JAX's 300


def test_no_launcher_is_a_single_process():
    assert parallel.plan(environ={}, gpus=8) == parallel.Launch("single")


def test_gpus_are_found_where_a_sandboxed_kernel_shows_them(tmp_path, monkeypatch):
    """CUDA_VISIBLE_DEVICES, else the driver's list, else /dev/nvidiaN, else nvidia-smi -L:
    some sandboxed and containerised kernels show only the later ones."""
    assert parallel.find_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == (2, "CUDA_VISIBLE_DEVICES")
    assert parallel.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == 0
    proc, dev, bin_dir = tmp_path / "gpus", tmp_path / "dev", tmp_path / "bin"
    for folder in (proc, dev, bin_dir):
        folder.mkdir()
    monkeypatch.setattr(parallel, "_NVIDIA_GPUS", str(proc))
    monkeypatch.setattr(parallel, "_NVIDIA_DEVICE_FILES", str(dev / "nvidia[0-9]*"))
    environ = {"PATH": str(bin_dir)}
    assert parallel.find_gpus(environ) == (None, "none found")
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n[ \"$1\" = -L ] && printf 'GPU 0: NVIDIA H200 (UUID: GPU-a)\\n"
                   "GPU 1: NVIDIA H200 (UUID: GPU-b)\\n'\n")
    smi.chmod(0o755)
    assert parallel.find_gpus(environ) == (2, "nvidia-smi -L")
    for name in ("nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1", "nvidia2"):
        (dev / name).touch()  # the control and UVM files are no GPUs
    assert parallel.find_gpus(environ) == (3, f"{dev}/nvidia<N>")
    for gpu in ("0000:17:00.0", "0000:2a:00.0", "0000:3d:00.0", "0000:63:00.0"):
        (proc / gpu).mkdir()
    assert parallel.find_gpus(environ) == (4, str(proc))
    # The GPU settings follow the GPUs found, whichever the source.
    monkeypatch.setattr(parallel.jax.config, "update", lambda name, value: None)
    parallel.configure_runtime(environ=environ)
    assert environ[parallel.MEM_FRACTION] == "0.9"


def test_gpu_flags_are_added_unless_the_user_set_them(monkeypatch):
    cache_dirs = []
    monkeypatch.setattr(parallel.jax.config, "update",
                        lambda name, value: cache_dirs.append((name, value)))
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    parallel.configure_runtime(environ=env)  # synthetic data, DALI on the CPU: XLA's default
    assert env["XLA_FLAGS"] == ("--xla_dump_to=/tmp/x "
                                "--xla_gpu_enable_latency_hiding_scheduler=true")
    assert cache_dirs and cache_dirs[0][0] == "jax_compilation_cache_dir"
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    parallel.configure_runtime(dali_on_gpu=True, environ=env)  # DALI's GPU threads: off
    assert env["XLA_FLAGS"] == ("--xla_gpu_enable_latency_hiding_scheduler=true "
                                "--xla_gpu_enable_command_buffer=")
    env = {"CUDA_VISIBLE_DEVICES": "0", "JAX_COMPILATION_CACHE_DIR": "/elsewhere",
           "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false "
                        "--xla_gpu_enable_command_buffer=FUSION"}
    parallel.configure_runtime(deterministic=True, dali_on_gpu=True, environ=env)
    assert env["XLA_FLAGS"] == ("--xla_gpu_enable_latency_hiding_scheduler=false "
                                "--xla_gpu_enable_command_buffer=FUSION "
                                "--xla_gpu_deterministic_ops=true")
    assert len(cache_dirs) == 2  # the user's cache folder stands
    env = {"CUDA_VISIBLE_DEVICES": "", "JAX_COMPILATION_CACHE_DIR": "/elsewhere"}
    parallel.configure_runtime(dali_on_gpu=True, environ=env)  # no GPU: no GPU settings
    assert "XLA_FLAGS" not in env and parallel.MEM_FRACTION not in env
    # The trainer turns command buffers off exactly when it runs DALI on the GPUs.
    config = config_lib.recipe("resnet50_v15")
    assert config.data.backend == "dali_gpu" and parallel.dali_on_gpu(config)
    for backend in ("dali_cpu", "synthetic"):
        config.data.backend = backend
        assert not parallel.dali_on_gpu(config)


def test_gpu_memory_split_is_explicit_unless_the_user_chose(monkeypatch):
    """The name jaxlib 0.10 and 0.11 read is set; a user's variable of either name (or the
    allocator's) stands; both names at once, which jaxlib answers by starting no GPU, stop
    with one line."""
    monkeypatch.setattr(parallel.jax.config, "update", lambda name, value: None)
    config = config_lib.recipe("resnet50_v15")
    assert config.data.backend == "dali_gpu" and config.gpu_memory_fraction == 0
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    parallel.configure_runtime(memory_fraction=parallel.memory_fraction(config), environ=env)
    assert env["XLA_CLIENT_MEM_FRACTION"] == "0.7"  # the rest is DALI's
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env
    config.data.backend = "synthetic"
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    parallel.configure_runtime(memory_fraction=parallel.memory_fraction(config), environ=env)
    assert env["XLA_CLIENT_MEM_FRACTION"] == "0.9"
    config.gpu_memory_fraction = 0.55
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    parallel.configure_runtime(memory_fraction=parallel.memory_fraction(config), environ=env)
    assert env["XLA_CLIENT_MEM_FRACTION"] == "0.55"
    for variable in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                     "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR"):
        env = {"CUDA_VISIBLE_DEVICES": "0", variable: "0.3"}
        parallel.configure_runtime(memory_fraction=0.55, environ=env)
        assert env == {"CUDA_VISIBLE_DEVICES": "0", variable: "0.3",
                       "XLA_FLAGS": env["XLA_FLAGS"]}  # the user's choice stands
    env = {"CUDA_VISIBLE_DEVICES": "0", "XLA_CLIENT_MEM_FRACTION": "0.5",
           "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.6"}
    with pytest.raises(ConfigError, match=r"^both XLA_CLIENT_MEM_FRACTION=0.5 and "
                       r"XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 are set.*: unset "
                       r"XLA_PYTHON_CLIENT_MEM_FRACTION, its deprecated name$"):
        parallel.configure_runtime(environ=env)
    assert "XLA_FLAGS" not in env  # nothing set on the way to the error


def test_this_jaxlib_knows_every_flag_set_for_gpus():
    """XLA aborts on an unknown flag, and its CPU build parses the GPU ones too."""
    flags = [*(f"{k}={v}" for k, v in {**parallel.GPU_XLA_FLAGS,
                                        **parallel.DALI_GPU_XLA_FLAGS}.items()),
             "--xla_gpu_deterministic_ops=true"]
    result = run([sys.executable, "-c", "import jax; jax.numpy.ones(2).block_until_ready()"],
                 XLA_FLAGS=" ".join(flags))
    assert result.returncode == 0, result.output
