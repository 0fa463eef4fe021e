"""Processes, devices and shardings.

One mesh over every device of every process, with one axis, 'data': the
batch is split over it and the state is replicated on it.

`initialize()` joins the processes of a multi-process job and decides which
GPUs each one drives. It reads the launcher's environment itself (`plan`)
and passes every value to `jax.distributed.initialize` with JAX's own
cluster detection turned off, because that detection assumes one process
per GPU: under a one-task-per-node SLURM or Open MPI launch it would limit
each process to GPU 0 of its node. The launches:

* SLURM (`srun`), one task per node: each process drives every GPU it sees.
* SLURM, several tasks per node: the node's GPUs are split evenly between
  them, unless SLURM already bound each task to its own GPUs
  (`--gpus-per-task`, `--gpu-bind`), in which case each keeps its own.
* Open MPI 4 (`OMPI_MCA_orte_hnp_uri`) and 5 (PRRTE, `PMIX_NAMESPACE`):
  the same rule, from the `OMPI_COMM_WORLD_*` variables.
* Kubernetes: one pod per node of an Indexed Job (scripts/k8s/resnet50.yaml),
  each pod one process driving every GPU of the pod. Kubernetes sets
  $JOB_COMPLETION_INDEX (the process id); the manifest sets $JOB_COMPLETIONS
  (the Job's `completions`, the process count), $JOB_SERVICE (the headless
  Service named in the pod's `subdomain`) and $JOB_NAME (from the pod's
  `batch.kubernetes.io/job-name` label; else $HOSTNAME, `<job>-<index>` in an
  Indexed Job, gives it). Process 0 is then `<job>-0.<service>`, port
  $JAX_COORDINATOR_PORT or 55527 (JAX's Kubernetes default). A JobSet with one
  Job per replicated job (`replicas: 1`) gives the same variables (its Job is
  `<jobset>-<name>-0`, its default subdomain the JobSet's name).
  JAX's own Kubernetes detection is not used: it imports the `kubernetes`
  package (not a dependency here) and asks the API server for the pod, the
  Job and the Services, so every pod needs a service account allowed to list
  pods and services and read Jobs (a Role and RoleBinding many clusters do not
  give training jobs), and it cannot be tested without a cluster. The pod's
  environment says all that is needed, and is tested like SLURM's.
* Explicit: `--coordinator_address`, `--num_processes`, `--process_id`
  (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID), and
  $JAX_LOCAL_DEVICE_IDS to choose the GPUs. Explicit values win over the
  launcher's.

Before joining, `check_coordinator` stops with one error line when the join
cannot happen, instead of JAX's silent 300 s timeout: process 0's host must
resolve, and the other processes must reach its port within
$RESNET_JAX_COORDINATOR_WAIT seconds (default 120; process 0 opens the port
only when it joins, so it is not checked itself).
"""

import dataclasses
import glob
import os
import re
import shutil
import socket
import subprocess
import time

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from resnet_jax.errors import ConfigError

AXIS = "data"

# The coordinator's port when the launcher gives none: JAX's choice, from the job id, in
# [61440, 65535]; $JAX_COORDINATOR_PORT overrides it.
_PORT_BASE, _PORT_RANGE = 65536 - 2**12, 2**12
# The coordinator's port in a Kubernetes pod when $JAX_COORDINATOR_PORT is unset: JAX's own
# choice there (every pod has its own network namespace, so a fixed port is free).
_K8S_PORT = 55527
# How long the processes other than 0 wait for process 0's port to open (seconds).
COORDINATOR_WAIT_ENV = "RESNET_JAX_COORDINATOR_WAIT"
DEFAULT_COORDINATOR_WAIT = 120.0
# Where the NVIDIA driver lists a node's GPUs, one folder each, and its device files, one a GPU.
_NVIDIA_GPUS = "/proc/driver/nvidia/gpus"
_NVIDIA_DEVICE_FILES = "/dev/nvidia[0-9]*"


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins the job, and which GPUs it drives."""

    launcher: str  # "slurm", "openmpi", "kubernetes", "flags" (explicit values), or "single"
    num_processes: int = 1
    process_id: int = 0
    coordinator_address: str | None = None
    local_rank: int = 0  # this process's index among the job's processes on its node
    local_size: int = 1  # the job's processes on this node
    # GPU indices (among those CUDA shows this process) to drive; None: all of them.
    local_device_ids: tuple[int, ...] | None = None
    # GPUs this process must end up with; None where unknown (no GPU, nothing set).
    expected_gpus: int | None = None
    read: tuple[str, ...] = ()  # the variables the launch was read from, for messages

    def describe(self) -> str:
        """The variables read, for an error message."""
        return ", ".join(self.read) if self.read else "no launcher variables"


_LAUNCH = Launch("single")

# XLA flags for GPUs, added to XLA_FLAGS unless the user set the same flag there.
GPU_XLA_FLAGS = {
    # Lets XLA schedule the gradient all-reduce of data parallelism to overlap with the
    # backward pass instead of running after it (NVIDIA's JAX containers set it too).
    "--xla_gpu_enable_latency_hiding_scheduler": "true",
}
# Added as well when this process runs DALI on its GPUs (data.backend=dali_gpu): no command
# buffers (CUDA graphs), which conflict with the CUDA work of DALI's background threads on the
# same GPU (DALI's JAX guidance and its Flax example turn them off too). Elsewhere (synthetic
# data, DALI on the CPU, commands without DALI) XLA's default stands: a step of RN50 v1.5 has
# about 1,000 kernels (scripts/benchmark_compiled.py), each a separate launch without them.
DALI_GPU_XLA_FLAGS = {"--xla_gpu_enable_command_buffer": ""}
# The share of each GPU's memory that JAX takes at start-up when the user has not chosen (one
# of MEMORY_VARIABLES in the environment). JAX's own default is 0.75; DALI's GPU decoders
# allocate outside of it (nvJPEG's buffers, about 211 MB per decoder thread, and the hardware
# decoder's for a batch), so with data on the GPU JAX leaves them a fixed 30%; without
# (synthetic data, DALI on the CPU) it takes 90%.
GPU_MEMORY_FRACTION = {"dali_gpu": 0.70, "other": 0.90}


def memory_fraction(config) -> float:
    """The share of each GPU that JAX takes: config.gpu_memory_fraction, else by data backend."""
    return config.gpu_memory_fraction or GPU_MEMORY_FRACTION[
        "dali_gpu" if dali_on_gpu(config) else "other"]


def dali_on_gpu(config) -> bool:
    """Whether a run of `config` runs DALI on its GPUs (the mixed decoder, any data format)."""
    return config.data.backend == "dali_gpu"


# The variable jaxlib (0.10 and 0.11) reads for JAX's share of each GPU, and its deprecated
# name, which jaxlib still reads; with both set jaxlib's GPU client refuses to start and JAX
# falls back to the CPU, so only the first is ever set here.
MEM_FRACTION = "XLA_CLIENT_MEM_FRACTION"
OLD_MEM_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
# Any of these in the environment says how JAX allocates GPU memory: the user's choice stands.
MEMORY_VARIABLES = (MEM_FRACTION, OLD_MEM_FRACTION, "XLA_PYTHON_CLIENT_PREALLOCATE",
                    "XLA_PYTHON_CLIENT_ALLOCATOR")
# Compiled programs are kept here between runs (a resume, an eval, a rerun skip most of the
# compilation); $JAX_COMPILATION_CACHE_DIR chooses another folder, and
# JAX_ENABLE_COMPILATION_CACHE=false turns the cache off.
DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "resnet_jax", "xla")


def configure_runtime(*, deterministic: bool = False, memory_fraction: float | None = None,
                      dali_on_gpu: bool = False, environ=None) -> None:
    """XLA flags, GPU memory and the compilation cache; before the first JAX computation.

    On GPUs (see `find_gpus`): GPU_XLA_FLAGS, with `dali_on_gpu` also
    DALI_GPU_XLA_FLAGS, each unless XLA_FLAGS already sets it; and
    `memory_fraction` (default: GPU_MEMORY_FRACTION['other']) as JAX's share of
    each GPU, unless the environment already says how JAX allocates (one of
    MEMORY_VARIABLES). Both names of the memory fraction set at once would
    send JAX to the CPU: that is a ConfigError.
    """
    environ = os.environ if environ is None else environ
    if environ.get(MEM_FRACTION) and environ.get(OLD_MEM_FRACTION):
        raise ConfigError(
            f"both {MEM_FRACTION}={environ[MEM_FRACTION]} and {OLD_MEM_FRACTION}="
            f"{environ[OLD_MEM_FRACTION]} are set, and jaxlib then starts no GPU (JAX falls "
            f"back to the CPU): unset {OLD_MEM_FRACTION}, its deprecated name")
    gpus = visible_gpus(environ)
    flags = {**GPU_XLA_FLAGS, **(DALI_GPU_XLA_FLAGS if dali_on_gpu else {})} if gpus else {}
    if deterministic:  # slower GPU kernels whose results do not vary from run to run
        flags["--xla_gpu_deterministic_ops"] = "true"
    current = environ.get("XLA_FLAGS", "")
    present = {item.split("=", 1)[0] for item in current.split()}
    added = [f"{name}={value}" for name, value in flags.items() if name not in present]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    if gpus and not any(environ.get(name) for name in MEMORY_VARIABLES):
        environ[MEM_FRACTION] = f"{memory_fraction or GPU_MEMORY_FRACTION['other']:g}"
    if not environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir",
                          os.path.expanduser(DEFAULT_COMPILATION_CACHE))


def runtime_settings(environ=None) -> str:
    """XLA_FLAGS and the GPU memory variables as this process has them, for a report."""
    environ = os.environ if environ is None else environ
    names = ["XLA_FLAGS", *MEMORY_VARIABLES]
    return ", ".join(f"{name}={environ[name]!r}" for name in names if name in environ) or (
        "no XLA_FLAGS and no GPU memory variable")


def _int(environ, name: str) -> int | None:
    value = environ.get(name, "")
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number: set it to an integer "
                          "or unset it") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: 'gpu[003-010,12],cpu1' -> 'gpu003'."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level comma ends the first entry
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    entry = nodelist[:end].strip()
    # Each bracket holds ranges and single values; the first host takes the first of each.
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], entry)


def tasks_per_node(spec: str) -> list[int]:
    """SLURM's compressed task counts, '8(x2),4' -> [8, 8, 4]."""
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise ConfigError(f"SLURM task count {spec!r} is not in SLURM's format "
                              "(e.g. '8(x2)'): run the job with srun")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _port(environ, job_number: int) -> int:
    return _int(environ, "JAX_COORDINATOR_PORT") or _PORT_BASE + job_number % _PORT_RANGE


def _slurm(environ) -> Launch | None:
    """A task started by srun, or None."""
    if "SLURM_JOB_ID" not in environ or "SLURM_PROCID" not in environ:
        return None
    count_name = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in environ else "SLURM_NTASKS"
    num_processes = _int(environ, count_name) or 1
    read = ["SLURM_JOB_ID", count_name, "SLURM_PROCID"]
    if num_processes <= 1:
        return None
    local_rank = _int(environ, "SLURM_LOCALID") or 0
    spec_name = next((n for n in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
                      if environ.get(n)), None)
    if spec_name:
        counts = tasks_per_node(environ[spec_name])
        node = _int(environ, "SLURM_NODEID") or 0
        local_size = counts[node] if node < len(counts) else counts[-1]
        read += ["SLURM_LOCALID", spec_name, "SLURM_NODEID"]
    else:
        local_size = _int(environ, "SLURM_NTASKS_PER_NODE") or local_rank + 1
        read += ["SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"]
    nodelist_name = next((n for n in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
                                      "SLURM_NODELIST") if environ.get(n)), None)
    coordinator = None
    if nodelist_name:
        read.append(nodelist_name)
        port = _port(environ, _int(environ, "SLURM_JOB_ID") or 0)
        coordinator = f"{first_host(environ[nodelist_name])}:{port}"
    return Launch("slurm", num_processes, _int(environ, "SLURM_PROCID") or 0, coordinator,
                  local_rank, local_size, read=tuple(read))


def _openmpi(environ) -> Launch | None:
    """A process started by Open MPI's mpirun (4: ORTE, 5: PRRTE), or None."""
    num_processes = _int(environ, "OMPI_COMM_WORLD_SIZE")
    if not num_processes or num_processes <= 1:
        return None
    read = ["OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE"]
    coordinator = None
    uri = environ.get("OMPI_MCA_orte_hnp_uri", "")  # Open MPI <= 4: mpirun's address
    namespace = environ.get("PMIX_NAMESPACE", "")  # Open MPI 5: prterun-<host>-<pid>@<job>
    if uri:
        read.append("OMPI_MCA_orte_hnp_uri")
        job = re.match(r"(\d+)", uri)
        address = re.search(r"tcp://([^,:;]+)|tcp6://\[([^,\]]+)", uri)
        if address:
            host = next(h for h in address.groups() if h)
            host = f"[{host}]" if ":" in host else host
            coordinator = f"{host}:{_port(environ, int(job.group(1)) // 2**12 if job else 0)}"
    elif match := re.fullmatch(r"prterun-(.+)-(\d+)@\d+", namespace):
        read.append("PMIX_NAMESPACE")
        coordinator = f"{match.group(1)}:{_port(environ, int(match.group(2)))}"
    return Launch("openmpi", num_processes, _int(environ, "OMPI_COMM_WORLD_RANK") or 0,
                  coordinator, _int(environ, "OMPI_COMM_WORLD_LOCAL_RANK") or 0,
                  _int(environ, "OMPI_COMM_WORLD_LOCAL_SIZE") or 1, read=tuple(read))


def _kubernetes(environ) -> Launch | None:
    """A pod of an Indexed Job (or a JobSet's) that sets $JOB_COMPLETIONS > 1, or None.

    An Indexed Job without $JOB_COMPLETIONS runs independent pods (a sweep, say):
    each is a single process.
    """
    if "JOB_COMPLETION_INDEX" not in environ:
        return None
    num_processes = _int(environ, "JOB_COMPLETIONS")
    if not num_processes or num_processes <= 1:
        return None
    index = _int(environ, "JOB_COMPLETION_INDEX") or 0
    read = ["JOB_COMPLETION_INDEX", "JOB_COMPLETIONS"]
    job = environ.get("JOB_NAME", "").strip()
    hostname, suffix = environ.get("HOSTNAME", "").strip(), f"-{index}"
    if job:
        read.append("JOB_NAME")
    elif hostname.endswith(suffix) and len(hostname) > len(suffix):
        job = hostname[:-len(suffix)]  # an Indexed Job's pod is named <job>-<index>
        read.append("HOSTNAME")
    else:
        read.append("JOB_NAME")
    service = environ.get("JOB_SERVICE", "").strip()
    read.append("JOB_SERVICE")
    coordinator = None
    if job and service:
        coordinator = f"{job}-0.{service}:{_int(environ, 'JAX_COORDINATOR_PORT') or _K8S_PORT}"
    return Launch("kubernetes", num_processes, index, coordinator, read=tuple(read))


def visible_gpus(environ=None) -> int | None:
    """GPUs CUDA will show this process (see `find_gpus`), or None where none is known."""
    return find_gpus(environ)[0]


def find_gpus(environ=None) -> tuple[int | None, str]:
    """(GPUs CUDA will show this process, where that was read), without starting CUDA.

    CUDA_VISIBLE_DEVICES when set; else the driver's list of GPUs
    (/proc/driver/nvidia/gpus), which some sandboxed and containerised kernels
    do not show; else the device files /dev/nvidia0, /dev/nvidia1, ...; else
    `nvidia-smi -L`. (None, 'none found') when none of them names a GPU.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        value = environ["CUDA_VISIBLE_DEVICES"].strip()
        count = 0 if value in ("", "NoDevFiles", "-1") else len(value.split(","))
        return count, "CUDA_VISIBLE_DEVICES"
    if os.path.isdir(_NVIDIA_GPUS) and os.listdir(_NVIDIA_GPUS):
        return len(os.listdir(_NVIDIA_GPUS)), _NVIDIA_GPUS
    nodes = [p for p in glob.glob(_NVIDIA_DEVICE_FILES) if re.search(r"nvidia\d+$", p)]
    if nodes:
        return len(nodes), f"{os.path.dirname(_NVIDIA_DEVICE_FILES)}/nvidia<N>"
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi:
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20,
                                     stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        count = len(re.findall(r"^GPU \d+:", listing, re.M))
        if count:
            return count, "nvidia-smi -L"
    return None, "none found"


def _gpu_share(launch: Launch, environ, gpus: int | None) -> Launch:
    """Decides the GPUs of a process from the launch and the GPUs it sees."""
    ids_text = environ.get("JAX_LOCAL_DEVICE_IDS", "").strip()
    if ids_text:  # the user's choice
        try:
            ids = tuple(int(i) for i in ids_text.split(","))
        except ValueError:
            raise ConfigError(f"JAX_LOCAL_DEVICE_IDS={ids_text!r} is not a list of GPU "
                              "indices: set it like 0,1,2,3 or unset it") from None
        return dataclasses.replace(launch, local_device_ids=ids, expected_gpus=len(ids))
    if not gpus:  # no GPU (CPU runs), or none known: nothing to split
        return launch
    if launch.local_size <= 1:
        return dataclasses.replace(launch, expected_gpus=gpus)
    # SLURM lists the step's GPUs on this node; a task that sees fewer was bound to its own.
    step_gpus = environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS")
    if launch.launcher == "slurm" and step_gpus and len(step_gpus.split(",")) > gpus:
        return dataclasses.replace(launch, expected_gpus=gpus)
    if gpus == 1:
        return dataclasses.replace(launch, expected_gpus=1)
    if gpus % launch.local_size:
        divisors = [str(n) for n in range(1, gpus + 1) if gpus % n == 0]
        raise ConfigError(
            f"the {gpus} GPUs of this node cannot be shared evenly by its "
            f"{launch.local_size} processes ({launch.describe()}): start "
            f"{', '.join(divisors)} processes per node")
    share = gpus // launch.local_size
    start = launch.local_rank * share
    return dataclasses.replace(launch, local_device_ids=tuple(range(start, start + share)),
                               expected_gpus=share)


def plan(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, environ=None, gpus: int | None = -1) -> Launch:
    """The launch of this process: explicit values, else the launcher's; no side effects.

    `gpus` is the number of GPUs this process sees (-1: read it from the system).
    """
    environ = os.environ if environ is None else environ
    gpus = visible_gpus(environ) if gpus == -1 else gpus
    coordinator_address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None:
        num_processes = _int(environ, "JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _int(environ, "JAX_PROCESS_ID")
    # Open MPI first: mpirun inside a SLURM allocation also leaves SLURM's variables.
    launcher = _openmpi(environ) or _slurm(environ) or _kubernetes(environ)
    explicit = (coordinator_address, num_processes, process_id)
    if launcher is None:
        if (num_processes or 1) <= 1:
            return Launch("single")
        if None in explicit:
            raise ConfigError(
                "a multi-process launch needs all of --coordinator_address (host:port of "
                "process 0), --num_processes and --process_id (or $JAX_COORDINATOR_ADDRESS, "
                f"$JAX_NUM_PROCESSES, $JAX_PROCESS_ID); got {coordinator_address=}, "
                f"{num_processes=}, {process_id=}")
        launcher = Launch("flags", read=("--coordinator_address", "--num_processes",
                                         "--process_id"))
    elif any(value is not None for value in explicit):
        launcher = dataclasses.replace(launcher, launcher="flags")
    launch = dataclasses.replace(
        launcher,
        coordinator_address=coordinator_address or launcher.coordinator_address,
        num_processes=num_processes if num_processes is not None else launcher.num_processes,
        process_id=process_id if process_id is not None else launcher.process_id)
    if launch.num_processes <= 1:
        return Launch("single")
    if launch.coordinator_address is None:
        if launcher.launcher == "kubernetes":
            fix = ("set $JOB_SERVICE to the headless Service named in the pod's subdomain and "
                   "$JOB_NAME to the Job's name (see scripts/k8s/resnet50.yaml)")
        else:
            fix = ("pass --coordinator_address=HOST:PORT of the host of process 0 (or set "
                   "$JAX_COORDINATOR_ADDRESS, e.g. mpirun -x "
                   "JAX_COORDINATOR_ADDRESS=$(hostname):12345)")
        raise ConfigError(f"cannot tell where process 0 runs from the {launcher.launcher} "
                          f"launch ({launch.describe()}): {fix}")
    if not 0 <= launch.process_id < launch.num_processes:
        raise ConfigError(f"process id {launch.process_id} is not in 0..{launch.num_processes - 1} "
                          f"({launch.describe()}): check --process_id and --num_processes")
    return _gpu_share(launch, environ, gpus)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"coordinator address {address!r} is not HOST:PORT: pass "
                          "--coordinator_address=HOST:PORT, e.g. node0:12345")
    return host.strip("[]"), int(port)  # [::1]:80 -> ::1


def coordinator_wait(environ=None) -> float:
    """Seconds to wait for process 0's port: $RESNET_JAX_COORDINATOR_WAIT, else the default."""
    environ = os.environ if environ is None else environ
    text = environ.get(COORDINATOR_WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_COORDINATOR_WAIT
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not wait >= 0:
        raise ConfigError(f"{COORDINATOR_WAIT_ENV}={text!r} is not a number of seconds: set it "
                          f"like 300 (0: do not wait for process 0) or unset it "
                          f"({DEFAULT_COORDINATOR_WAIT:g} s)")
    return wait


def check_coordinator(launch: Launch, environ=None) -> None:
    """Stops with one ConfigError when joining `launch` cannot work, before JAX tries to.

    Process 0's host must resolve: at once, except in Kubernetes, where pod 0's
    name appears only once the pod has an address, and on a temporary DNS
    failure; those are retried for the wait. The other processes then connect
    to process 0's port until it answers (process 0 opens it only inside
    `jax.distributed.initialize`, and may start later), for at most
    `coordinator_wait()` seconds (0: no reachability check).
    """
    address = launch.coordinator_address
    host, port = _host_port(address)
    wait = coordinator_wait(environ)
    deadline = time.monotonic() + wait
    kubernetes = "JOB_COMPLETION_INDEX" in launch.read
    where = (f"process {launch.process_id} of {launch.num_processes} cannot join: the "
             f"coordinator address {address} (from {launch.describe()})")
    while True:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            break
        except socket.gaierror as error:
            if not (kubernetes or error.errno == socket.EAI_AGAIN) or (
                    time.monotonic() >= deadline):
                fix = ("check that the headless Service $JOB_SERVICE exists and is the pod "
                       "template's subdomain, and that $JOB_NAME is the Job's name"
                       if kubernetes else
                       "pass --coordinator_address=HOST:PORT with a name or address of "
                       "process 0's node that every node resolves")
                raise ConfigError(f"{where} does not resolve ({error.strerror}): {fix}") from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if launch.process_id == 0 or wait == 0:
        return
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(0.1, left))):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
                raise ConfigError(
                    f"{where} does not answer after {wait:g} s ({reason}): check that process "
                    f"0 was started and runs on {host}, that port {port} is open between the "
                    f"nodes, or set {COORDINATOR_WAIT_ENV}=SECONDS to wait longer") from None
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> Launch:
    """Joins the other processes of a multi-process job (a no-op for one); returns the launch.

    Must run before anything else uses JAX. A failure to join is a ConfigError
    that names the launcher variables read and the values used; one that can be
    foreseen (see `check_coordinator`) comes before JAX's own 300 s timeout.
    """
    global _LAUNCH
    launch = plan(coordinator_address, num_processes, process_id)
    if launch.num_processes > 1:
        check_coordinator(launch)
        try:
            jax.distributed.initialize(
                launch.coordinator_address, launch.num_processes, launch.process_id,
                local_device_ids=list(launch.local_device_ids) if launch.local_device_ids
                else None,
                cluster_detection_method="deactivate")  # the decisions above stand
        except Exception as error:  # noqa: BLE001 (JAX raises several kinds)
            detail = " ".join(str(error).split())[:300]
            raise ConfigError(
                f"process {launch.process_id} of {launch.num_processes} could not join the "
                f"job at {launch.coordinator_address} ({launch.describe()}): {detail}. Check "
                "that every process was started, that process 0 runs on that host and that "
                "the port is open, or pass --coordinator_address=HOST:PORT") from None
    _LAUNCH = launch
    return launch


def check_devices() -> None:
    """Stops with one error line when the processes drive different numbers of devices, or
    this process drives fewer or more GPUs than its launch gives it. After `initialize`."""
    launch = _LAUNCH
    local = jax.local_device_count()
    if launch.expected_gpus and jax.devices()[0].platform == "gpu" and (
            local != launch.expected_gpus):
        raise ConfigError(
            f"process {jax.process_index()} drives {local} GPUs but should drive "
            f"{launch.expected_gpus} ({launch.describe()}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): check the GPUs the "
            "launcher gives each task (e.g. --gpus-per-node) and JAX_LOCAL_DEVICE_IDS")
    # Every process knows every device and its process: no collective is needed.
    counts = [0] * jax.process_count()
    for device in jax.devices():
        counts[device.process_index] += 1
    if len(set(counts)) > 1:
        listing = ", ".join(f"process {i}: {n}" for i, n in enumerate(counts))
        raise ConfigError(
            f"the processes drive different numbers of devices ({listing}): give every "
            "process the same number of GPUs (the same --gpus-per-node on every node, or "
            "the same count in JAX_LOCAL_DEVICE_IDS)")


def log_devices() -> None:
    """With several processes, each logs its devices (one process: the run's summary says it)."""
    if jax.process_count() > 1:
        logging.info("process %d of %d: %d local and %d global devices (%s)",
                     jax.process_index(), jax.process_count(), jax.local_device_count(),
                     jax.device_count(), jax.devices()[0].platform)


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh ('data') over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the devices."""
    return NamedSharding(mesh, P(AXIS))
