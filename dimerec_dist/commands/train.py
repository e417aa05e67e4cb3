"""dimerec-train: train DimeRec with the item table sharded by TorchRec.

Runs as a plain process (a one-rank group) or under torchrun (gloo on CPU, NCCL on GPU):

    dimerec-train --config configs/quickstart.yaml --run-dir runs/quick
    NPROC_PER_NODE=2 launch/single_node.sh --config configs/beauty.yaml --run-dir runs/beauty

The job is training/trainer.py's; this module reads the command line and hands it over
(nothing else imports it). Exit codes: 0 done, 2 a bad config, data set, checkpoint or
output place (one line on stderr), 143 stopped by a signal after its checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dimerec_dist.commands.config_reference import help_text
from dimerec_dist.config import ConfigError, config_to_dict, load_config
from dimerec_dist.runtime.log_level import add_log_level, apply_log_level


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dimerec-train",
        usage="dimerec-train --run-dir RUN_DIR [--config CONFIG] [key=value ...]\n"
        "       dimerec-train (--print-config | --dry-run) [--config CONFIG] [key=value ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train DimeRec with a TorchRec-sharded item table.",
        epilog="config keys (YAML section.key, or key=value on the command line):" + help_text(),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML job file (default: the built-in defaults, a synthetic short-video log)",
    )
    parser.add_argument("--run-dir", help="where the run's files go: a directory or a URI, s3://... (required)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML and exit")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build the job, plan the item table and print the plan and memory per rank, then exit (no data made)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. model.num_interests=8 train.epochs=3")
    add_log_level(parser)
    args = parser.parse_args(argv)
    apply_log_level(args)
    if args.print_config:
        return print_config(args.config, args.overrides)
    if args.dry_run:
        from dimerec_dist.commands.dry_run import USER_ERRORS, dry_run
        from dimerec_dist.runtime.command import run_command

        return run_command("dimerec-train", lambda: dry_run(args.config, args.overrides, args.run_dir), USER_ERRORS)
    if args.run_dir is None:
        parser.error("--run-dir is required to train")
    from dimerec_dist.training.trainer import train_command  # after parsing: --help needs no torch

    return train_command(args.config, args.overrides, args.run_dir)


def print_config(path: Path | None, overrides: list[str]) -> int:
    import yaml

    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        print(f"dimerec-train: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return 0


if __name__ == "__main__":
    from dimerec_dist.runtime.process_exit import exit_process

    exit_process(main())
