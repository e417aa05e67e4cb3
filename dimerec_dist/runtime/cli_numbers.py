"""Numeric command-line options, range-checked when they are parsed.

A plain `type=int` takes `--buckets -1` or `--users 0` and the command runs on, to publish
an empty dataset or divide by zero far from the option that caused it. Every numeric option
of every command takes one of these instead (a structure test holds the package to it), so
a value out of range is argparse's one-line usage error, exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An int in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"at least {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bound}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message
    return parse


def real(minimum: float, maximum: float | None = None, above: bool = False) -> Callable[[str], float]:
    """A finite float in [minimum, maximum]; `above`: strictly greater than `minimum`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low_ok = value > minimum if above else value >= minimum
        if not math.isfinite(value) or not low_ok or (maximum is not None and value > maximum):
            low = f"> {minimum:g}" if above else f">= {minimum:g}"
            bound = low if maximum is None else f"{low} and <= {maximum:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be finite and {bound}")
        return value

    parse.__name__ = "number"
    return parse
