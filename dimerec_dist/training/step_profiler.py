"""train.profile_steps: a torch.profiler recording of a window of training steps, one trace per
rank (run_dir/profile/rank-R.steps-A-B.pt.trace.json), which Perfetto (ui.perfetto.dev) or
chrome://tracing opens: where a step's time goes, host and device, operator by operator."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("dimerec.profile")


class StepProfiler:
    def __init__(self, steps: list[int], out_dir: Path, rank: int, device: torch.device):
        self.first, self.last = steps if steps else (0, 0)
        self.out_dir, self.rank, self.device = out_dir, rank, device
        self._profile = None

    def before(self, step: int) -> None:
        """Step `step` (from 1) is about to run."""
        if self.first and step == self.first and self._profile is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profile = torch.profiler.profile(activities=activities, record_shapes=True)
            self._profile.start()

    def after(self, step: int) -> None:
        """Step `step` has run: the trace is written after the window's last step."""
        if self._profile is None or step < self.last:
            return
        self._profile.stop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank-{self.rank}.steps-{self.first}-{self.last}.pt.trace.json"
        self._profile.export_chrome_trace(str(path))
        self._profile = None
        log.info("steps %d..%d profiled: %s (open it in ui.perfetto.dev)", self.first, self.last, path)
