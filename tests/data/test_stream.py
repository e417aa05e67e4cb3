"""The data plan and the batch stream: coverage, world-size independence, resume, Ray; in the
per-prefix mode (all) and in sequence mode, whose chunks are compared through the windows
they give their targets (SequenceChunks.histories)."""

from collections import Counter

import numpy as np
import pytest

from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.samples import SequenceChunks
from dimerec_dist.data.schema import DataError, Manifest
from dimerec_dist.data.stream import DataPlan, TrainStream, decode_group, row_groups


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """150 users with 3..12 items each, in row groups of 8 users."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{x}" for x in rng.integers(0, 60, rng.integers(3, 13))) for u in range(150)]
    (root / "seqs.txt").write_text("\n".join(lines) + "\n")
    prepare(
        PrepareOptions(
            format="sequences", input=root / "seqs.txt", out=root / "prepared", row_group_size=8, rows_per_shard=40
        )
    )
    return Manifest.load(root / "prepared")


def stream(manifest, world=1, rank=0, streams=2, batch=16, mode="all", backend="local"):
    return TrainStream(
        manifest,
        max_history=5,
        global_batch=batch,
        streams=streams,
        world_size=world,
        rank=rank,
        seed=3,
        sample_mode=mode,
        backend=backend,
        window_size=2,
        chunk_targets=3,
    )


MODES = ["all", "sequence"]


def as_rows(history, targets):
    """(window..., target) per sample, whichever mode cut them."""
    if isinstance(history, SequenceChunks):
        np.testing.assert_array_equal(history.targets, targets)
        history = history.histories(5)
    return [tuple(h[:n]) + (t,) for h, n, t in zip(history.ids.tolist(), history.lengths.tolist(), targets.tolist())]


def test_decoded_group_lists_every_sample_once(dataset):
    group = row_groups(dataset)[0]
    decoded = decode_group(group.file, group.index, group.id, 3, 0, "all", dataset.num_items)
    assert len(decoded.seqs) == group.samples
    pairs = set(zip(decoded.seqs.tolist(), decoded.positions.tolist()))
    lengths = np.diff(decoded.offsets)
    assert pairs == {(s, p) for s in range(len(lengths)) for p in range(1, lengths[s])}
    cut = decode_group(group.file, group.index, group.id, 3, 0, "random_cut", dataset.num_items)
    assert len(cut.seqs) == group.trainable and len(set(cut.seqs.tolist())) == len(cut.seqs)


def test_plan_balances_streams_and_reshuffles_each_epoch(dataset):
    plan = DataPlan(
        row_groups(dataset), streams=4, global_batch=16, seed=3, sample_mode="all", num_items=dataset.num_items
    )
    first, second = plan.assignment(0), plan.assignment(1)
    assert sorted(g.id for s in first for g in s) == list(range(len(plan.groups))), "every group once"
    loads = [sum(g.samples for g in s) for s in first]
    assert max(loads) - min(loads) <= max(g.samples for g in plan.groups)
    assert first != second and plan.assignment(0) == first


@pytest.mark.parametrize("mode", MODES)
def test_an_epoch_reads_each_sample_at_most_once_and_drops_only_the_ragged_tail(dataset, mode):
    reader = stream(dataset, mode=mode)
    seen = Counter()
    for _, history, targets in reader.batches(0):
        seen.update(as_rows(history, targets))
    total = dataset.data["counts"]["train_samples"]
    assert sum(seen.values()) == reader.steps(0) * 16
    assert total - sum(seen.values()) < 2 * max(g.samples for g in reader.plan.groups) + 16


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_read_the_global_batches_of_one_rank(dataset, mode):
    one = list(stream(dataset, mode=mode).batches(0))
    ranks = [list(stream(dataset, world=2, rank=r, mode=mode).batches(0)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1])
    for (_, h, t), (_, h0, t0), (_, h1, t1) in zip(one, *ranks):
        assert sorted(as_rows(h, t)) == sorted(as_rows(h0, t0) + as_rows(h1, t1))
    rows = [stream(dataset, world=2, rank=r).global_rows for r in range(2)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(16))


@pytest.mark.parametrize("mode", MODES)
def test_resume_from_a_saved_position_repeats_the_uninterrupted_stream(dataset, mode):
    reader = stream(dataset, mode=mode)
    uninterrupted = [(0, s, as_rows(h, t)) for s, h, t in reader.batches(0)] + [
        (1, s, as_rows(h, t)) for s, h, t in reader.batches(1)
    ]
    stop = len(uninterrupted) - 3  # three steps before the end of epoch 1
    for cut in (5, reader.steps(0) - 1, reader.steps(0), stop):  # mid-epoch, at and across the boundary
        epoch, step = uninterrupted[cut][0], uninterrupted[cut][1]
        fresh = stream(dataset, mode=mode)  # a new process would build a new reader from the saved (epoch, step)
        resumed = [(epoch, s, as_rows(h, t)) for s, h, t in fresh.batches(epoch, start_step=step)]
        if epoch == 0:
            resumed += [(1, s, as_rows(h, t)) for s, h, t in fresh.batches(1)]
        assert resumed == uninterrupted[cut:], f"resume at epoch {epoch} step {step}"


def test_sequence_mode_reads_the_samples_of_per_prefix_mode_in_chunks(dataset):
    """The same plan (steps, targets per step) and, over an epoch, the same (window, target) samples
    as per-prefix mode; each step's targets are read in chunks of at most chunk_targets."""
    per_prefix, sequence = stream(dataset), stream(dataset, mode="sequence")
    assert per_prefix.steps(0) == sequence.steps(0)
    everything = Counter()  # samples by content: two users may share a (window, target)
    for group in per_prefix.plan.groups:
        decoded = decode_group(group.file, group.index, group.id, 3, 0, "all", dataset.num_items)
        starts = decoded.offsets[decoded.seqs]
        everything.update(as_rows(*_windows(decoded.items, starts, starts + decoded.positions)))
    read = Counter()
    for _, chunks, targets in sequence.batches(0):
        assert chunks.query_counts.max() <= 3 and len(targets) == 16
        read.update(as_rows(chunks, targets))
    assert all(count <= everything[sample] for sample, count in read.items())
    assert sum(read.values()) == sequence.steps(0) * 16


def _windows(items, starts, ends):
    from dimerec_dist.data.samples import window

    return window(items, starts, ends, 5), items[ends]


def test_sequence_mode_shuffles_runs_of_a_user_and_keeps_each_in_order(dataset):
    group = row_groups(dataset)[0]
    decoded = decode_group(group.file, group.index, group.id, 3, 0, "sequence", dataset.num_items, chunk_targets=3)
    assert decoded.runs[-1] == len(decoded.seqs) == group.samples
    for first, end in zip(decoded.runs[:-1], decoded.runs[1:]):
        assert len(set(decoded.seqs[first:end].tolist())) == 1 and 1 <= end - first <= 3
        assert np.all(np.diff(decoded.positions[first:end]) == 1)
    assert sorted(zip(decoded.seqs.tolist(), decoded.positions.tolist())) == sorted(
        (s, p) for s in range(len(decoded.offsets) - 1) for p in range(1, np.diff(decoded.offsets)[s])
    )
    order = [int(decoded.seqs[r]) for r in decoded.runs[:-1]]
    assert order != sorted(order), "runs are shuffled"


def test_random_cut_yields_one_sample_per_trainable_user(dataset):
    reader = stream(dataset, mode="random_cut", batch=8)
    total = sum(g.trainable for g in reader.plan.groups)
    assert reader.steps(0) == min(sum(g.trainable for g in s) for s in reader.plan.assignment(0)) // 4
    assert reader.steps(0) * 8 <= total


def test_bad_plans_are_refused(dataset):
    with pytest.raises(DataError, match="multiple of the world size"):
        stream(dataset, world=2, streams=3)
    with pytest.raises(DataError, match="multiple of data.streams"):
        stream(dataset, streams=3, batch=16)
    with pytest.raises(DataError, match="unknown data backend"):
        stream(dataset, backend="spark")


@pytest.mark.parametrize("mode", MODES)
def test_ray_backend_reads_the_same_batches(dataset, mode):
    pytest.importorskip("ray")
    local = [as_rows(h, t) for _, h, t in stream(dataset, mode=mode).batches(0)]
    remote = [as_rows(h, t) for _, h, t in stream(dataset, mode=mode, backend="ray").batches(0)]
    assert remote == local


def test_out_of_vocabulary_ids_are_caught_where_they_are_read(dataset, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"items": pa.array([[1, 2], [3, dataset.num_items + 5]], pa.list_(pa.int64()))}), bad)
    with pytest.raises(DataError, match=rf"bad.parquet: row group 0, row 1: item id {dataset.num_items + 5} outside"):
        decode_group(str(bad), 0, 0, 0, 0, "all", dataset.num_items)
    pq.write_table(pa.table({"items": pa.array([["a"]], pa.list_(pa.string()))}), bad)
    with pytest.raises(DataError, match=r"column 'items' has type list<\w+: string>, expected list<int64>"):
        decode_group(str(bad), 0, 0, 0, 0, "all", dataset.num_items)
