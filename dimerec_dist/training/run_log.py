"""What a run shows: TensorBoard events (run_dir/tb), the same scalars as JSON lines
(run_dir/metrics.jsonl), and a progress line with rate and ETA. Rank 0 writes; other
ranks hold a logger that does nothing, so call sites need no rank checks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path

from dimerec_dist.runtime.log_level import our_level

log = logging.getLogger("dimerec.train")


def setup_logging(ctx) -> None:
    """Our lines on rank 0 at --log-level (INFO), other ranks' warnings; libraries (TorchRec,
    FBGEMM) only at WARNING. `ctx`: the job's runtime.process_group.DistContext."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {ctx.rank}] %(name)s %(message)s", force=True)
    logging.getLogger("dimerec").setLevel(our_level(ctx.is_main))


class MetricsLogger:
    """A full disk under the run directory does not stop rank 0 alone (its peers would wait in the
    next collective and fail with a traceback): the first write that fails is kept in `failure`,
    later ones are skipped, and the trainer stops every rank with it at its next checkpoint."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.run_dir = run_dir
        self.failure: OSError | None = None
        self._writer = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir / "tb"))
            self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
            threading.excepthook = _disk_errors_in_one_line(threading.excepthook)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled or self.failure:
            return
        try:
            self._jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        except OSError as exc:
            return self._failed(exc, self.run_dir / "metrics.jsonl")
        try:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
        except OSError as exc:  # the writer thread's error, raised at the next event
            self._failed(exc, self.run_dir / "tb")

    def flush(self) -> None:
        """Everything logged so far on disk (before the run directory is uploaded)."""
        if self.enabled and not self.failure:
            for flush, path in ((self._writer.flush, "tb"), (self._jsonl.flush, "metrics.jsonl")):
                try:
                    flush()
                except OSError as exc:
                    return self._failed(exc, self.run_dir / path)

    def raise_failure(self) -> None:
        """The first write that failed, raised (nothing if none did)."""
        if self.failure is not None:
            raise self.failure

    def _failed(self, exc: OSError, path: Path) -> None:
        self.failure = OSError(exc.errno, exc.strerror or str(exc), str(path))
        log.warning("%s: %s; the job stops at its next checkpoint", path, self.failure.strerror)

    def close(self) -> None:
        if self.enabled:
            with contextlib.suppress(OSError):  # what failed is in `failure`, raised by the trainer
                self._writer.close()
            with contextlib.suppress(OSError):
                self._jsonl.close()


def _disk_errors_in_one_line(previous):
    """TensorBoard writes events from a thread of its own: a full disk there is a warning line (the
    job's next write to the run directory stops it with the error), not a thread's traceback."""

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError):
            log.warning("%s could not write: %s", args.thread.name if args.thread else "a thread", args.exc_value)
        else:
            previous(args)

    return hook


class Progress:
    """Rate over the last interval and ETA to the final step."""

    def __init__(self, total_steps: int, samples_per_step: int, start_step: int = 0):
        self.total_steps = total_steps
        self.samples_per_step = samples_per_step
        self._last_time = time.time()
        self._last_step = start_step

    def seconds_since_rate(self) -> float:
        """Wall seconds since the previous call of rate(): the interval it is about to measure."""
        return time.time() - self._last_time

    def rate(self, step: int) -> float:
        """Samples per second since the previous call."""
        now = time.time()
        steps = max(step - self._last_step, 1)
        rate = steps * self.samples_per_step / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        return rate

    def line(self, step: int, epoch: int, rate: float, losses: dict[str, float]) -> str:
        remaining = (self.total_steps - step) * self.samples_per_step / max(rate, 1e-9)
        parts = " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in losses.items())
        return (
            f"step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.0f}%) epoch {epoch} "
            f"{parts} | {rate:,.0f} samples/s | ETA {_clock(remaining)}"
        )


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
