"""Devices, processes and shardings.

One mesh over every device of every process, with one axis, 'data': the
batch is split over it and the state is replicated on it.
"""

import os

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from resnet_jax.errors import ConfigError

AXIS = "data"

# Set by launchers (SLURM, Open MPI) when a job runs as several processes.
_LAUNCHER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number: set it to an integer "
                          "or unset it") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins the other processes of a multi-process job; a no-op for one process.

    Explicit values (arguments, else $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
    $JAX_PROCESS_ID) win; otherwise a SLURM or Open MPI launch of more than one
    task is detected and JAX reads the rest from the launcher's environment.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and (num_processes or 1) > 1:
        if None in explicit:
            raise ConfigError(
                "a multi-process launch needs all of --coordinator_address (host:port of "
                "process 0), --num_processes and --process_id (or $JAX_COORDINATOR_ADDRESS, "
                f"$JAX_NUM_PROCESSES, $JAX_PROCESS_ID); got {coordinator_address=}, "
                f"{num_processes=}, {process_id=}")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif any((_env_int(name) or 1) > 1 for name in _LAUNCHER_ENV):
        jax.distributed.initialize()


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
