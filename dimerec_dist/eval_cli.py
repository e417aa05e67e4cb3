"""dimerec-eval: evaluate a finished run's saved model over the full catalog.

    dimerec-eval --run-dir runs/quick                      # valid and test, seen items excluded
    dimerec-eval --run-dir runs/quick --include-seen       # the other protocol
    torchrun --nproc_per_node=2 -m dimerec_dist.eval_cli --run-dir runs/quick

Rebuilds the model from the run's config.yaml, loads run_dir/model (any world size can
load it: torch.distributed.checkpoint reshards), and ranks every item with the table
sharded. Writes run_dir/eval.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

from dimerec_dist.checkpoint import CheckpointError, check_compatible, load_model
from dimerec_dist.config import ConfigError, load_config
from dimerec_dist.data.samples import EvaluationUsers
from dimerec_dist.data.schema import DataError, Manifest, read_items, read_split
from dimerec_dist.data.source import dataset_path
from dimerec_dist.parallel import init_distributed, shutdown
from dimerec_dist.train import build_model, final_metrics, setup_logging

log = logging.getLogger("dimerec.eval")


def run(run_dir: Path, include_seen: bool, overrides: list[str]) -> dict:
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a dimerec-train run directory (no config.yaml)")
    config = load_config(config_file, overrides)
    if include_seen:
        config.eval = dataclasses.replace(config.eval, exclude_seen=False)
    manifest = Manifest.load(dataset_path(config.data, run_dir))
    check_compatible(run_dir / "model", manifest.num_items, config.model)  # before any process group or model
    ctx = init_distributed(config.train.device)
    setup_logging(ctx)
    model, shards = build_model(config, manifest.num_items, ctx, run_dir=None)
    load_model(model, run_dir / "model", manifest.num_items, config.model)
    model.eval()
    valid = EvaluationUsers(read_split(manifest, "valid"), config.model.max_history)
    test = EvaluationUsers(read_split(manifest, "test"), config.model.max_history)
    popularity = np.concatenate([[0], read_items(manifest).column("popularity").to_numpy()])
    result = final_metrics(model, shards, config, ctx, valid, test, popularity)
    if ctx.is_main:
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        for split in ("valid", "test"):
            log.info("%s %s", split, " ".join(f"{k}={v:.4f}" for k, v in result[split].items()))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dimerec-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--include-seen", action="store_true", help="rank items the user has already seen too")
    parser.add_argument("overrides", nargs="*", help="key=value for evaluation, e.g. model.sample_steps=10")
    args = parser.parse_args(argv)
    try:
        run(args.run_dir, args.include_seen, args.overrides)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"dimerec-eval: error: {exc}", file=sys.stderr)
        shutdown(wait_for_peers=False)
        return 2
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
