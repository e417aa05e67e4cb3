"""Process groups: join the torchrun job (or form a one-rank group), and leave it.

World size 1 is not a special case: a plain process forms a one-rank group and runs the
same sharded code path as torchrun's ranks.
"""

from __future__ import annotations

import gc
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DeviceUnavailable(RuntimeError):
    """The job asks for a GPU this machine does not have: the user's setting, not a bug."""


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun job, or form a one-process group when started as a plain process.

    Either way the same sharded code path runs: world size 1 is not a special case.
    """
    plain = "MASTER_ADDR" not in os.environ  # torchrun (and any env:// launcher) names the rendezvous
    if plain:
        for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(name, value)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"train.device=cuda but torch {torch.__version__} sees no CUDA device on "
            f"{socket.gethostname()}; use train.device=auto or cpu"
        )
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"local rank {local_rank} on {socket.gethostname()} needs GPU {local_rank}, "
            f"{torch.cuda.device_count()} visible: one rank per GPU (--nproc_per_node)"
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps one store across restarts. Without a per-attempt prefix, a
            # restarted worker can read a dead worker's address from it and fail to connect.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(
                backend,
                store=dist.PrefixStore(f"dimerec/attempt_{attempt}", store),
                rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]),
            )
        elif plain:
            # One process needs no rendezvous: an in-memory store, no port (a free port picked
            # beforehand can be taken by another process before the store binds it).
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend)
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"),
        backend=backend,
    )


def shutdown(wait_for_peers: bool = True) -> None:
    """Leave the group. After a clean run, together: a rank tearing down gloo while a peer
    still talks to it aborts the peer. After an error, at once (peers may never arrive)."""
    # Free what still holds the group (DDP, sharded modules sit in reference cycles) while the
    # group exists: torn down later, at interpreter exit, their threads abort the process.
    gc.collect()
    if dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()
