"""The Trainer: one object that owns a training job, and the one step every caller runs.

    trainer = Trainer(config, run_dir)   # data, sharded model, optimizers, checkpoints, resume
    trainer.train()                       # epochs of steps (training/step.py), validation, checkpoints, final metrics

One step, top to bottom: the plan gives this rank its slice of the global batch, made on a
background thread (`step_batches`, data/prefetch.py); its ids go through the sharded table
(history, target, shared negatives); DimeRec returns L_gem + lambda L_recon + mu L_ssm;
backward updates the table in place (fused optimizer) and the dense Adam steps GEM and
DAM (training/step.py: plain, or on TorchRec's train pipeline). Nothing is read back from
the device until every train.log_every steps, where the losses, the non-finite check and
the stop requests are settled in one all-reduce. Benchmarks time this very step.

What training needs to continue exactly after a stop is `state_dict()` (where training
stands) plus the model and optimizers, all written by training/checkpoint.py; every random draw
derives from (seed, epoch, step[, rank]), so no RNG state is saved.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from dimerec_dist.config import ConfigError, JobConfig, config_to_dict, load_config
from dimerec_dist.data.batch import Batch
from dimerec_dist.data.job_data import JobData
from dimerec_dist.data.prefetch import Prefetcher
from dimerec_dist.data.schema import DataError, Manifest
from dimerec_dist.data.source import ensure_dataset
from dimerec_dist.data.stream import TrainStream
from dimerec_dist.evaluation.scores import evaluate_users, final_metrics, format_scores, selection_key
from dimerec_dist.runtime.command import run_command
from dimerec_dist.runtime.memory_usage import memory_scalars
from dimerec_dist.runtime.output_dir import OutputError, on_every_rank
from dimerec_dist.runtime.process_group import DistContext, init_distributed
from dimerec_dist.runtime.storage import Location, StorageError
from dimerec_dist.training.builders import TrainingParts, build_training
from dimerec_dist.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    TrainingState,
    dataset_record,
    load_model,
    save_model,
)
from dimerec_dist.training.resume import checked_resume, open_run_directory
from dimerec_dist.training.run_log import MetricsLogger, Progress, setup_logging
from dimerec_dist.training.step import LossWindow, StepRunner, build_step_runner
from dimerec_dist.training.step_profiler import StepProfiler

log = logging.getLogger("dimerec.train")
StepHook = Callable[["Trainer"], None]


@dataclass
class StepResult:
    """What the host learns at a read of the device (every train.log_every steps)."""

    losses: dict[str, float]  # global means over the steps since the last read: loss/total, loss/gem, ...
    grad_norm: float  # the last step's
    stop_requested: bool  # some rank was signalled: every rank learns it here, at the same step
    out_of_time: bool = False  # some rank's clock passed train.max_minutes: all stop at this step


class Trainer:
    def __init__(self, config: JobConfig, run_dir: str | Path, ctx: DistContext | None = None):
        self.config = config
        self.ctx = ctx or init_distributed(config.train.device)
        setup_logging(self.ctx)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.run = open_run_directory(run_dir, config, self.ctx)
        try:
            self._build(config, self.run.local)
        except BaseException:
            self.run.release()  # a job refused at start leaves the run directory to the next one at once
            raise

    def _build(self, config: JobConfig, run_dir: Path) -> None:
        self.run_dir = run_dir  # the run's small files; checkpoints and model: self.run.place
        self.before_step: list[StepHook] = []  # called at the top of every step (tests inject faults here)
        self.state = TrainingState()
        self.checkpoints = CheckpointManager(
            self.run.place("checkpoints"), config.train.keep_checkpoints, asynchronous=config.train.checkpoint_async
        )
        # Checked against this job (settings, table optimizer layout) before its config.yaml replaces the
        # saved one, so a refused resume leaves the run as it was.
        self.resume_from = checked_resume(config, self.ctx, self.checkpoints, run_dir)
        if self.ctx.is_main:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        self.run.sync()  # a store that cannot be written is found now, not at the first checkpoint
        self._build_data()
        self.parts: TrainingParts = build_training(config, self.manifest.num_items, self.ctx, run_dir)
        self.steps: StepRunner = build_step_runner(self.parts, config, self.ctx)
        self.metrics = MetricsLogger(run_dir, self.ctx.is_main)
        if self.stream.steps(0) == 0:
            raise DataError(
                f"{self.manifest.root}: {self.manifest.data['counts']['train_samples']} training "
                f"samples, fewer than one batch of {config.train.batch_size} per stream"
            )
        self.epoch_steps = plan_epochs(self.stream, config.train.epochs, config.train.max_steps)
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)

    # ------------------------------------------------------------------ building

    def _build_data(self) -> None:
        """Every rank reads the same prepared dataset; the plan decides who reads what."""
        manifest = Manifest.load(ensure_dataset(self.config.data, self.run_dir, self.ctx.is_main))
        self.data = JobData.for_training(self.config, manifest, self.ctx)

    @property
    def manifest(self) -> Manifest:
        return self.data.manifest

    @property
    def stream(self) -> TrainStream:
        return self.data.stream

    # ------------------------------------------------------------------ the step

    def step_batches(self, epoch: int, start_step: int) -> Prefetcher[Batch]:
        """This rank's batches of the epoch's planned steps from `start_step` on, each with its
        negatives, logQ corrections and diffusion noise (data/batch_maker.py), made on a
        background thread."""
        make = self.data.batch_maker

        def batches():
            for epoch_step, history, targets in self.stream.batches(epoch, start_step=start_step):
                if epoch_step >= self.epoch_steps[epoch]:
                    return
                yield make(epoch, epoch_step, history, targets)

        return Prefetcher(batches(), depth=2, name=f"epoch-{epoch}")

    def read_device(self, window: LossWindow, stop_requested: bool, out_of_time: bool) -> StepResult:
        """The losses since the last read, the last gradient norm, and every rank's stop flags."""
        losses, stop, out_of_time = window.read(stop_requested, out_of_time)
        grad_norm = self.steps.optimizer.grad_norm
        return StepResult(losses, float("nan") if grad_norm is None else float(grad_norm), stop, out_of_time)

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        """Every planned step, validation at epoch ends (keeping the best model), checkpoints; then
        the final metrics of the best model. {"preempted": True, ...} if stopped by a signal."""
        config, state = self.config, self.state
        total_steps = sum(self.epoch_steps)
        log.info(
            "%d training samples, ~%d steps/epoch, %d steps over %d epochs, global batch %d (%d per rank), "
            "%d ranks, %d streams, %s reader",
            self.manifest.data["counts"]["train_samples"],
            self.stream.steps(0),  # the plan's, whatever train.max_steps cuts from it
            total_steps,
            len(self.epoch_steps),
            config.train.batch_size,
            config.train.batch_size // self.ctx.world_size,
            self.ctx.world_size,
            self.stream.plan.streams,
            config.data.backend,
        )
        dropped = self.stream.plan.dropped_share(0)
        if dropped > DROPPED_SHARE_WARNING:
            log.warning(
                "the data plan reads only %.0f%% of each epoch's %d samples: the shortest of its %d streams sets "
                "the steps and the others' tails are dropped; fewer data.streams or a smaller train.batch_size "
                "drop less",
                100 * (1 - dropped),
                self.manifest.data["counts"]["train_samples"],
                self.stream.plan.streams,
            )
        progress = Progress(total_steps, config.train.batch_size, start_step=state.step)
        stop = StopRequest()
        budget = config.train.max_minutes * 60
        started = time.monotonic() - state.train_seconds  # the budget counts what earlier runs spent
        out_of_time = bool(budget) and state.train_seconds >= budget  # a finished budget: straight to the end
        self.parts.model.train()
        window = LossWindow(self.ctx.device)
        profiler = StepProfiler(config.train.profile_steps, self.run_dir / "profile", self.ctx.rank, self.ctx.device)
        for epoch in range(state.epoch, len(self.epoch_steps)):
            if out_of_time or self._patience_spent():
                break
            first = state.epoch_step if epoch == state.epoch else 0
            with self.step_batches(epoch, first) as batches:
                for epoch_step in range(first, self.epoch_steps[epoch]):
                    for hook in self.before_step:
                        hook(self)
                    profiler.before(state.step + 1)
                    window.add(self.steps.progress(batches, state.step))
                    state.train_seconds = time.monotonic() - started
                    state.step, state.epoch, state.epoch_step = state.step + 1, epoch, epoch_step + 1
                    profiler.after(state.step)
                    logged = state.step % config.train.log_every == 0 or state.step == total_steps
                    if not logged and epoch_step + 1 < self.epoch_steps[epoch]:
                        continue  # the device runs on: the host reads it at log steps and epoch ends
                    result = self.read_device(
                        window, stop.requested, out_of_time=bool(budget) and state.train_seconds > budget
                    )
                    if not all(math.isfinite(v) for v in result.losses.values()):
                        first_step = state.step - window.steps + 1
                        raise FloatingPointError(
                            f"non-finite loss in steps {first_step}..{state.step}: {result.losses}"
                        )
                    if logged:
                        self._log_step(progress, epoch, result, batches.take_waited(), window.steps)
                        window.reset()
                        self._sync_run_dir()
                    if result.stop_requested:
                        self.steps.end()
                        self.save_checkpoint()
                        self.checkpoints.wait()
                        log.warning(
                            "stopped by a signal at step %d; the checkpoint is saved, resume=auto continues",
                            state.step,
                        )
                        self.metrics.close()
                        self.run.sync()
                        return {"preempted": True, "step": state.step}
                    if result.out_of_time:
                        out_of_time = True
                        log.info(
                            "train.max_minutes=%g spent at step %d (epoch %d, step %d of %d): validating and finishing",
                            config.train.max_minutes,
                            state.step,
                            epoch,
                            state.epoch_step,
                            self.epoch_steps[epoch],
                        )
                        break
                    if config.train.checkpoint_every and state.step % config.train.checkpoint_every == 0:
                        self.save_checkpoint()
                        self._sync_run_dir(force=True)  # the metrics up to the checkpoint: what a resume goes on from
            self.steps.end()
            if not out_of_time:
                state.epoch, state.epoch_step = epoch + 1, 0
            last_epoch = epoch == len(self.epoch_steps) - 1 or out_of_time
            if config.train.eval_every_epochs and ((epoch + 1) % config.train.eval_every_epochs == 0 or last_epoch):
                self.validate(epoch)
            state.train_seconds = time.monotonic() - started
            if out_of_time:  # all ranks agreed the budget is spent, whichever clock passed it: so says the checkpoint
                state.train_seconds = max(state.train_seconds, budget)
            self.save_checkpoint()  # every epoch end (and every checkpoint_every steps): what resume=auto picks up
            self._sync_run_dir(force=True)
            if self._patience_spent():
                log.info(
                    "early stop after epoch %d: %d validations without a better %s (train.patience=%d)",
                    epoch,
                    state.stale_validations,
                    selection_key(config),
                    config.train.patience,
                )
        self.checkpoints.wait()
        return self._finish()

    def _sync_run_dir(self, force: bool = False) -> None:
        """A run directory on a store gets the run's small files (TensorBoard's buffered events first)."""
        if self.run.due(force):
            self.metrics.flush()
            self.run.sync()

    def _patience_spent(self) -> bool:
        patience = self.config.train.patience
        return bool(patience) and self.state.stale_validations >= patience

    def _log_step(self, progress: Progress, epoch: int, result: StepResult, data_wait_s: float, steps: int) -> None:
        """The window's losses, rates, the time the step waited for its batches (rank 0's: the
        batch producer falling behind shows here first) and this rank's memory."""
        step, config = self.state.step, self.config
        interval = progress.seconds_since_rate()
        rate = progress.rate(step)
        self.metrics.scalars(
            step,
            {
                **result.losses,
                "lr/dense": self.parts.schedule.get_last_lr()[0],
                "lr/sparse": config.train.sparse_lr,
                "grad_norm/dense": result.grad_norm,
                "throughput/samples_per_s": rate,
                "time/data_wait_ms_per_step": 1e3 * data_wait_s / max(steps, 1),
                "time/data_wait_share": data_wait_s / max(interval, 1e-9),
                **memory_scalars(self.ctx.device),
                "epoch": epoch,
            },
        )
        log.info(progress.line(step, epoch, rate, result.losses))

    def validate(self, epoch: int) -> dict[str, float]:
        """Full-catalog metrics on the validation users; the best model so far is kept in run_dir/model."""
        model = self.parts.model
        model.eval()
        scores = evaluate_users(model, self.parts.shards, self.config, self.ctx, self.data.valid).metrics
        model.train()
        self.metrics.scalars(self.state.step, {f"valid/{k}": v for k, v in scores.items()})
        log.info("epoch %d valid %s", epoch, format_scores(scores))
        key = selection_key(self.config)
        self.state.stale_validations += 1
        if scores[key] > self.state.best_score:
            self.state.best_score, self.state.stale_validations = scores[key], 0
            save_model(
                model,
                self.run.place("model"),
                self.manifest.num_items,
                self.config.model,
                {"step": self.state.step, "epoch": epoch},
            )
        return scores

    def _finish(self) -> dict:
        """Evaluate the best epoch's model on valid and test; final.json."""
        config, model, best = self.config, self.parts.model, self.run.place("model")
        if not config.train.eval_every_epochs:
            save_model(model, best, self.manifest.num_items, config.model, {"step": self.state.step})
        load_model(model, best, self.manifest.num_items, config.model)  # the best epoch on validation
        model.eval()
        if not config.eval.at_end:
            self.metrics.close()
            self.run.sync()
            return {}
        final, _ = final_metrics(
            model,
            self.parts.shards,
            config,
            self.ctx,
            self.data.valid,
            self.data.test,
            self.data.popularity,
            self.data.categories,
        )
        self.metrics.scalars(
            self.state.step, {f"final/{split}/{k}": v for split in ("valid", "test") for k, v in final[split].items()}
        )
        self.metrics.close()
        if self.ctx.is_main:
            (self.run_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
            log.info(
                "final test %s | popularity %s",
                format_scores(final["test"]),
                format_scores(final["popularity"]["test"]),
            )
        self.run.sync()  # metrics closed, final.json written: the run's last files
        return final

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Where training stands: with the model and optimizers, enough to continue as if never stopped."""
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = TrainingState(**state)

    def save_checkpoint(self) -> None:
        """The whole training state at this step (once per step, whatever asks for it)."""
        step, checkpoints, parts = self.state.step, self.checkpoints, self.parts
        if checkpoints.last_saved_step == step or checkpoints.latest() == checkpoints.path_for(step):
            return
        self._stop_if_metrics_failed()
        replicated = {
            "optimizer": parts.optimizer.state_dict(),
            "schedule": parts.schedule.state_dict(),
            "table_optimizer": None if parts.table_optimizer is None else parts.table_optimizer.state_dict(),
        }
        checkpoints.save(
            parts.model,
            replicated,
            self.state,
            self.manifest.num_items,
            config_to_dict(self.config),
            dataset_record(self.manifest.root, self.manifest.identity),
        )

    def _stop_if_metrics_failed(self) -> None:
        """Rank 0's metrics could not be written (a full disk): every rank stops here, before a
        checkpoint past the steps whose rows are missing, so a relaunch logs them again."""
        try:
            on_every_rank(self.ctx, self.metrics.raise_failure, main_only=True)
        except OutputError as failed:
            newest = self.checkpoints.latest()
            kept = f"the newest checkpoint, {newest.name}, is intact" if newest else "no checkpoint was written yet"
            raise OutputError(f"{failed}; {kept}; free space and launch again") from None

    def load_checkpoint(self, path: Location) -> None:
        """Continue from `path`, which resume_path verified when it chose it."""
        parts = self.parts
        state, replicated = CheckpointManager.load(
            path, parts.model, self.manifest.num_items, self.config.model, verify=False
        )
        parts.optimizer.load_state_dict(replicated["optimizer"])
        parts.schedule.load_state_dict(replicated["schedule"])
        if parts.table_optimizer is not None:
            parts.table_optimizer.load_state_dict(replicated["table_optimizer"])
        self.load_state_dict(asdict(state))
        log.info(
            "resumed from %s: step %d, epoch %d (%d steps into it)", path, state.step, state.epoch, state.epoch_step
        )


# One line on stderr, exit code 2: the job's settings, data, checkpoint, output place or object store.
USER_ERRORS = (ConfigError, DataError, CheckpointError, OutputError, StorageError)


DROPPED_SHARE_WARNING = 0.05  # a plan that drops more of an epoch's samples than this is logged as a warning


def train_command(
    config_path: Path | None, overrides: Sequence[str], run_dir: str | Path, before_step: Sequence[StepHook] = ()
) -> int:
    """dimerec-train's job as an exit code: 0 done, 2 a user error, 143 stopped by a signal.
    `before_step`: hooks called at the top of every step (tools/faulty_train.py's faults)."""

    def job() -> dict:
        trainer = Trainer(load_config(config_path, overrides), run_dir)
        trainer.before_step.extend(before_step)
        try:
            return trainer.train()
        finally:
            trainer.run.release()

    return run_command("dimerec-train", job, USER_ERRORS)


# --------------------------------------------------------------------------- pieces of the loop


def plan_epochs(stream: TrainStream, epochs: int, max_steps: int) -> list[int]:
    """Steps to run in each epoch: `epochs` whole epochs, or as many as `max_steps` needs.
    Epochs can differ by a few steps (the shortest stream of each epoch's plan decides)."""
    steps: list[int] = []
    while (sum(steps) < max_steps) if max_steps else (len(steps) < epochs):
        steps.append(stream.steps(len(steps)))
    if max_steps:
        steps[-1] -= sum(steps) - max_steps
    return steps


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
