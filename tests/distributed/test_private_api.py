"""The private torch/TorchRec attributes we rely on still exist and still mean what we use
them for (distributed/private_api.py). An upgrade that moves one fails here, by name."""

import importlib.metadata
import inspect
import os

import pytest
import torch

from dimerec_dist.config import load_config
from dimerec_dist.distributed import private_api
from dimerec_dist.distributed.sharded_model import TABLE_NAME, ShardedDimeRec
from dimerec_dist.distributed.sharding import plan_sharding
from dimerec_dist.distributed.topology import Cluster
from dimerec_dist.runtime.process_group import init_distributed, shutdown


@pytest.fixture(scope="module")
def one_rank():
    """A one-rank group in this process; the environment it sets (RANK, WORLD_SIZE, LOCAL_RANK) is put back,
    so later tests' subprocesses do not try to join it."""
    saved = dict(os.environ)
    ctx = init_distributed("cpu")
    yield ctx
    shutdown()
    os.environ.clear()
    os.environ.update(saved)


def test_the_versions_in_use_are_those_checked_or_say_which_differ():
    installed = {
        name: importlib.metadata.version(name if name != "fbgemm_gpu" else "fbgemm-gpu-cpu")
        for name in private_api.CHECKED_AGAINST
    }
    installed["torch"] = torch.__version__.split("+")[0]
    moved = {
        name: (private_api.CHECKED_AGAINST[name], version)
        for name, version in installed.items()
        if version != private_api.CHECKED_AGAINST[name]
    }
    assert not moved, f"re-check distributed/private_api.py against these versions (checked, installed): {moved}"


def test_the_planner_keeps_its_chosen_options_with_storage_estimates(one_rank):
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    config = load_config(None, ["model.embedding_dim=16"])
    module = ShardedDimeRec(config.model, 100)
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu", created_by_factory=True))
    planner.collective_plan(module, [EmbeddingCollectionSharder()], torch.distributed.GroupMember.WORLD)
    assert hasattr(planner, "_best_plan"), "EmbeddingShardingPlanner._best_plan is gone"
    options = private_api.chosen_sharding_options(planner)
    assert options and all(shard.storage is not None for option in options for shard in option.shards)
    cluster = Cluster(world_size=1, local_world_size=1, compute_device="cpu", hbm_bytes=0, host_bytes=10**10)
    _, _, estimate = plan_sharding(module, TABLE_NAME, "row_wise", cluster)
    assert estimate[0].host_bytes > 0 and estimate[0].perf_ms > 0


def test_sharded_modules_keep_their_lookups_and_sharded_tensors_copy_to_cpu(one_rank):
    from dimerec_dist.training.builders import build_model

    config = load_config(None, ["model.embedding_dim=16", "sharding.type=data_parallel"])
    model, _ = build_model(config, 100, one_rank, run_dir=None)
    assert private_api.sharded_lookups(model), "the sharded modules' `_lookups` list is gone"
    config = load_config(None, ["model.embedding_dim=16"])
    model, _ = build_model(config, 100, one_rank, run_dir=None)
    table = next(v for k, v in model.state_dict().items() if k.endswith("embeddings.item.weight"))
    assert private_api.is_sharded(table)
    copied = private_api.cpu_copy(table)
    assert private_api.is_sharded(copied) and copied.metadata() == table.metadata()
    assert torch.equal(copied.local_shards()[0].tensor, table.local_shards()[0].tensor)


def test_dcp_keeps_its_fsspec_writer_and_reader_where_we_import_them():
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

    writer, reader = private_api.fsspec_storage()
    assert issubclass(writer, FileSystemWriter) and issubclass(reader, FileSystemReader)
    assert {"sync_files"} <= set(inspect.signature(writer).parameters), "FsspecWriter(sync_files=...) is gone"
