"""What TorchRec's planner is told about the machines: memory per rank, ranks per node, links.

Left to itself, the planner assumes 32 GB of HBM and 128 GB of host memory per rank and one
node, whatever the hardware; plans for 80 GB or 141 GB GPUs, for several nodes, or for a
table larger than the GPUs' memory (UVM caching) are then wrong. Here the sizes come from
the device the rank runs on and the memory of its node shared by the ranks torchrun
started there, each overridable in the config (sharding.*) or on dimerec-plan's command
line, for a cluster other than this machine. The Topology is built through TorchRec's
TopologyFactory, which keeps user overrides above detected values above defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GB = 10**9  # the planner's sizes and the cards' spec sheets are in decimal units; ours too


@dataclass(frozen=True)
class Cluster:
    """The machines a plan is for, per rank where it says so."""

    world_size: int
    local_world_size: int  # ranks (GPUs) per node
    compute_device: str  # cuda or cpu
    hbm_bytes: int  # device memory per GPU (0 on CPU)
    host_bytes: int  # host memory per rank
    intra_host_gbps: float | None = None  # GB/s between the GPUs of a node (NVLink); None: TorchRec's default
    inter_host_gbps: float | None = None  # GB/s between nodes per GPU (InfiniBand, RoCE); None: TorchRec's default

    @property
    def nodes(self) -> int:
        return -(-self.world_size // self.local_world_size)

    def describe(self) -> str:
        memory = f"{self.hbm_bytes / GB:.0f} GB HBM and " if self.compute_device == "cuda" else ""
        return (
            f"{self.nodes} node(s) x {self.local_world_size} rank(s) ({self.compute_device}), "
            f"{memory}{self.host_bytes / GB:.0f} GB host memory per rank"
        )

    def topology(self):
        from torchrec.distributed.planner.types import HardwareConfig, KernelConfig, TopologyFactory, TrainerConfig

        to_bytes_per_ms = lambda gbps: None if gbps is None else gbps * GB / 1000  # noqa: E731
        return TopologyFactory.create_topology(
            trainer_config=TrainerConfig(
                world_size=self.world_size,
                local_world_size=self.local_world_size,
                hbm_cap_bytes=self.hbm_bytes if self.compute_device == "cuda" else 0,
                ddr_cap_bytes=self.host_bytes,
            ),
            hardware_config=HardwareConfig(
                intra_host_bw=to_bytes_per_ms(self.intra_host_gbps),
                inter_host_bw=to_bytes_per_ms(self.inter_host_gbps),
            ),
            kernel_config=KernelConfig(compute_device=self.compute_device),
        )


def this_cluster(world_size: int, device: torch.device, sharding) -> Cluster:
    """The cluster this job runs on: HBM of this rank's GPU, this node's memory shared by the
    ranks torchrun started on it (LOCAL_WORLD_SIZE); `sharding` (ShardingConfig) overrides each."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    hbm = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    host = node_memory_bytes() // max(1, local)
    return Cluster(
        world_size=world_size,
        local_world_size=local,
        compute_device=device.type,
        hbm_bytes=int(sharding.hbm_gb * GB) if sharding.hbm_gb else hbm,
        host_bytes=int(sharding.host_memory_gb * GB) if sharding.host_memory_gb else host,
        intra_host_gbps=sharding.intra_host_gbps or None,
        inter_host_gbps=sharding.inter_host_gbps or None,
    )


def node_memory_bytes() -> int:
    """This machine's memory (MemTotal), or what the cgroup allows where that is less."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total
