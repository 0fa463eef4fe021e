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

AXIS = "data"

# Set by launchers (SLURM, Open MPI, explicit flags) when a job runs as several processes.
_MULTI_PROCESS_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def is_multi_process_launch() -> bool:
    """True when the environment says this job runs as more than one process."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return any(int(os.environ.get(name, "1") or 1) > 1 for name in _MULTI_PROCESS_ENV)


def initialize() -> None:
    """Joins the other processes of a multi-process job (no-op for one process)."""
    if is_multi_process_launch():
        jax.distributed.initialize()
    logging.info("process %d of %d; %d local and %d global devices (%s)",
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
