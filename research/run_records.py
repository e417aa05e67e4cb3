"""The record of a finished experiment run: the small files its results table and plots are made
from, kept apart from its model and checkpoints so they can be committed beside the report.

A run directory is scratch space (hundreds of MB of checkpoints on a machine that may not be there
tomorrow); a record is tens of KB: the settings it ran with (config.yaml), its final metrics
(final.json), its training curves (metrics.jsonl, gzipped) and where it came from (record.json: the run
directory, when it was recorded, the code's commit, the wall and CPU minutes the runner's last
start of it took - with the step it resumed from, when that start went on from a checkpoint - and
for a re-evaluation a digest of the trained run's final.json it re-evaluated).
tools/experiments.py reports from records only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

# What a record copies from a run directory; final.json is what makes it a record. The training curves
# (a line per logged step: most of a record's bytes) are kept gzipped.
RECORDED_FILES = ("config.yaml", "final.json")
CURVES, CURVES_KEPT = "metrics.jsonl", "metrics.jsonl.gz"
PROVENANCE = "record.json"


class RecordError(RuntimeError):
    pass


def is_recorded(record: Path) -> bool:
    return (record / "final.json").is_file()


def final_digest(directory: Path) -> str:
    """sha256 of a run's (or record's) final.json: what a re-evaluation was made from."""
    return hashlib.sha256((directory / "final.json").read_bytes()).hexdigest()


def code_version(repo: Path) -> dict:
    """The commit the code ran at, and whether anything outside docs/ had uncommitted changes
    (None outside git). docs/ is left out: the runner itself rewrites the report there."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def write_record(run_dir: Path, record: Path, provenance: dict) -> None:
    """Copy a finished run's RECORDED_FILES into `record` with its provenance, replacing any record
    there. Written beside and renamed into place, so a crash leaves the old record or the new one."""
    if not (run_dir / "final.json").is_file():
        raise RecordError(f"{run_dir} has no final.json: only a finished run is recorded")
    partial = record.with_name(record.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in RECORDED_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, partial / name)
    if (run_dir / CURVES).is_file():
        write_curves((run_dir / CURVES).read_bytes(), partial / CURVES_KEPT)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (partial / PROVENANCE).write_text(
        json.dumps({"run_dir": str(run_dir), "recorded": stamp, **provenance}, indent=2) + "\n"
    )
    if record.exists():
        shutil.rmtree(record)
    partial.rename(record)


def read_provenance(record: Path) -> dict:
    path = record / PROVENANCE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not JSON ({exc})") from exc


def write_curves(jsonl: bytes, path: Path) -> None:
    """Gzipped with no name or time in its header, so the same curves are the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        out.write(jsonl)


def read_curves(record: Path) -> list[dict]:
    """The record's logged steps (metrics.jsonl's rows), oldest first."""
    path = record / CURVES_KEPT
    try:
        return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line]
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not gzipped JSON lines ({exc})") from exc


def read_final(record: Path) -> dict:
    path = record / "final.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not JSON ({exc})") from exc


def move_aside(path: Path, stamp: str) -> Path | None:
    """Rename a record or run directory (and its .log beside it) to <name>.stale-<stamp>: kept, never
    deleted, and no longer what the grid reads."""
    if not path.exists():
        return None
    aside = path.with_name(f"{path.name}.stale-{stamp}")
    path.rename(aside)
    log = path.with_name(path.name + ".log")  # not with_suffix: "seed-0.stale-<stamp>" has a suffix already
    if log.is_file():
        log.rename(aside.with_name(aside.name + ".log"))
    return aside
