"""The training step, plain or pipelined, with nothing read back to the host.

    steps = build_step_runner(parts, config, ctx)      # train.pipeline picks the kind
    losses = steps.progress(batches, step)              # one optimizer step; raises StopIteration at the end

Plain: take the next batch, copy it to the device, forward, backward, optimizer step.
Pipelined: TorchRec's TrainPipelineSparseDist. While batch i trains, batch i+1's ids are
already on their way to the ranks that own their rows (the table's input all-to-all) and
batch i+2 is being copied to the device, on their own CUDA streams. On CPU TorchRec uses no
streams, so the two kinds run the same operations in another order and give the same
losses (tests/distributed/test_pipelined_step.py), which is how CI proves the GPU path.

Both return the step's losses as device tensors; the Trainer adds them up on the device
(LossWindow) and reads them, with the stop flags, every train.log_every steps in one
all-reduce, so a step never waits for the device to catch up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

from dimerec_dist.config import JobConfig
from dimerec_dist.data.batch import Batch
from dimerec_dist.distributed.private_api import pipelined_modules
from dimerec_dist.model import DimeRecLosses
from dimerec_dist.runtime.process_group import DistContext
from dimerec_dist.runtime.random_streams import seed_for
from dimerec_dist.training.builders import TrainingParts

LOSS_NAMES = tuple(f"loss/{name}" for name in DimeRecLosses.names())


class StepOptimizer:
    """Everything after backward, as the one optimizer TorchRec's pipeline steps: clip the dense
    gradients, step Adam, step a data-parallel table's optimizer, advance the schedule. A sharded
    table was already updated inside backward (its optimizer is fused)."""

    def __init__(self, parts: TrainingParts, grad_clip: float):
        self.parts, self.grad_clip = parts, grad_clip or float("inf")
        self.grad_norm: torch.Tensor | None = None  # the last step's, on the device

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.parts.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        parts = self.parts
        self.grad_norm = torch.nn.utils.clip_grad_norm_(parts.params, self.grad_clip)
        parts.optimizer.step()
        if parts.table_optimizer is not None:
            parts.table_optimizer.step()
            parts.table_optimizer.zero_grad(set_to_none=True)
        parts.schedule.step()


class StepRunner:
    """One optimizer step per `progress`, on the batches of an iterator; the plain kind."""

    def __init__(self, parts: TrainingParts, config: JobConfig, ctx: DistContext):
        self.model, self.ctx, self.seed = parts.model, ctx, config.seed
        self.optimizer = StepOptimizer(parts, config.train.grad_clip)
        self.autocast = precision_context(config.train.precision, ctx.device)
        if ctx.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls that remain
        self.step = 0  # the global step `progress` runs next (its dropout draws depend on it)
        self._last: DimeRecLosses | None = None

    def forward(self, batch: Batch) -> tuple[torch.Tensor, DimeRecLosses]:
        # Dropout's generator, from (seed, step, rank): a resumed run draws what it would have drawn.
        # Seeded here, on the training thread, where the forward runs (batches are made on another).
        torch.manual_seed(seed_for(self.seed, "dropout", self.step, self.ctx.rank))
        with self.autocast():
            losses = self.model(batch)
        self._last = losses
        return losses.total, losses

    def progress(self, batches: Iterator[Batch], step: int) -> DimeRecLosses:
        self.step = step
        batch = next(batches).to(self.ctx.device, non_blocking=True)
        self.optimizer.zero_grad()
        total, losses = self.forward(batch)
        total.backward()  # a sharded table's rows are updated here, by the fused optimizer
        self.optimizer.step()
        return losses

    def end(self) -> None:
        """The batches in flight are not wanted (an epoch ended or training stopped)."""


class PipelinedStepRunner(StepRunner):
    """The same step on TorchRec's TrainPipelineSparseDist."""

    def __init__(self, parts: TrainingParts, config: JobConfig, ctx: DistContext):
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        super().__init__(parts, config, ctx)
        self.pipeline = TrainPipelineSparseDist(
            self.model, self.optimizer, ctx.device, execute_all_batches=True, custom_model_fwd=self.forward
        )

    def progress(self, batches: Iterator[Batch], step: int) -> DimeRecLosses:
        self.step = step
        self.pipeline.progress(batches)
        if not pipelined_modules(self.pipeline):
            # TorchRec found no table input it can run ahead and fell back to a plain step.
            raise RuntimeError("the train pipeline did not take over the table's input; see ShardedDimeRec.forward")
        return self._last

    def end(self) -> None:
        # Give the model its own forwards back (evaluation calls the table directly) and drop
        # the batches read ahead; the next progress rewrites the model again.
        self.pipeline.reset()
        self.pipeline.detach()


def build_step_runner(parts: TrainingParts, config: JobConfig, ctx: DistContext) -> StepRunner:
    return (PipelinedStepRunner if config.train.pipeline else StepRunner)(parts, config, ctx)


def precision_context(precision: str, device: torch.device):
    """bf16: GEM, DAM and the logits under autocast (the losses themselves are summed in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class LossWindow:
    """The losses of the steps since the last read, summed on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64, device=self.device)
        self.steps = 0

    def add(self, losses: DimeRecLosses) -> None:
        parts = torch.stack([losses.total, losses.gem, losses.recon, losses.ssm]).detach()
        self.sums += parts.to(torch.float64)
        self.steps += 1

    def read(self, stop_requested: bool, out_of_time: bool) -> tuple[dict[str, float], bool, bool]:
        """The window's mean losses over steps and ranks (every rank holds as many samples), and
        whether any rank was asked to stop or ran out of time: one all-reduce, one read."""
        flags = torch.tensor([float(stop_requested), float(out_of_time)], dtype=torch.float64, device=self.device)
        values = torch.cat([self.sums, flags])
        dist.all_reduce(values)
        values = values.tolist()
        count = max(1, self.steps) * dist.get_world_size()
        means = dict(zip(LOSS_NAMES, (value / count for value in values[: len(LOSS_NAMES)])))
        return means, values[-2] > 0, values[-1] > 0
