"""Data parallelism over the local devices: parameters replicated, each batch split along its
leading axis into one contiguous block per device, and the one jitted ``sac.update``
unchanged. XLA partitions the update from its inputs' shardings (GSPMD): each device runs
the networks on its block and the gradients are all-reduced, so the result equals a
one-device update up to float summation order.

``sac.update`` takes critic slice ``i`` as rows ``i, i + utd, ...``, so every device's block
holds an equal share of every slice when the per-step batch divides by the device count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


@dataclass(frozen=True)
class DataParallel:
    """Where a learner's state and batches live: ``replicate`` the state once, ``shard``
    every batch."""

    mesh: Mesh

    @property
    def devices(self) -> list[jax.Device]:
        return list(self.mesh.devices.flat)

    def replicate(self, tree: Any) -> Any:
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def shard(self, batch: Any) -> Any:
        """Split every leaf's leading axis over the devices (a copy to each device's
        memory: call it off the update's thread, as the learner's prefetcher does)."""
        return jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec(AXIS)))

    def describe(self) -> str:
        names = ", ".join(f"{d.platform}:{d.id}" for d in self.devices)
        return f"{len(self.devices)} device{'s' * (len(self.devices) > 1)} ({names})"


def local(count: int | None = None, batch_size: int | None = None) -> DataParallel:
    """Data parallelism over ``device_count(...)`` of this host's devices."""
    available = jax.local_devices()
    n = device_count(len(available), count, batch_size, available[0].platform)
    return DataParallel(Mesh(np.array(available[:n]), (AXIS,)))


def device_count(available: int, count: int | None, batch_size: int | None,
                 platform: str = "gpu") -> int:
    """``count`` devices, checked; None: the most that split ``batch_size`` (per critic
    step) evenly, so each device gets the same share of every step's batch."""
    if count is None:
        return max(k for k in range(1, available + 1) if not batch_size or batch_size % k == 0)
    if not 1 <= count <= available:
        raise ValueError(
            f"learner.devices={count}, but this host has {available} {platform} device(s); "
            f"set learner.devices to at most {available}, or leave it unset to use all that "
            "fit the batch")
    if batch_size is not None and batch_size % count:
        raise ValueError(
            f"learner.batch_size={batch_size} does not split evenly over {count} devices; make "
            f"it a multiple of {count}, or change learner.devices")
    return count
