"""Every config key with its type, default and meaning, read from config.py's dataclasses.

The meaning of a key is the string written under its field in config.py (an attribute
docstring), so the reference cannot drift from the code: `dimerec-train --help` prints
it, and docs/CONFIG.md is this module's output (a test fails when it is stale):

    python -m dimerec_dist.commands.config_reference > docs/CONFIG.md
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from dimerec_dist.config import JobConfig


@dataclass
class Key:
    name: str  # dotted: model.embedding_dim
    kind: str  # int, float, bool, str, list[int]
    default: Any
    meaning: str


def field_docs(cls: type) -> dict[str, str]:
    """{field: the string literal right below it in the class body}."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for statement, following in zip(body, body[1:]):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def keys(config: Any = None, prefix: str = "") -> list[Key]:
    """Every leaf key of the job config, in definition order, with today's defaults."""
    config = JobConfig() if config is None else config
    hints, docs = typing.get_type_hints(type(config)), field_docs(type(config))
    found = []
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            found += keys(value, f"{prefix}{spec.name}.")
            continue
        kind = hints[spec.name]
        name = getattr(kind, "__name__", None) if typing.get_origin(kind) is None else str(kind)
        if spec.name not in docs:
            raise ValueError(f"config.py: {type(config).__name__}.{spec.name} has no docstring")
        found.append(Key(f"{prefix}{spec.name}", name, value, docs[spec.name]))
    return found


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if value == "" else str(value)


def help_text(width: int = 100) -> str:
    """The keys as dimerec-train --help lists them: one paragraph each, grouped by section."""
    lines, section = [], None
    for key in keys():
        head = key.name.split(".")[0] if "." in key.name else "(top level)"
        if head != section:
            section = head
            lines.append(f"\n{section}:")
        lines.append(f"  {key.name}={_shown(key.default)}  ({key.kind})")
        lines += textwrap.wrap(key.meaning, width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def markdown() -> str:
    rows = [
        "# Configuration reference",
        "",
        "Every key of a dimerec-train job: set it in the YAML file (`section:` then `key: value`) or on",
        "the command line (`section.key=value`). Generated from `dimerec_dist/config.py` by",
        "`python -m dimerec_dist.commands.config_reference > docs/CONFIG.md`; `dimerec-train --help` prints the",
        "same, and `dimerec-train --print-config ...` the resolved configuration of a job.",
    ]
    section = None
    for key in keys():
        head = key.name.split(".")[0] if "." in key.name else "top level"
        if head != section:
            section = head
            rows += ["", f"## {section}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        meaning = key.meaning.replace("|", "\\|")
        rows.append(f"| `{key.name}` | {key.kind} | `{_shown(key.default)}` | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
