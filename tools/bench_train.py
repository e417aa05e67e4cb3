"""Trainer throughput and memory against catalog size, world size, table layout and device,
beside the replicated baseline, measured one after the other in one run.

    python tools/bench_train.py --out runs/bench_train                   # the default grid
    python tools/bench_train.py --out runs/bench_train --catalogs 1000 1000000 \
        --worlds 1 2 --layouts row_wise replicated --steps 40
    python tools/bench_train.py --out runs/bench_train/gpu --devices cpu cuda --worlds 1   # GPU beside CPU

Each cell is its own torchrun job (so peak RSS is its own), with the same cores split
over its ranks (threads per rank = cores / world). A job builds the model for a catalog
of N items (d = 64, the quickstart's model; --negatives shared negatives per step) - the trainer's
sharded model for a TorchRec
layout (row_wise, table_wise, column_wise, data_parallel), or the replicated baseline
(research/replicated.py) - and runs the trainer's step (train_step.build_step_runner) on batches
that the trainer's batch maker (data/batch_maker.py: negatives, logQ, noise) makes from ids drawn
in memory: histories of uniform length 1..max_history and ids uniform over the catalog
(every lookup a different row: the worst case for locality). The global batch for step s
depends only on (seed, s), so every cell trains on the same batches; the per-step losses
are reported, and equal across layouts.

Sequence mode against per-prefix mode (`--sequence-modes`): one rank, histories of
--histories items (default 50, 200, 1,000), a synthetic log of users with 4 x max_history
items each whose every position is a target, read in order. Each step trains the same
targets in three cells: per-prefix with ComiRec-SA's input positions (the default model),
per-prefix with score-bias positions, and sequence mode with score-bias positions (the same
model as the second, which it computes exactly: tests/model/test_sequence_mode.py).
Reported: targets/s and the item ids the table looks up per target (history and target, or
chunk; the step's shared negatives are the same in every cell and not counted).

Reported per cell: samples/s (global) over the timed steps after warm-up, peak RSS of
each rank (and on a GPU the peak of its allocated device memory), the table's measured bytes
per rank. On a GPU the ranks use NCCL and the fused kernels are FBGEMM's CUDA ones; the
losses of its cells are compared with the CPU's, step by step. Cells that cannot fit in this
machine's memory are not started: their projected size per rank is reported instead (so is
the replicated baseline on GPU: NCCL has no sparse all-reduce). Writes results.json,
results.md and two plots to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dimerec_dist.config import SHARDING  # noqa: E402
from tools.provenance import write_provenance  # noqa: E402

LAYOUTS = (*SHARDING, "replicated")  # TorchRec's layouts, and the replicated baseline
MODEL = ["model.embedding_dim=64", "model.max_history=50", "model.num_interests=4"]
STEP_KINDS = ("plain", "pipelined")
PRECISIONS = ("fp32", "bf16")
SEQUENCE_CELLS = (  # (mode, ComiRec-SA positions)
    ("per_prefix", "input"),
    ("per_prefix", "bias"),
    ("sequence", "bias"),
)


# --------------------------------------------------------------------------- one cell (a torchrun job)


def global_batch_ids(seed: int, step: int, batch: int, max_history: int, num_items: int):
    """The step's global batch: histories (B, N) of uniform length 1..N and targets, ids uniform."""
    import numpy as np

    from dimerec_dist.data.samples import HistoryBatch

    rng = np.random.default_rng([seed, step])
    lengths = rng.integers(1, max_history + 1, batch)
    ids = rng.integers(1, num_items + 1, (batch, max_history))
    ids[np.arange(max_history)[None, :] >= lengths[:, None]] = 0
    return HistoryBatch(ids=ids, lengths=lengths), rng.integers(1, num_items + 1, batch)


def log_chunks(seed: int, step: int, batch: int, rows: slice, max_history: int, num_items: int, chunk_targets: int):
    """The step's targets in a log of users with 4 x max_history items each (ids uniform, from
    (seed, user)), every position a target, read user after user: this rank's rows of the global
    batch as sequence-mode chunks (their `histories` are the per-prefix windows of the same targets)."""
    import numpy as np

    from dimerec_dist.data.samples import cut_chunks

    per_user = 4 * max_history  # targets of a user: positions 1 .. 4N
    index = step * batch + np.arange(batch)[rows]
    users = index // per_user
    first_user = int(users[0])
    flat = np.concatenate(
        [
            np.random.default_rng([seed, u]).integers(1, num_items + 1, per_user + 1)
            for u in range(first_user, users[-1] + 1)
        ]
    )
    starts = (users - first_user) * (per_user + 1)
    ends = starts + index % per_user + 1
    return cut_chunks(flat, starts, ends, max_history, chunk_targets), flat[ends]


def profile_summary(profiler, elapsed_s: float, steps: int, device_type: str) -> dict[str, float]:
    """Per timed step, from a torch.profiler run: wall time, CPU time in operators (all host threads,
    self time, so nothing counted twice) and, on a GPU, the kernels' time and the share of the wall
    time the device had no kernel (an upper bound of its idle time where streams overlap)."""
    events = profiler.key_averages()
    summary = {
        "wall_ms_per_step": 1000 * elapsed_s / steps,
        "host_op_ms_per_step": sum(e.self_cpu_time_total for e in events) / 1000 / steps,
    }
    if device_type == "cuda":
        device_ms = sum(e.self_device_time_total for e in events) / 1000 / steps
        summary["device_kernel_ms_per_step"] = device_ms
        summary["device_idle_share"] = max(0.0, 1 - device_ms / summary["wall_ms_per_step"])
    return summary


class TimedIterator:
    """An iterator that adds up the time its consumer spends waiting in next()."""

    def __init__(self, items):
        self.items, self.seconds = items, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        started = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.seconds += time.perf_counter() - started


def build_replicated(config, num_items: int, ctx):
    import torch

    from dimerec_dist.distributed.table_shards import RowShard, init_table_deterministically
    from dimerec_dist.training.builders import TrainingParts, dense_optimizer
    from research.replicated import ReplicatedDimeRec, SparseRowWiseAdagrad

    torch.manual_seed(config.seed)
    module = ReplicatedDimeRec(config.model, num_items).to(ctx.device)
    init_table_deterministically(
        [RowShard(0, 0, module.item_table.weight.data)],
        config.model.embedding_dim,
        config.seed,
        config.train.embedding_init,
    )
    model = torch.nn.parallel.DistributedDataParallel(module)
    params, optimizer, schedule = dense_optimizer(model, config)  # the trainer's own dense optimizer
    table_optimizer = SparseRowWiseAdagrad([module.item_table.weight], lr=config.train.sparse_lr)
    table = module.item_table.weight
    parts = TrainingParts(model, [], params, optimizer, schedule, table_optimizer)
    return parts, table.numel() * table.element_size() + table.shape[0] * 4


def run_cell(args) -> None:
    import torch
    import torch.distributed as dist

    from dimerec_dist.config import load_config
    from dimerec_dist.data.batch_maker import BatchMaker
    from dimerec_dist.data.prefetch import Prefetcher
    from dimerec_dist.distributed.sharded_model import TABLE_STATE_KEY
    from dimerec_dist.distributed.table_shards import local_row_shards, local_table_bytes
    from dimerec_dist.runtime.process_group import init_distributed, shutdown
    from dimerec_dist.training.builders import build_training
    from dimerec_dist.training.step import LossWindow, build_step_runner

    ctx = init_distributed(args.device)
    torch.set_num_threads(args.threads)
    layout = "row_wise" if args.layout == "replicated" else args.layout
    model = MODEL
    if args.mode:
        model = [
            *MODEL,
            f"model.max_history={args.history}",
            f"model.attention_positions={args.positions}",
            f"data.chunk_targets={args.chunk_targets}",
        ]
    config = load_config(
        None,
        [
            *model,
            f"train.batch_size={args.batch}",
            f"train.negatives={args.negatives}",
            f"sharding.type={layout}",
            f"train.pipeline={str(args.step == 'pipelined').lower()}",
            f"train.precision={args.precision}",
        ],
    )
    started = time.time()
    if args.layout == "replicated":
        parts, table_bytes = build_replicated(config, args.items, ctx)
        config.train.pipeline = False  # no TorchRec table to pipeline
    else:
        parts = build_training(config, args.items, ctx, run_dir=None)
        table_bytes = local_table_bytes(parts.model, local_row_shards(parts.model, TABLE_STATE_KEY))
    steps = build_step_runner(parts, config, ctx)  # the step training runs, fed synthetic batches
    build_seconds = time.time() - started
    per_rank = args.batch // ctx.world_size
    rows = torch.arange(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    batch_maker = BatchMaker(config, args.items, None, rows, pin=ctx.device.type == "cuda")  # the trainer's recipe
    ids_looked_up = [0]
    total_steps = args.warmup + args.steps

    def batches():
        for step in range(total_steps):
            local = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
            if args.mode:
                chunks, targets = log_chunks(
                    config.seed, step, args.batch, local, args.history, args.items, config.chunk_targets()
                )
                history = chunks if args.mode == "sequence" else chunks.histories(args.history)
                # What the table looks up besides the negatives: the chunks, or each window and its target.
                ids_looked_up[0] += int(history.lengths.sum()) + (0 if args.mode == "sequence" else len(targets))
            else:
                history, targets = global_batch_ids(config.seed, step, args.batch, config.model.max_history, args.items)
                history.ids, history.lengths, targets = history.ids[local], history.lengths[local], targets[local]
            yield batch_maker(0, step, history, targets)

    # plain: the step as it was before the pipeline - batches made on the training thread, the losses
    # read back every step; pipelined: as the trainer runs it now (Prefetcher, TorchRec's pipeline, one
    # read of the device per train.log_every steps, here once at the end).
    pipelined = args.step == "pipelined"
    source = TimedIterator(Prefetcher(batches()) if pipelined else batches())
    window, step_losses, read_seconds = LossWindow(ctx.device), [], 0.0
    timed_from, profiler = None, None
    synchronize = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)
    for step in range(total_steps):
        if step == args.warmup:
            synchronize()  # kernels are asynchronous: the warm-up's must not land in the timed window
            dist.barrier()
            timed_from, source.seconds, read_seconds = time.time(), 0.0, 0.0
            if args.profile:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if ctx.device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                profiler = torch.profiler.profile(activities=activities)
                profiler.__enter__()
        losses = steps.progress(source, step)
        step_losses.append(losses.total.detach())
        window.add(losses)
        if not pipelined:
            read_started = time.perf_counter()
            window.read(False, False)
            window.reset()
            read_seconds += time.perf_counter() - read_started
    window.read(False, False)
    synchronize()
    dist.barrier()
    elapsed = time.time() - timed_from
    steps.end()
    if pipelined:
        source.items.close()
    global_losses = torch.stack(step_losses).float()  # each rank's mean loss per step: read once, at the end
    dist.all_reduce(global_losses)
    losses_by_step = (global_losses / ctx.world_size).cpu().tolist()
    profile = None
    if profiler is not None:  # where a step's time goes (timed steps only): the top operators of rank 0
        profiler.__exit__(None, None, None)
        profile = profile_summary(profiler, elapsed, args.steps, ctx.device.type)
        if ctx.is_main:
            sort_by = "self_device_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
            table = profiler.key_averages().table(sort_by=sort_by, row_limit=20, max_name_column_width=60)
            summary = "\n".join(f"{key}: {value:.3f}" for key, value in profile.items())
            Path(args.result).with_suffix(".profile.txt").write_text(summary + "\n\n" + table)
    measured = [None] * ctx.world_size
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_device = torch.cuda.max_memory_allocated() if ctx.device.type == "cuda" else 0
    dist.all_gather_object(measured, (peak_rss, table_bytes, peak_device))
    if ctx.is_main:
        result = {
            "device": args.device,
            "layout": args.layout,
            "world": ctx.world_size,
            "items": args.items,
            "batch": args.batch,
            "negatives": args.negatives,
            "threads_per_rank": args.threads,
            "timed_steps": args.steps,
            "samples_per_s": args.steps * args.batch / elapsed,
            "build_s": build_seconds,
            "peak_rss_bytes": [m[0] for m in measured],
            "table_bytes": [m[1] for m in measured],
            "peak_device_bytes": [m[2] for m in measured],
            "losses": losses_by_step,
            "step": args.step,
            "precision": args.precision,
            # Host time of the training thread per timed step: all of it, in waiting for or making
            # batches, and in reading the losses back.
            "ms_per_step": 1000 * elapsed / args.steps,
            "data_ms_per_step": 1000 * source.seconds / args.steps,
            "read_ms_per_step": 1000 * read_seconds / args.steps,
            "profile": profile,
        }
        if args.mode:
            result.update(
                mode=args.mode,
                history=args.history,
                positions=args.positions,
                ids_per_target=ids_looked_up[0] / (total_steps * per_rank),
            )
        Path(args.result).write_text(json.dumps(result, indent=1))
    shutdown()


# --------------------------------------------------------------------------- the grid


def projected_bytes_per_rank(layout: str, items: int, world: int, dim: int = 64) -> int:
    """Table + row-wise optimizer state on the fullest rank, what must fit in memory."""
    rows = items + 1
    full = rows * (dim * 4 + 4)
    if layout in ("replicated", "data_parallel", "table_wise"):
        return full
    return math.ceil(full / world)


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def visible_gpus() -> list[tuple[str, int]]:
    """(name, memory in bytes) of each GPU nvidia-smi sees; none without a driver."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in listed.strip().splitlines():
        name, mib = line.rsplit(",", 1)
        gpus.append((name.strip(), int(mib) * 2**20))
    return gpus


def why_not_here(device: str, layout: str, world: int, items: int, gpus: list[tuple[str, int]]) -> str | None:
    """Why a cell cannot run on this machine, or None. Each rank holds its share of the table and
    state; on CPU the ranks share the host's memory, on GPU each has its own card."""
    need = projected_bytes_per_rank(layout, items, world)
    if device == "cpu":
        # Headroom for start-up, the dense model and the allocator, per job.
        if need * world * 1.15 + world * 1.5e9 > available_bytes():
            return (
                f"needs ~{need * world / 2**30:.1f} GiB of table and optimizer state over {world} rank(s), "
                f"{available_bytes() / 2**30:.1f} GiB available"
            )
        return None
    if len(gpus) < world:
        return f"needs {world} GPU(s), {len(gpus)} visible"
    if layout == "replicated":  # seen on an H200: DDP's all-reduce of the sparse table gradient fails
        return "the replicated baseline's sparse gradients need gloo: NCCL has no sparse all-reduce"
    if need * 1.15 + 4e9 > min(memory for _, memory in gpus):
        return (
            f"needs ~{need / 2**30:.1f} GiB of table and optimizer state per GPU, "
            f"{min(memory for _, memory in gpus) / 2**30:.1f} GiB on the card"
        )
    return None


def cell_key(r: dict) -> tuple:
    return r["device"], r["layout"], r["world"], r["items"]


def run_grid(args, gpus: list[tuple[str, int]]) -> list[dict]:
    # On one rank, table- and column-wise hold what row-wise holds: not worth a cell.
    cells = [
        (device, layout, world, items)
        for device in args.devices
        for items in args.catalogs
        for world in args.worlds
        for layout in args.layouts
        if not (world == 1 and layout in ("table_wise", "column_wise"))
    ]
    # Repeats run the whole grid again (A B A B, not A A B B), so slow drift of a noisy machine
    # hits every cell alike; the median rate is reported.
    cells = cells * args.repeats
    results, started = [], time.time()
    failed: dict[tuple, list[str]] = {}  # a cell's failed runs: their kept output
    for index, key in enumerate(cells):
        device, layout, world, items = key
        if any(r.get("skipped") and cell_key(r) == key for r in results):
            continue
        reason = why_not_here(device, layout, world, items, gpus)
        if reason:
            results.append({"device": device, "layout": layout, "world": world, "items": items, "skipped": reason})
            print(
                f"[{index + 1}/{len(cells)}] {device} {layout} world {world} {items:,} items: cannot run here "
                f"({reason})",
                flush=True,
            )
            continue
        result_file = Path(args.out) / f"cell-{device}-{layout}-w{world}-{items}.json"
        try:
            run_cell_job(args, world, ["--device", device, "--layout", layout], items, result_file)
        except CellFailed as failure:
            # One crashed job (a gloo segfault, an out-of-memory kill) costs its cell, not the grid's hours;
            # the report names it, a later repeat of the cell may still measure it.
            print(f"[{index + 1}/{len(cells)}] {device} {layout} world {world} {items:,} items: FAILED, {failure}")
            failed.setdefault(key, []).append(str(failure.log))
            continue
        result = json.loads(result_file.read_text())
        earlier = next((r for r in results if cell_key(r) == key), None)
        if earlier is None:
            result["samples_per_s_runs"] = [result["samples_per_s"]]
            results.append(result)
        else:
            earlier["samples_per_s_runs"].append(result["samples_per_s"])
            earlier["samples_per_s"] = statistics.median(earlier["samples_per_s_runs"])
            if device == "cpu" and result["losses"] != earlier["losses"]:  # GPU kernels may add in any order
                raise RuntimeError(f"{layout} world {world} {items} items: a repeat trained to other losses")
        spent = time.time() - started
        r = result
        device_peak = (
            f", peak GPU memory/rank {max(r['peak_device_bytes']) / 2**30:.2f} GiB" if device == "cuda" else ""
        )
        print(
            f"[{index + 1}/{len(cells)}] {device} {layout} world {world} {items:,} items: "
            f"{r['samples_per_s']:,.0f} samples/s, peak RSS/rank {max(r['peak_rss_bytes']) / 2**30:.2f} GiB"
            f"{device_peak} | {spent:.0f}s elapsed, ETA ~{spent / (index + 1) * (len(cells) - index - 1):.0f}s",
            flush=True,
        )
    for key, logs in failed.items():
        measured = next((r for r in results if cell_key(r) == key), None)
        if measured is None:  # failed on every run: a row of its own, with no figures
            measured = dict(zip(("device", "layout", "world", "items"), key))
            results.append(measured)
        measured["failed"] = logs
    return results


def run_cell_job(args, world: int, cell_args: list[str], items: int, result_file: Path) -> Path:
    """One cell as its own job, the machine's cores split over its ranks; its result file. One rank
    is a plain process (the trainer's one-rank group, as `dimerec-train` runs without torchrun)."""
    cores = args.cores or os.cpu_count()
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"] if world > 1 else []
    command = [
        sys.executable,
        *launcher,
        str(Path(__file__).resolve()),
        "--cell",
        *cell_args,
        "--items",
        str(items),
        "--batch",
        str(args.batch),
        "--negatives",
        str(args.negatives),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        *(["--profile"] if args.profile else []),
        "--threads",
        str(max(1, cores // world)),
        "--result",
        str(result_file),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(max(1, cores // world)),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        log = result_file.with_suffix(".failed.log")
        log.write_text(f"$ {' '.join(command)}\nexit status {done.returncode}\n\n{done.stdout}\n{done.stderr}")
        raise CellFailed(f"exit status {done.returncode}, output in {log}:\n{done.stderr[-2000:]}", log)
    return result_file


class CellFailed(RuntimeError):
    """A cell's job exited non-zero; its whole output is kept in `log`."""

    def __init__(self, message: str, log: Path):
        super().__init__(message)
        self.log = log


def run_sequence_grid(args) -> list[dict]:
    """Per-prefix against sequence mode at each history length, one rank, cells interleaved per
    repeat (A B C A B C); the median rate is reported, the losses of a repeat must not move."""
    cells = [
        (batch, history, mode, positions)
        for batch in args.sequence_batches
        for history in args.histories
        for mode, positions in SEQUENCE_CELLS
    ]
    items = args.catalogs[0]
    results: dict[tuple, dict] = {}
    started, total = time.time(), len(cells) * args.repeats
    for index, (batch, history, mode, positions) in enumerate(cells * args.repeats):
        result_file = Path(args.out) / f"sequence-{mode}-{positions}-h{history}-b{batch}.json"
        cell_args = ["--layout", "row_wise", "--mode", mode, "--positions", positions, "--history", str(history)]
        cell_args += ["--chunk-targets", str(args.chunk_targets)]
        args.batch = batch
        result = json.loads(run_cell_job(args, 1, cell_args, items, result_file).read_text())
        result["targets_per_s"] = result["samples_per_s"]
        earlier = results.setdefault((batch, history, mode, positions), {**result, "targets_per_s_runs": []})
        earlier["targets_per_s_runs"].append(result["targets_per_s"])
        earlier["targets_per_s"] = statistics.median(earlier["targets_per_s_runs"])
        if result["losses"] != earlier["losses"]:
            raise RuntimeError(f"{mode} {positions} history {history} batch {batch}: a repeat trained to other losses")
        spent = time.time() - started
        print(
            f"[{index + 1}/{total}] batch {batch}, history {history}, {mode} ({positions} positions): "
            f"{result['targets_per_s']:,.0f} targets/s, {result['ids_per_target']:.1f} ids/target | "
            f"{spent:.0f}s elapsed, ETA ~{spent / (index + 1) * (total - index - 1):.0f}s",
            flush=True,
        )
    return list(results.values())


def run_step_grid(args) -> list[dict]:
    """The plain step against the pipelined one at each precision, row-wise, cells interleaved per
    repeat; the median rate is reported. On CPU both kinds must train to the same losses."""
    cells = [
        (device, items, batch, world, precision, step)
        for device in args.devices
        for items in args.catalogs
        for batch in args.batches or [args.batch]
        for world in args.worlds
        for precision in args.precisions
        for step in STEP_KINDS
    ]
    results: dict[tuple, dict] = {}
    started, total = time.time(), len(cells) * args.repeats
    for index, key in enumerate(cells * args.repeats):
        device, items, batch, world, precision, step = key
        result_file = Path(args.out) / f"step-{device}-{items}-b{batch}-w{world}-{precision}-{step}.json"
        args.batch = batch
        cell_args = ["--device", device, "--layout", "row_wise", "--step", step, "--precision", precision]
        result = json.loads(run_cell_job(args, world, cell_args, items, result_file).read_text())
        earlier = results.setdefault(key, {**result, "samples_per_s_runs": []})
        earlier["samples_per_s_runs"].append(result["samples_per_s"])
        earlier["samples_per_s"] = statistics.median(earlier["samples_per_s_runs"])
        spent = time.time() - started
        print(
            f"[{index + 1}/{total}] {device} {items:,} items batch {batch} world {world} {precision} {step}: "
            f"{result['samples_per_s']:,.0f} samples/s, {result['ms_per_step']:.1f} ms/step "
            f"(data {result['data_ms_per_step']:.1f}, read-back {result['read_ms_per_step']:.1f}) | "
            f"{spent:.0f}s elapsed, ETA ~{spent / (index + 1) * (total - index - 1):.0f}s",
            flush=True,
        )
    for (device, items, batch, world, precision, step), r in results.items():
        plain = results[device, items, batch, world, precision, "plain"]
        r["max_relative_loss_difference_to_plain"] = max(
            abs(a - b) / abs(a) for a, b in zip(plain["losses"], r["losses"])
        )
        fp32 = results.get((device, items, batch, world, "fp32", step))
        if fp32 is not None:
            r["max_relative_loss_difference_to_fp32"] = max(
                abs(a - b) / abs(a) for a, b in zip(fp32["losses"], r["losses"])
            )
    return list(results.values())


def write_step_report(results: list[dict], out: Path, machine: str) -> None:
    rows = [
        "| device | items | batch | world | precision | step | samples/s | ms per step | of which waiting for "
        "or making batches | of which reading losses back | losses against plain (max rel.) "
        "| against fp32 (max rel.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cell = {(r["device"], r["items"], r["batch"], r["world"], r["precision"], r["step"]): r for r in results}
    ratios = []
    for key, r in cell.items():
        rows.append(
            f"| {r['device']} | {r['items']:,} | {r['batch']:,} | {r['world']} | {r['precision']} | {r['step']} "
            f"| {r['samples_per_s']:,.0f} | {r['ms_per_step']:.2f} | {r['data_ms_per_step']:.2f} "
            f"| {r['read_ms_per_step']:.2f} | {r['max_relative_loss_difference_to_plain']:.1e} "
            f"| {r.get('max_relative_loss_difference_to_fp32', 0):.1e} |"
        )
        if key[-1] == "pipelined":
            plain = cell[(*key[:-1], "plain")]
            ratios.append(
                f"pipelined / plain, {key[0]}, {key[1]:,} items, batch {key[2]:,}, world {key[3]}, {key[4]}: "
                f"samples/s x{r['samples_per_s'] / plain['samples_per_s']:.2f}"
            )
        if key[-2] == "bf16" and (*key[:-2], "fp32", key[-1]) in cell:
            fp32 = cell[(*key[:-2], "fp32", key[-1])]
            ratios.append(
                f"bf16 / fp32, {key[0]}, {key[1]:,} items, batch {key[2]:,}, world {key[3]}, {key[5]}: "
                f"samples/s x{r['samples_per_s'] / fp32['samples_per_s']:.2f}"
            )
    text = "\n".join([f"Machine: {machine}", "", *rows, "", *[f"- {line}" for line in ratios]])
    (out / "steps.md").write_text(text + "\n")
    (out / "steps.json").write_text(json.dumps(results, indent=1))
    write_provenance(out)
    print(text)


def write_sequence_report(results: list[dict], out: Path, machine: str) -> None:
    cell = {(r["batch"], r["history"], r["mode"], r["positions"]): r for r in results}
    rows = [
        "| batch (targets) | history | mode | ComiRec-SA positions | targets/s | ids looked up per target "
        "| targets/s against per-prefix, same model | against per-prefix, input positions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (batch, history, mode, positions), r in sorted(cell.items()):
        same = cell[(batch, history, "per_prefix", positions)]
        default = cell[(batch, history, "per_prefix", "input")]
        rows.append(
            f"| {batch:,} | {history:,} | {mode} | {positions} | {r['targets_per_s']:,.0f} | "
            f"{r['ids_per_target']:.1f} | "
            f"x{r['targets_per_s'] / same['targets_per_s']:.1f} | "
            f"x{r['targets_per_s'] / default['targets_per_s']:.1f} |"
        )
    r = results[0]
    text = "\n".join(
        [
            f"Machine: {machine}; one rank, {r['items']:,} items, d 64, K 4, {r['negatives']:,} shared negatives, "
            f"{r['timed_steps']} timed steps, median of "
            f"{len(r['targets_per_s_runs'])} runs",
            "",
            *rows,
        ]
    )
    (out / "sequence.md").write_text(text + "\n")
    (out / "sequence.json").write_text(json.dumps(results, indent=1))
    write_provenance(out)
    print(text)
    plot_sequence(results, out)


def plot_sequence(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for batch in sorted({r["batch"] for r in results}):
        for mode, positions in SEQUENCE_CELLS:
            cells = sorted(
                (r for r in results if (r["batch"], r["mode"], r["positions"]) == (batch, mode, positions)),
                key=lambda r: r["history"],
            )
            ax.plot(
                [r["history"] for r in cells],
                [r["targets_per_s"] for r in cells],
                marker="o",
                linestyle="-" if mode == "sequence" else "--",
                label=f"{mode.replace('_', '-')}, {positions} positions, batch {batch:,}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("max_history (items a target's window reads)")
    ax.set_ylabel("targets/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bench_sequence_throughput.png", dpi=120)
    plt.close(fig)


def held_bytes(r: dict) -> int:
    """What a rank holds at its peak: device memory on a GPU, host memory on CPU."""
    return max(r["peak_device_bytes"]) if r["device"] == "cuda" else max(r["peak_rss_bytes"])


def catalog_memory(results: list[dict]) -> None:
    """Peak memory per rank minus the same device, layout and world size's run on the smallest catalog."""
    base = {}
    for r in results:
        if "samples_per_s" in r:
            key = cell_key(r)[:3]
            if key not in base or r["items"] < base[key]["items"]:
                base[key] = r
    for r in results:
        if "samples_per_s" in r:
            reference = base[cell_key(r)[:3]]
            r["catalog_bytes_per_rank"] = held_bytes(r) - held_bytes(reference)
            r["catalog_reference_items"] = reference["items"]


def comparisons(results: list[dict]) -> list[str]:
    """The issue's ratios: sharded against replicated, GPU against CPU, side by side from this run;
    and every cell's losses against row-wise on CPU on the fewest ranks (the same batches)."""
    cell = {cell_key(r): r for r in results if "samples_per_s" in r}
    lines = []
    for (device, layout, world, items), r in sorted(cell.items()):
        baseline = cell.get((device, "replicated", world, items))
        if layout == "replicated" or baseline is None:
            continue
        line = (
            f"{layout} / replicated, world {world}, {items:,} items, {device}: samples/s x"
            f"{r['samples_per_s'] / baseline['samples_per_s']:.2f}"
        )
        if baseline.get("catalog_bytes_per_rank", 0) > 0 and r["items"] != r["catalog_reference_items"]:
            line += (
                f", catalog-dependent memory per rank x"
                f"{r['catalog_bytes_per_rank'] / baseline['catalog_bytes_per_rank']:.2f}"
            )
        lines.append(line)
    for (device, layout, world, items), r in sorted(cell.items()):
        on_cpu = cell.get(("cpu", layout, world, items))
        if device == "cuda" and on_cpu is not None:
            lines.append(
                f"cuda / cpu, {layout}, world {world}, {items:,} items: samples/s x"
                f"{r['samples_per_s'] / on_cpu['samples_per_s']:.2f}"
            )
    for key, r in sorted(cell.items()):
        items = key[3]
        reference_device = "cpu" if any(k[0] == "cpu" and k[3] == items for k in cell) else key[0]
        worlds = [k[2] for k in cell if k[0] == reference_device and k[1] == "row_wise" and k[3] == items]
        reference = cell.get((reference_device, "row_wise", min(worlds), items)) if worlds else None
        if reference is not None and r is not reference:
            drift = max(abs(a - b) / abs(a) for a, b in zip(reference["losses"], r["losses"]))
            lines.append(
                f"losses of {key[1]}, world {key[2]}, {items:,} items, {key[0]} against row_wise on "
                f"{reference['world']} rank(s), {reference_device}: max relative difference {drift:.1e}"
            )
    return lines


def write_report(results: list[dict], out: Path, machine: str) -> None:
    catalog_memory(results)
    rows = [
        "| device | layout | world | items | samples/s | peak RSS per rank (GiB) | peak GPU memory per rank (GiB) "
        "| catalog-dependent memory per rank (GiB) | table + optimizer per rank, measured (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gib = lambda values: " / ".join(f"{b / 2**30:.2f}" for b in values)  # noqa: E731
    for r in results:
        if "skipped" in r:
            rows.append(
                f"| {r['device']} | {r['layout']} | {r['world']} | {r['items']:,} | cannot run: {r['skipped']} "
                "| | | | |"
            )
            continue
        if "samples_per_s" not in r:
            rows.append(
                f"| {r['device']} | {r['layout']} | {r['world']} | {r['items']:,} | failed, every run: "
                f"{', '.join(r['failed'])} | | | | |"
            )
            continue
        rows.append(
            f"| {r['device']} | {r['layout']} | {r['world']} | {r['items']:,} | {r['samples_per_s']:,.0f} | "
            f"{gib(r['peak_rss_bytes'])} | {gib(r['peak_device_bytes']) if r['device'] == 'cuda' else '-'} | "
            f"{r['catalog_bytes_per_rank'] / 2**30:.2f} | {gib(r['table_bytes'])} |"
        )
    failures = [
        f"{r['layout']}, world {r['world']}, {r['items']:,} items, {r['device']}: {len(r['failed'])} run(s) failed, "
        f"output in {', '.join(r['failed'])}"
        for r in results
        if r.get("failed")
    ]
    lines = comparisons(results) + failures
    text = "\n".join([f"Machine: {machine}", "", *rows, "", *[f"- {line}" for line in lines]])
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_provenance(out)
    print(text)
    plot(results, out)


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str, int], list[dict]] = {}
    for r in results:
        if "samples_per_s" in r:
            series.setdefault(cell_key(r)[:3], []).append(r)
    devices = {key[0] for key in series}
    for key, ylabel, name in (
        ("samples_per_s", "samples/s (global)", "bench_train_throughput.png"),
        (
            "memory",
            "peak memory of the fullest rank (GiB)\n(GPU memory on GPU, RSS on CPU)"
            if "cuda" in devices
            else "peak RSS of the fullest rank (GiB)",
            "bench_train_memory.png",
        ),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for (device, layout, world), cells in sorted(series.items()):
            cells = sorted(cells, key=lambda r: r["items"])
            values = [r[key] if key == "samples_per_s" else held_bytes(r) / 2**30 for r in cells]
            label = f"{layout}, {world} rank(s)" + (f", {device}" if len(devices) > 1 else "")
            ax.plot(
                [r["items"] for r in cells],
                values,
                marker="o",
                linestyle="--" if layout == "replicated" else "-",
                label=label,
            )
        ax.set_xscale("log")
        ax.set_xlabel("catalog size (items)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_train")
    parser.add_argument("--catalogs", type=int, nargs="+", default=[1000, 1_000_000, 10_000_000, 50_000_000])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=["row_wise", "replicated"])
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=("cpu", "cuda"),
        default=["cpu"],
        help="cuda: one GPU per rank, NCCL, FBGEMM's CUDA kernels",
    )
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--negatives", type=int, default=1024, help="sampled negatives shared by a step")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="runs of the whole grid; the median is reported")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also write each cell's top operators (torch.profiler, rank 0) beside its result",
    )
    parser.add_argument("--cores", type=int, default=0, help="cores shared by a cell's ranks (0: all)")
    parser.add_argument(
        "--sequence-modes",
        action="store_true",
        help="per-prefix against sequence mode at each of --histories (one rank, the first of --catalogs)",
    )
    parser.add_argument("--histories", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument(
        "--sequence-batches", type=int, nargs="+", default=[256, 1024], help="global batches (targets) of that grid"
    )
    parser.add_argument(
        "--compare-steps",
        action="store_true",
        help="the plain step against the pipelined one (and --precisions), row-wise, at each of --worlds, "
        "--catalogs, --batches and --devices, with host time per step",
    )
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"])
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[], help="global batches of that grid (default --batch)"
    )
    parser.add_argument(
        "--machine", default=f"{os.cpu_count()} CPU cores, {available_bytes() / 2**30:.0f} GiB available"
    )
    # One cell, run by torchrun:
    parser.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("per_prefix", "sequence"), help=argparse.SUPPRESS)
    parser.add_argument("--positions", choices=("input", "bias"), default="input", help=argparse.SUPPRESS)
    parser.add_argument("--history", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument(
        "--chunk-targets", type=int, default=0, help="sequence cells: targets per chunk (0: the trainer's default)"
    )
    parser.add_argument("--step", choices=STEP_KINDS, default="pipelined", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        run_cell(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sequence_modes:
        write_sequence_report(run_sequence_grid(args), out, args.machine)
        return
    gpus = visible_gpus() if "cuda" in args.devices else []
    machine = args.machine
    if "cuda" in args.devices:
        machine += "; " + (", ".join(f"{name} ({memory / 2**30:.0f} GiB)" for name, memory in gpus) or "no GPU visible")
    if args.compare_steps:
        write_step_report(run_step_grid(args), out, machine)
        return
    results = run_grid(args, gpus)
    write_report(results, out, machine)
    unmeasured = [r for r in results if "failed" in r and "samples_per_s" not in r]
    if unmeasured:
        raise SystemExit(f"{len(unmeasured)} cell(s) failed on every run; their output: {unmeasured[0]['failed'][0]}")


if __name__ == "__main__":
    main()
