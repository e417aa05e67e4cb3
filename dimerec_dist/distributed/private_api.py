"""Every use of a private torch / TorchRec attribute, in one place, each with why no public
API does the job. Checked against torch 2.13.0, torchrec 1.8.0, fbgemm-gpu 1.8.0
(CHECKED_AGAINST); tests/test_private_api.py fails loudly, naming the attribute, when an
upgrade moves one, instead of a wrong number or a crash deep in a library.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

# torch.distributed._shard is where TorchRec's sharded state lives (DCP saves it); DTensor
# is its successor, which TorchRec 1.8's EmbeddingCollection does not produce yet.
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor

CHECKED_AGAINST = {"torch": "2.13.0", "torchrec": "1.8.0", "fbgemm_gpu": "1.8.0"}
__all__ = [
    "CHECKED_AGAINST",
    "ShardedTensor",
    "chosen_sharding_options",
    "cpu_copy",
    "fsspec_storage",
    "is_sharded",
    "pipelined_modules",
    "sharded_lookups",
]


def chosen_sharding_options(planner) -> list:
    """The sharding options of the plan an EmbeddingShardingPlanner chose, with their storage
    estimates. The returned ShardingPlan carries placements but not the planner's memory
    estimate per rank, which we print beside the measured size; only `_best_plan` holds it."""
    return list(getattr(planner, "_best_plan", None) or [])


def sharded_lookups(model: nn.Module) -> list[nn.Module]:
    """The embedding lookups of a DistributedModelParallel's sharded modules. They sit in a
    plain list (`_lookups`), out of `modules()`' reach, and the CPU data-parallel lookup must
    be replaced there (distributed/sharding.py says why)."""
    return [lookup for owner in model.modules() for lookup in getattr(owner, "_lookups", [])]


def pipelined_modules(pipeline) -> list[nn.Module]:
    """The sharded modules whose input all-to-all a TrainPipelineSparseDist runs ahead. Where the
    trace of the model finds none, the pipeline quietly runs them in the forward instead (no
    overlap, no error); this list is the only way to tell."""
    return list(pipeline._pipelined_modules)


def cpu_copy(state: ShardedTensor) -> ShardedTensor:
    """A CPU copy of a ShardedTensor with the same global layout and process group (DCP's
    default stager cannot copy TorchRec's ShardedTensors; torch has no public constructor
    from local shards that keeps the metadata as it is)."""
    shards = [
        Shard(shard.tensor.detach().to("cpu", copy=True), copy.deepcopy(shard.metadata))
        for shard in state.local_shards()
    ]
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        shards, sharded_tensor_metadata=copy.deepcopy(state.metadata()), process_group=state._process_group
    )


def fsspec_storage() -> tuple[type, type]:
    """DCP's (FsspecWriter, FsspecReader): the writer and reader for fsspec's filesystems (s3://,
    gs://, hdfs://). Documented classes, but torch 2.13 exports them only from a module it marks
    private (torch.distributed.checkpoint._fsspec_filesystem), since fsspec is optional."""
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    return FsspecWriter, FsspecReader


def is_sharded(value: Any) -> bool:
    return isinstance(value, ShardedTensor)
