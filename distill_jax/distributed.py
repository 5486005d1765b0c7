"""Devices and data placement: multi-host start-up, the meshes (the global ("data", "fsdp") mesh of training, the
1-D local mesh of work that needs no traffic between hosts), logical-axis rules, global batches.

One code path for 1 CPU, 8 GPUs and a TPU pod: the train step is jitted over GLOBAL arrays whose leading (batch)
axis is sharded over both mesh axes; parameters carry logical axis names ("vocab", "embed", "mlp", "heads") that
``LOGICAL_RULES`` maps to mesh axes. With ``fsdp=1`` every parameter is replicated (plain data parallelism).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)  # the batch is split over every device: FSDP is data parallelism with sharded params

# The one table from logical parameter axes to mesh axes. "embed" (the hidden width, present in every weight
# matrix) is the axis FSDP shards, as maxtext does; the rest stay whole.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", None),
    ("embed", FSDP),
    ("embed_out", None),
    ("mlp", None),
    ("heads", None),
)


def initialize_if_multihost() -> bool:
    """Calls ``jax.distributed.initialize`` when the environment describes a multi-process job.

    Triggers: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` (explicit), or a cluster
    jax auto-detects (TPU pod slices, SLURM, Open MPI) when ``DISTILL_JAX_DISTRIBUTED=1``. Must run before any
    other jax call. Returns whether it initialised.
    """
    addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if addr:
        n, i = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
        if n is None or i is None:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS={addr} is set but JAX_NUM_PROCESSES / JAX_PROCESS_ID are "
                             "not: set all three for a multi-process run")
        timeout = int(os.environ.get("JAX_INIT_TIMEOUT_S", "300"))  # a missing peer fails, never hangs
        jax.distributed.initialize(addr, int(n), int(i), initialization_timeout=timeout)
        return True
    if os.environ.get("DISTILL_JAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 2-D ("data", "fsdp") mesh.

    Args:
      data: data-parallel degree; -1 = all devices not used by ``fsdp``.
      fsdp: parameter-sharding degree.
      devices: the devices to use (default: all of them). Tests pass ``jax.devices()[:1]`` for a 1-device mesh.

    Raises:
      ValueError: the degrees do not multiply to the device count (with the numbers).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp = {fsdp} does not divide the {n} devices")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} = {data * fsdp} devices, but {n} are available; "
                         f"use data=-1 to take all of them")
    # Auto axes: shardings are given at the jit boundary and XLA propagates them inside the step.
    return jax.make_mesh((data, fsdp), (DATA, FSDP), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices)


def local_mesh() -> Mesh:
    """A 1-D ``("data",)`` mesh over this host's devices, for work that is embarrassingly parallel across hosts
    (scoring pairs with the teacher, encoding texts for retrieval and validation): each host uses its own."""
    return Mesh(np.asarray(jax.local_devices()), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis over every device, other axes whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def logical_shardings(logical_specs: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """Tree of logical ``PartitionSpec`` (from ``nn.get_partition_spec``) -> tree of ``NamedSharding``.

    Checks that every sharded dimension divides by its mesh axis size: XLA would pad silently otherwise.
    """
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def check_param_divisibility(abstract: Any, shardings: Any) -> None:
    """Raises a ValueError naming the parameter whose sharded dimension does not divide by the mesh axis size."""
    flat_a = jax.tree_util.tree_leaves_with_path(abstract)
    flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sh in zip(flat_a, flat_s):
        if not isinstance(sh, NamedSharding):
            continue
        for dim, axes in zip(getattr(leaf, "shape", ()), sh.spec):
            if axes is None:
                continue
            size = int(np.prod([sh.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))
            if dim % size:
                raise ValueError(f"parameter {jax.tree_util.keystr(path)} has a dimension of {dim}, not divisible "
                                 f"by the {size} devices of mesh axes {axes}; change mesh.fsdp")


def check_batch_divisibility(global_batch: int, mesh: Mesh, grad_accum: int = 1) -> None:
    """The global batch must split evenly over devices (and over micro-batches, each over devices).

    Raises:
      ValueError: with the batch size, device count and accumulation factor.
    """
    n_dev = mesh.shape[DATA] * mesh.shape[FSDP]
    if global_batch % (n_dev * grad_accum):
        raise ValueError(
            f"global batch {global_batch} is not divisible by {n_dev} devices x {grad_accum} accumulation "
            f"micro-batches = {n_dev * grad_accum}; pick data.batch_size as a multiple of {n_dev * grad_accum}")
    if global_batch % jax.process_count():
        raise ValueError(f"global batch {global_batch} is not divisible by {jax.process_count()} hosts")


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Per-host numpy batch (leading axis = this host's share) -> global jax arrays sharded over the batch axes.

    With one process this is a plain sharded ``device_put``; with several, each host contributes its rows and
    the result is one logical array of ``process_count x`` the rows.
    """
    sharding = batch_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, local)
