"""Data parallelism over a `data` mesh axis, and multi-process start-up.

One process drives every local device: the batch is sharded over the
`data` axis of a one-dimensional mesh and parameters, optimizer state and
the dataset are replicated, so the same jitted step runs on one CPU, one GPU
or eight. Several processes (for example one per node of a SLURM job) join
through `jax.distributed.initialize()`, which must run before any other JAX
call; `initialize_distributed` decides from the environment whether to call
it.
"""

from __future__ import annotations

from collections.abc import Mapping
import os

from absl import logging
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

DATA_AXIS = "data"


def _int_variable(environ: Mapping[str, str], name: str) -> int:
  value = environ.get(name, "")
  try:
    return int(value)
  except ValueError:
    return 0


def should_initialize_distributed(environ: Mapping[str, str]) -> bool:
  """Returns whether the environment describes more than one JAX process.

  That is the case under SLURM with more than one task (SLURM_NTASKS, or
  SLURM_NPROCS on older versions, > 1; `jax.distributed.initialize()` then
  reads the coordinator and process ids from SLURM's variables), or when
  JAX_NUM_PROCESSES > 1 is set explicitly together with
  JAX_COORDINATOR_ADDRESS.
  """
  if "SLURM_JOB_ID" in environ:
    tasks = _int_variable(environ, "SLURM_NTASKS") or _int_variable(
        environ, "SLURM_NPROCS")
    if tasks > 1:
      return True
  return ("JAX_COORDINATOR_ADDRESS" in environ
          and _int_variable(environ, "JAX_NUM_PROCESSES") > 1)


def initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize()` when several processes are started.

  Call it first thing in a program, before any array is created. With one
  process it does nothing.

  Returns:
    Whether `jax.distributed.initialize()` was called.
  """
  environ = os.environ if environ is None else environ
  if not should_initialize_distributed(environ):
    return False
  jax.distributed.initialize()
  logging.info("Joined a distributed run as process %d of %d",
               jax.process_index(), jax.process_count())
  return True


def data_mesh() -> Mesh:
  """Returns a one-dimensional mesh named `data` over all devices."""
  return Mesh(jax.devices(), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Returns the sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Returns the sharding that splits the leading (batch) axis over `data`."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, field: str) -> None:
  """Raises ValueError unless `batch_size` splits evenly over the devices."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(
        f"Training config field {field}={batch_size} does not split evenly "
        f"over {devices} devices; use a multiple of {devices}.")
