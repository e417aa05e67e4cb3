"""--log-level on every command, with one meaning: the level of dimerec's own log lines (on
rank 0 of a distributed job; the other ranks say warnings and errors only). Libraries stay
at WARNING. The level travels in the environment (DIMEREC_LOG_LEVEL), so every rank of a
job and every process a command starts reads the same one, and a scheduler can set it."""

from __future__ import annotations

import argparse
import logging
import os

ENV = "DIMEREC_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=None,
        help=f"dimerec's log lines at this level and above (default INFO, or ${ENV})",
    )


def apply_log_level(args: argparse.Namespace) -> None:
    """The command line's --log-level, for this process and those it starts."""
    if getattr(args, "log_level", None):
        os.environ[ENV] = args.log_level


def our_level(is_main: bool = True) -> int:
    """The level of dimerec's loggers in this process."""
    name = os.environ.get(ENV, "INFO").upper()
    level = getattr(logging, name, None) if name in LEVELS else None
    if level is None:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: not one of {', '.join(LEVELS)}")
    return level if is_main else max(level, logging.WARNING)


def setup_command_logging() -> None:
    """A one-process command's logging: libraries at WARNING, dimerec's lines at our level."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("dimerec").setLevel(our_level())
