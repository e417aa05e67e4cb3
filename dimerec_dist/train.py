"""dimerec-train: train DimeRec with the item table sharded by TorchRec.

Runs as a plain process (a one-rank group) or under torchrun (gloo on CPU, NCCL on GPU):

    dimerec-train --config configs/quickstart.yaml --run-dir runs/quick
    torchrun --nproc_per_node=2 -m dimerec_dist.train --config configs/beauty.yaml --run-dir runs/beauty

One step, top to bottom: the plan gives this rank its slice of the global batch; the
batch's ids go through the sharded table (history, target, shared negatives); DimeRec
returns L_gem + lambda L_recon + mu L_ssm; backward updates the table in place (fused
optimizer) and the dense Adam steps GEM and DAM.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from dimerec_dist.checkpoint import (CheckpointError, CheckpointManager, TrainingState, check_data_plan,
                                     check_optimizer_layout, check_same_settings, load_model, save_model, verified)
from dimerec_dist.config import ConfigError, JobConfig, config_to_dict, load_config
from dimerec_dist.data.batch import NegativeSampler, make_batch
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.stream import TrainStream
from dimerec_dist.data.schema import DataError, Manifest, read_items, read_split
from dimerec_dist.data.source import ensure_dataset
from dimerec_dist.diversity import diversity, item_categories
from dimerec_dist.evaluate import SplitEvaluation, evaluate_split
from dimerec_dist.metrics import MetricsLogger, Progress
from dimerec_dist.model import NoiseDraw
from dimerec_dist.output_dir import OutputError, writable_dir
from dimerec_dist.parallel import (DistContext, init_distributed, plan_sharding, resolved_column_block, run_command,
                                   shard_model)
from dimerec_dist.table_shards import init_table_deterministically, local_row_shards, local_table_bytes, scoring_shards
from dimerec_dist.sharded_model import TABLE_NAME, TABLE_STATE_KEY, ShardedDimeRec

log = logging.getLogger("dimerec.train")


def setup_logging(ctx: DistContext) -> None:
    """Our INFO lines on rank 0; libraries (TorchRec, FBGEMM) only at WARNING."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {ctx.rank}] %(name)s %(message)s",
                        force=True)
    logging.getLogger("dimerec").setLevel(logging.INFO if ctx.is_main else logging.WARNING)


# --------------------------------------------------------------------------- building


def sparse_optimizer(config: JobConfig, ctx: DistContext) -> tuple[type, dict]:
    """The optimizer TorchRec fuses into the table's backward pass."""
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    kind, lr = config.train.sparse_optimizer, config.train.sparse_lr
    if kind == "adam" and ctx.device.type != "cuda":
        raise ConfigError("train.sparse_optimizer=adam is fused only on GPU; use rowwise_adagrad or sgd on CPU")
    return {"rowwise_adagrad": (RowWiseAdagrad, {"lr": lr, "eps": 1e-8}),
            "sgd": (torch.optim.SGD, {"lr": lr}),
            "adam": (torch.optim.Adam, {"lr": lr})}[kind]


def build_model(config: JobConfig, num_items: int, ctx: DistContext, run_dir: Path | None):
    """The sharded model: plan, shard, then a deterministic table init that any world size repeats."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    torch.manual_seed(config.seed)  # dense weights: identical on every rank and every world size
    module = ShardedDimeRec(config.model, num_items, in_batch_negatives=config.train.in_batch_negatives)
    optimizer_class, optimizer_args = sparse_optimizer(config, ctx)
    apply_optimizer_in_backward(optimizer_class, module.item_table.parameters(), optimizer_args)
    plan, sharders, estimate = plan_sharding(module, TABLE_NAME, config.sharding.type, ctx,
                                             config.sharding.column_block)
    model = shard_model(module, plan, sharders, ctx, find_unused_parameters=not config.model.trains_dam)
    shards = local_row_shards(model, TABLE_STATE_KEY)
    init_table_deterministically(shards, config.model.embedding_dim, config.seed, config.train.embedding_init)
    held = [None] * ctx.world_size
    dist.all_gather_object(held, ([tuple(s.weight.shape) for s in shards], local_table_bytes(model, shards)))
    if ctx.is_main:
        lines = [f"rank {r}: {_pieces(pieces)}, table + optimizer state {_size(measured)} measured, "
                 f"planner estimate {_size(estimate.get(r, 0))}" for r, (pieces, measured) in enumerate(held)]
        summary = f"{plan}\n\nmemory per rank ({config.sharding.type}, {ctx.world_size} ranks):\n" + "\n".join(lines)
        log.info("sharding plan:\n%s", summary)
        if run_dir is not None:
            (run_dir / "sharding_plan.txt").write_text(summary + "\n")
    return model, shards


def replicated_table_optimizer(model, config: JobConfig, ctx: DistContext) -> torch.optim.Optimizer | None:
    """The table's optimizer when it is data-parallel. TorchRec fuses optimizers into sharded
    tables only; a replicated table is a plain parameter (its DDP averages the gradient), so
    the configured sparse optimizer steps it after backward, like the dense one."""
    if config.sharding.type != "data_parallel":
        return None
    optimizer_class, optimizer_args = sparse_optimizer(config, ctx)
    table = [p for name, p in model.named_parameters() if name.endswith(TABLE_STATE_KEY)]
    if len(table) != 1:
        raise RuntimeError(f"expected the data-parallel table among the parameters, found {len(table)}")
    return optimizer_class(table, **optimizer_args)


def _pieces(shapes: list[tuple[int, int]]) -> str:
    """'151 rows x 16 columns' for the table pieces one rank holds."""
    if not shapes:
        return "0 rows"
    return " + ".join(f"{rows:,} rows x {cols} columns" for rows, cols in shapes)


def dense_optimizer(model, config: JobConfig):
    params = list(model.module.dimerec.parameters())
    optimizer = torch.optim.Adam(params, lr=config.train.dense_lr, weight_decay=config.train.weight_decay)
    warmup = config.train.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return params, optimizer, schedule


def check_protocol(config: JobConfig, manifest: Manifest) -> None:
    if manifest.protocol != config.data.split:
        raise ConfigError(f"{manifest.root} was prepared with the {manifest.protocol} split, the job asks for "
                          f"data.split={config.data.split}; set data.split={manifest.protocol} or prepare it again")


def check_held_out_users(config: JobConfig, manifest: Manifest) -> None:
    """Evaluation needs validation and test users: say so now, not after a whole epoch."""
    if not (config.train.eval_every_epochs or config.eval.at_end):
        return
    for split in ("valid", "test"):
        if manifest.data["counts"][f"{split}_users"] == 0:
            raise DataError(f"{manifest.root}: no {split} users (no user has enough items to hold one out), and "
                            f"the job evaluates on them; use a larger data set, or train.eval_every_epochs=0 "
                            f"eval.at_end=false to train without evaluating")


def logq_corrections(config: JobConfig, sampler: NegativeSampler,
                     popularity: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """log expected count of each item among the sampled negatives and among the in-batch
    negatives (global batch size x its share of training events), or None where uncorrected.
    Uniform sampling alone needs none: a constant shift leaves the softmax unchanged."""
    train = config.train
    if not train.logq_correction or (train.negative_sampler == "uniform" and not train.in_batch_negatives):
        return None, None
    in_batch = None
    if train.in_batch_negatives:
        share = np.maximum(popularity.astype(np.float64), 1.0) / max(1.0, float(popularity[1:].sum()))
        in_batch = np.log(train.batch_size * share)
    return sampler.log_q, in_batch


def noise_for_rank(config: JobConfig, global_batch: int, epoch: int, step: int, rows: torch.Tensor,
                   device: torch.device) -> NoiseDraw:
    """The step's diffusion noise, drawn for the whole global batch; this rank takes its
    rows. The same sample gets the same t and eps whatever the world size."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 100_003 + step)
    draw = NoiseDraw.draw(global_batch, config.model.embedding_dim, config.model.diffusion_steps, generator,
                          guidance_dropout=config.model.guidance_dropout)
    return draw.rows(rows, device)


def training_step(model, batch, draw: NoiseDraw, params: list, optimizer: torch.optim.Optimizer,
                  table_optimizer: torch.optim.Optimizer | None, grad_clip: float):
    """Forward, backward, optimizer steps; the losses (this rank's) and the dense gradient norm."""
    losses = model(batch, draw)
    optimizer.zero_grad(set_to_none=True)
    losses.total.backward()  # a sharded table's rows are updated here, by the fused optimizer
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    optimizer.step()
    if table_optimizer is not None:
        table_optimizer.step()
        table_optimizer.zero_grad(set_to_none=True)
    return losses, grad_norm


def reduce_losses(losses, stop_requested: bool) -> tuple[dict[str, float], bool]:
    """Global mean losses (the mean of the ranks' means: every rank holds as many samples), and
    whether any rank was asked to stop, in one all-reduce on the losses' own device (the GPU's
    under NCCL)."""
    stop = torch.tensor(float(stop_requested), device=losses.total.device)
    parts = torch.stack([losses.total.detach(), losses.gem.detach(), losses.recon.detach(), losses.ssm.detach(), stop])
    dist.all_reduce(parts)
    values = parts.tolist()
    means = [value / dist.get_world_size() for value in values[:4]]
    return dict(zip(("loss/total", "loss/gem", "loss/recon", "loss/ssm"), means)), values[4] > 0


def plan_epochs(stream: TrainStream, epochs: int, max_steps: int) -> list[int]:
    """Steps to run in each epoch: `epochs` whole epochs, or as many as `max_steps` needs.
    Epochs can differ by a few steps (the shortest stream of each epoch's plan decides)."""
    steps: list[int] = []
    while (sum(steps) < max_steps) if max_steps else (len(steps) < epochs):
        steps.append(stream.steps(len(steps)))
    if max_steps:
        steps[-1] -= sum(steps) - max_steps
    return steps


# --------------------------------------------------------------------------- evaluation


def evaluate(model, shards, config: JobConfig, ctx: DistContext, users: EvaluationUsers,
             popularity: np.ndarray | None = None):
    return evaluate_split(model.module, shards, users, ctx, dim=config.model.embedding_dim, ks=config.eval.ks,
                          batch_size=config.eval.batch_size, exclude_seen=config.eval.exclude_seen,
                          query_mode=config.query_mode(), cosine=config.model.cosine_logits,
                          sample_steps=config.model.sample_steps, seed=config.seed, popularity=popularity)


def selection_key(config: JobConfig) -> str:
    k = 10 if 10 in config.eval.ks else config.eval.ks[0]
    return f"ndcg@{k}"


# --------------------------------------------------------------------------- the loop


def train(config: JobConfig, run_dir: Path) -> dict:
    ctx = init_distributed(config.train.device)
    setup_logging(ctx)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    writable_dir(run_dir, "--run-dir")
    writable_dir(run_dir / "checkpoints", "the checkpoint directory")
    # Resume: the newest complete checkpoint (resume=auto), or a named one. Checked against this
    # job (settings, table optimizer layout) before its config.yaml replaces the saved one, so a
    # refused resume leaves the run as it was.
    checkpoints = CheckpointManager(run_dir / "checkpoints", config.train.keep_checkpoints,
                                    asynchronous=config.train.checkpoint_async)
    resume_from = resume_path(config.train.resume, checkpoints)
    if resume_from is not None:
        if config.train.resume == "auto":  # a named checkpoint may change the plan on purpose (logged below)
            check_data_plan(resume_from, config, ctx.world_size)
        check_same_settings(resume_from, config, named=config.train.resume != "auto", world_size=ctx.world_size)
        check_optimizer_layout(resume_from, config.sharding.type, resolved_column_block(
            config.sharding.column_block, config.model.embedding_dim, ctx.world_size))
    if ctx.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))

    # Data: every rank reads the same prepared dataset; the plan decides who reads what.
    manifest = Manifest.load(ensure_dataset(config.data, run_dir, ctx.is_main))
    check_protocol(config, manifest)
    config.check_catalog(manifest.num_items, str(manifest.root))
    check_held_out_users(config, manifest)
    global_batch = config.train.batch_size
    if global_batch % ctx.world_size:
        raise ConfigError(f"train.batch_size={global_batch} must divide evenly over {ctx.world_size} ranks")
    stream = TrainStream(manifest, max_history=config.model.max_history, global_batch=global_batch,
                         streams=config.data.streams, world_size=ctx.world_size, rank=ctx.rank, seed=config.seed,
                         sample_mode=config.data.sample_mode, backend=config.data.backend,
                         window_size=config.data.window, mix=config.data.mix)
    rank_rows = torch.from_numpy(stream.global_rows)
    valid = EvaluationUsers(read_split(manifest, "valid"), config.model.max_history)
    test = EvaluationUsers(read_split(manifest, "test"), config.model.max_history)
    popularity = np.concatenate([[0], read_items(manifest).column("popularity").to_numpy()])
    sampler = NegativeSampler(config.train.negative_sampler, manifest.num_items, config.train.negatives,
                              popularity=popularity[1:], alpha=config.train.popularity_alpha, seed=config.seed)
    log_q, in_batch_log_q = logq_corrections(config, sampler, popularity)

    model, shards = build_model(config, manifest.num_items, ctx, run_dir)
    params, optimizer, schedule = dense_optimizer(model, config)
    table_optimizer = replicated_table_optimizer(model, config, ctx)
    metrics = MetricsLogger(run_dir, ctx.is_main)

    if stream.steps(0) == 0:
        raise DataError(f"{manifest.root}: {manifest.data['counts']['train_samples']} training samples, "
                        f"fewer than one batch of {global_batch} per stream")
    epoch_steps = plan_epochs(stream, config.train.epochs, config.train.max_steps)
    total_steps = sum(epoch_steps)
    log.info("%d training samples, ~%d steps/epoch, %d steps over %d epochs, global batch %d (%d per rank), "
             "%d ranks, %d streams, %s reader", manifest.data["counts"]["train_samples"], epoch_steps[0], total_steps,
             len(epoch_steps), global_batch, global_batch // ctx.world_size, ctx.world_size, stream.plan.streams,
             config.data.backend)

    state = TrainingState()
    if resume_from is not None:
        state, dense = CheckpointManager.load(resume_from, model, manifest.num_items, config.model)
        optimizer.load_state_dict(dense["optimizer"])
        schedule.load_state_dict(dense["schedule"])
        if table_optimizer is not None:
            table_optimizer.load_state_dict(dense["table_optimizer"])
        log.info("resumed from %s: step %d, epoch %d (%d steps into it)", resume_from, state.step, state.epoch,
                 state.epoch_step)

    def save_checkpoint() -> None:
        if checkpoints.last_saved_step != state.step and checkpoints.latest() != checkpoints.path_for(state.step):
            dense = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "table_optimizer": None if table_optimizer is None else table_optimizer.state_dict()}
            checkpoints.save(model, dense, state, manifest.num_items, config_to_dict(config))

    progress = Progress(total_steps, global_batch, start_step=state.step)
    stop = StopRequest()
    best_path = run_dir / "model"
    model.train()

    for epoch in range(state.epoch, len(epoch_steps)):
        first = state.epoch_step if epoch == state.epoch else 0
        for epoch_step, history, targets in stream.batches(epoch, start_step=first):
            if epoch_step >= epoch_steps[epoch]:
                break
            inject_fault_for_tests(state.step, ctx.rank)
            # Dropout's generator, from (seed, step, rank): a resumed run draws what it would have drawn.
            torch.manual_seed(config.seed * 1_000_003 + state.step * 1_009 + ctx.rank)
            batch = make_batch(history, targets, sampler.draw(epoch, epoch_step), log_q, in_batch_log_q).to(ctx.device)
            draw = noise_for_rank(config, global_batch, epoch, epoch_step, rank_rows, ctx.device)

            losses, grad_norm = training_step(model, batch, draw, params, optimizer, table_optimizer,
                                              config.train.grad_clip)
            schedule.step()
            state.step, state.epoch, state.epoch_step = state.step + 1, epoch, epoch_step + 1

            values, stop_now = reduce_losses(losses, stop.requested)
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"non-finite loss at step {state.step}: {values}")
            if state.step % config.train.log_every == 0 or state.step == total_steps:
                rate = progress.rate(state.step)
                metrics.scalars(state.step, {**values, "lr/dense": schedule.get_last_lr()[0],
                                             "lr/sparse": config.train.sparse_lr, "grad_norm/dense": float(grad_norm),
                                             "throughput/samples_per_s": rate, "epoch": epoch})
                log.info(progress.line(state.step, epoch, rate, values))
            if stop_now:
                save_checkpoint()
                checkpoints.wait()
                log.warning("stopped by a signal at step %d; the checkpoint is saved, resume=auto continues", state.step)
                metrics.close()
                return {"preempted": True, "step": state.step}
            if config.train.checkpoint_every and state.step % config.train.checkpoint_every == 0:
                save_checkpoint()

        state.epoch, state.epoch_step = epoch + 1, 0
        last_epoch = epoch == len(epoch_steps) - 1
        if config.train.eval_every_epochs and ((epoch + 1) % config.train.eval_every_epochs == 0 or last_epoch):
            model.eval()
            scores = evaluate(model, shards, config, ctx, valid).metrics
            model.train()
            metrics.scalars(state.step, {f"valid/{k}": v for k, v in scores.items()})
            log.info("epoch %d valid %s", epoch, _fmt(scores))
            if scores[selection_key(config)] > state.best_score:
                state.best_score = scores[selection_key(config)]
                save_model(model, best_path, manifest.num_items, config.model, {"step": state.step, "epoch": epoch})
        save_checkpoint()  # every epoch end (and every checkpoint_every steps): what resume=auto picks up
    checkpoints.wait()

    if not config.train.eval_every_epochs:
        save_model(model, best_path, manifest.num_items, config.model, {"step": state.step})
    load_model(model, best_path, manifest.num_items, config.model)  # the best epoch on validation
    model.eval()
    if not config.eval.at_end:
        metrics.close()
        return {}
    final, _ = final_metrics(model, shards, config, ctx, valid, test, popularity, item_categories(manifest))
    metrics.scalars(state.step, {f"final/{split}/{k}": v for split in ("valid", "test") for k, v in final[split].items()})
    metrics.close()
    if ctx.is_main:
        (run_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
        log.info("final test %s | popularity %s", _fmt(final["test"]), _fmt(final["popularity"]["test"]))
    return final


def resume_path(resume: str, checkpoints: CheckpointManager) -> Path | None:
    if resume == "none":
        return None
    if resume == "auto":
        return checkpoints.latest_verified()
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"train.resume={resume}: no such checkpoint directory")
    return verified(path)


class StopRequest:
    """SIGTERM or SIGINT asks for a checkpoint and a clean stop at the end of the current step.

    One stop often arrives as several signals: a scheduler signals every process of the job,
    torchrun's agent forwards its own, a terminal's Ctrl-C reaches the whole process group.
    Those are one request; only a SIGINT well after the first (a person pressing Ctrl-C
    again) stops at once, without the checkpoint."""

    SAME_REQUEST_S = 5.0

    def __init__(self):
        self.requested = False
        self._first_at = 0.0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            self.requested, self._first_at = True, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._first_at > self.SAME_REQUEST_S:
            raise KeyboardInterrupt


def inject_fault_for_tests(step: int, rank: int) -> None:
    """The restart tests kill one rank at a chosen step, on the first attempt only
    (DIMEREC_FAULT_STEP=N DIMEREC_FAULT_RANK=R), or slow every step down to have time to
    signal a run (DIMEREC_STEP_DELAY=seconds). Unset in real jobs, this does nothing."""
    if os.environ.get("DIMEREC_STEP_DELAY"):
        time.sleep(float(os.environ["DIMEREC_STEP_DELAY"]))
    if os.environ.get("DIMEREC_FAULT_STEP") is None or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    if step == int(os.environ["DIMEREC_FAULT_STEP"]) and rank == int(os.environ.get("DIMEREC_FAULT_RANK", "0")):
        os.kill(os.getpid(), signal.SIGKILL)


def final_metrics(model, shards, config, ctx, valid, test, popularity,
                  categories: np.ndarray | None = None) -> tuple[dict, SplitEvaluation]:
    """Valid and test metrics (and popularity's); the test pass's time per user (queries and
    full-catalog top-k, all ranks together); diversity where items have categories. Also the
    test evaluation itself (its top-k lists)."""
    # Laid out for scoring once for both splits (a column-wise table is re-laid, not twice).
    shards = scoring_shards(shards, model.module.num_items + 1, config.model.embedding_dim, ctx.device)
    valid_result = evaluate(model, shards, config, ctx, valid, popularity)
    started = time.time()
    test_result = evaluate(model, shards, config, ctx, test, popularity)
    seconds = time.time() - started
    final = {"valid": valid_result.metrics, "test": test_result.metrics,
             "popularity": {"valid": valid_result.popularity, "test": test_result.popularity},
             "latency": {"test_users": len(test), "ms_per_user": 1e3 * seconds / max(len(test), 1),
                         "ranks": ctx.world_size},
             "protocol": {"split": config.data.split, "ranking": "full catalog",
                          "exclude_seen": config.eval.exclude_seen, "query": config.query_mode(),
                          "sample_steps": config.model.sample_steps}}
    if categories is not None:
        final["diversity"] = {"test": diversity(test_result.topk, categories),
                              "popularity": diversity(test_result.popularity_topk, categories)}
    return final, test_result


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:,.1f} {unit}"
        num_bytes /= 1024
    return ""


def _fmt(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in scores.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dimerec-train", description="Train DimeRec with a TorchRec-sharded item table.")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML job file (default: the built-in defaults, a synthetic short-video log)")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. model.num_interests=8 train.epochs=3")
    args = parser.parse_args(argv)
    return run_command("dimerec-train", lambda: train(load_config(args.config, args.overrides), args.run_dir),
                       (ConfigError, DataError, CheckpointError, OutputError))


if __name__ == "__main__":
    sys.exit(main())
