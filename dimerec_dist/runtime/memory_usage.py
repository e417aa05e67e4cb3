"""What a rank holds in memory, for the training log: the host process's resident set (now, from
psutil, on any OS; its peak, from getrusage, which psutil does not read on Linux) and, on a GPU,
the caching allocator's allocated, reserved and peak bytes."""

from __future__ import annotations

import resource

import psutil
import torch

GB = 1e9


def host_rss_bytes() -> int:
    """Resident set size of this process now."""
    return psutil.Process().memory_info().rss


def host_peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def memory_scalars(device: torch.device) -> dict[str, float]:
    """GB figures named for TensorBoard: memory/host_rss_gb, memory/host_peak_rss_gb and, on CUDA,
    memory/device_{allocated,reserved,peak_allocated}_gb."""
    figures = {"memory/host_rss_gb": host_rss_bytes() / GB, "memory/host_peak_rss_gb": host_peak_rss_bytes() / GB}
    if device.type == "cuda":
        figures["memory/device_allocated_gb"] = torch.cuda.memory_allocated(device) / GB
        figures["memory/device_reserved_gb"] = torch.cuda.memory_reserved(device) / GB
        figures["memory/device_peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / GB
    return figures
