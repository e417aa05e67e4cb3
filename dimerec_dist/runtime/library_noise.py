"""Silencing a library's warning we have read and cannot act on, one message at a time.

A normal run's output is ours: each warning torch or TorchRec prints on every run is
either fixed at its cause or dropped here, by its exact opening words, at the call that
raises it, with the reason beside the call. Nothing else is ever silenced.
"""

from __future__ import annotations

import logging
import re
import warnings


def drop_warning(message_start: str, category: type[Warning] = FutureWarning) -> None:
    """Ignore the Python warning whose text starts with `message_start` (anywhere it is raised)."""
    warnings.filterwarnings("ignore", message=_escaped(message_start), category=category)


def drop_log_message(logger_name: str, message_start: str) -> None:
    """Drop the records of `logger_name` whose message starts with `message_start`."""
    logging.getLogger(logger_name).addFilter(_StartsWith(message_start))


class _StartsWith(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def _escaped(text: str) -> str:
    return re.escape(text)
