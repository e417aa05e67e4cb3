"""dimerec-eval: evaluate a finished run's saved model over the full catalog.

    dimerec-eval --run-dir runs/quick                      # valid and test, seen items excluded
    dimerec-eval --run-dir runs/quick --include-seen       # the other protocol
    torchrun --nproc_per_node=2 -m dimerec_dist.eval_cli --run-dir runs/quick

Rebuilds the model from the run's config.yaml, loads run_dir/model (any world size can
load it: torch.distributed.checkpoint reshards), and ranks every item with the table
sharded. Writes run_dir/eval.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dimerec_dist.builders import build_model, check_protocol
from dimerec_dist.checkpoint import CheckpointError, check_compatible, load_model
from dimerec_dist.command import run_command
from dimerec_dist.config import ConfigError, JobConfig, load_config
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import DataError, Manifest, read_items, read_split
from dimerec_dist.data.source import cached_dataset, dataset_path
from dimerec_dist.distributed.process_group import DistContext, init_distributed
from dimerec_dist.diversity import item_categories
from dimerec_dist.log_level import add_log_level, apply_log_level
from dimerec_dist.metrics import setup_logging
from dimerec_dist.output_dir import OutputError, on_every_rank, write_whole
from dimerec_dist.run_dir import RunDir
from dimerec_dist.run_metrics import final_metrics
from dimerec_dist.storage import StorageError, is_remote

log = logging.getLogger("dimerec.eval")


@dataclass
class LoadedRun:
    config: JobConfig
    manifest: Manifest
    ctx: DistContext
    model: object
    shards: list

    def users(self, split: str) -> EvaluationUsers:
        return EvaluationUsers(read_split(self.manifest, split), self.config.model.max_history)

    def popularity(self) -> np.ndarray:
        return np.concatenate([[0], read_items(self.manifest).column("popularity").to_numpy()])


def load_run(run_dir: str | Path | RunDir, overrides: list[str]) -> LoadedRun:
    """A finished run's model, rebuilt from its config.yaml and loaded, table sharded over this job's ranks.
    The run may be on a store: its config.yaml is fetched, its model read from there."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.at(run_dir)
    config_file = run.fetch("config.yaml")
    if not config_file.is_file():
        raise ConfigError(f"{run} is not a dimerec-train run directory (no config.yaml)")
    config = load_config(config_file, overrides)
    remote = is_remote(config.data.path)
    manifest = Manifest.load(cached_dataset(config.data) if remote else dataset_path(config.data, run.local))
    check_protocol(config, manifest)
    check_compatible(run.place("model"), manifest.num_items, config.model)  # before any process group or model
    ctx = init_distributed(config.train.device)
    setup_logging(ctx)
    model, shards = build_model(config, manifest.num_items, ctx, run_dir=None)
    load_model(model, run.place("model"), manifest.num_items, config.model)
    model.eval()
    return LoadedRun(config, manifest, ctx, model, shards)


def run(
    run_dir: str | Path, include_seen: bool, overrides: list[str], topk_out: Path | None = None, out: Path | None = None
) -> dict:
    run_directory = RunDir.at(run_dir)
    loaded = load_run(run_directory, overrides + (["eval.exclude_seen=false"] if include_seen else []))
    test = loaded.users("test")
    result, ranked = final_metrics(
        loaded.model,
        loaded.shards,
        loaded.config,
        loaded.ctx,
        loaded.users("valid"),
        test,
        loaded.popularity(),
        item_categories(loaded.manifest),
    )

    def write() -> None:  # the main rank; a full disk leaves the files as they were, on every rank one line
        if topk_out is not None:  # the ranked lists themselves, e.g. to compare a server's answers with
            write_whole(Path(topk_out), lambda handle: np.savez(handle, users=test.users, topk=ranked.topk))
        text = json.dumps(result, indent=2) + "\n"
        write_whole(out or run_directory.local / "eval.json", lambda handle: handle.write(text.encode()))
        if out is None:
            run_directory.upload("eval.json")
        for split in ("valid", "test"):
            log.info("%s %s", split, " ".join(f"{k}={v:.4f}" for k, v in result[split].items()))

    on_every_rank(loaded.ctx, write, main_only=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dimerec-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="the run's directory, or its URI (s3://...)")
    parser.add_argument("--include-seen", action="store_true", help="rank items the user has already seen too")
    parser.add_argument("--out", type=Path, default=None, help="where the metrics go (default: RUN_DIR/eval.json)")
    parser.add_argument(
        "--topk-out", type=Path, default=None, help="also write the test users' ranked item ids (dense) to this .npz"
    )
    parser.add_argument("overrides", nargs="*", help="key=value for evaluation, e.g. model.sample_steps=10")
    add_log_level(parser)
    args = parser.parse_args(argv)
    apply_log_level(args)
    return run_command(
        "dimerec-eval",
        lambda: run(args.run_dir, args.include_seen, args.overrides, args.topk_out, args.out),
        (ConfigError, DataError, CheckpointError, OutputError, StorageError),
    )


if __name__ == "__main__":
    from dimerec_dist.process_exit import exit_process

    exit_process(main())
