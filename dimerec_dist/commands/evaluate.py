"""dimerec-eval: evaluate a finished run's saved model over the full catalog.

    dimerec-eval --run-dir runs/quick                      # valid and test, seen items excluded
    dimerec-eval --run-dir runs/quick --include-seen       # the other protocol
    dimerec-torchrun --standalone --nproc_per_node=2 -m dimerec_dist.commands.evaluate --run-dir runs/quick

Rebuilds the model from the run's config.yaml, loads run_dir/model (any world size can
load it: torch.distributed.checkpoint reshards), and ranks every item with the table
sharded. Writes run_dir/eval.json (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import numpy as np

from dimerec_dist.config import ConfigError
from dimerec_dist.data.schema import DataError
from dimerec_dist.evaluation.scores import final_metrics
from dimerec_dist.runtime.command import run_command
from dimerec_dist.runtime.log_level import add_log_level, apply_log_level
from dimerec_dist.runtime.output_dir import OutputError, on_every_rank, write_output
from dimerec_dist.runtime.run_dir import RunDir
from dimerec_dist.runtime.storage import StorageError
from dimerec_dist.training.checkpoint import CheckpointError
from dimerec_dist.training.saved_run import load_saved_run

log = logging.getLogger("dimerec.eval")


def run(
    run_dir: str | Path,
    include_seen: bool,
    overrides: list[str],
    topk_out: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """`out`, `topk_out`: paths or URIs (s3://...); eval.json goes to the run directory by default."""
    run_directory = RunDir.at(run_dir)
    loaded = load_saved_run(run_directory, overrides + (["eval.exclude_seen=false"] if include_seen else []))
    data, test = loaded.data, loaded.data.test
    result, ranked = final_metrics(
        loaded.model, loaded.shards, loaded.config, loaded.ctx, data.valid, test, data.popularity, data.categories
    )

    def write() -> None:  # the main rank; a full disk leaves the files as they were, on every rank one line
        if topk_out is not None:  # the ranked lists themselves, e.g. to compare a server's answers with
            lists = io.BytesIO()
            np.savez(lists, users=test.users, topk=ranked.topk)
            write_output(topk_out, lists.getvalue())
        text = (json.dumps(result, indent=2) + "\n").encode()
        write_output(out or run_directory.local / "eval.json", text)
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
    parser.add_argument(
        "--out", default=None, help="where the metrics go: a path, or s3://, gs://, ... (default: RUN_DIR/eval.json)"
    )
    parser.add_argument(
        "--topk-out", default=None, help="also write the test users' ranked item ids (dense) to this .npz (path or URI)"
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
    from dimerec_dist.runtime.process_exit import exit_process

    exit_process(main())
