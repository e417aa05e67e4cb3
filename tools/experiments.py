"""Run a grid of experiments (datasets x methods x seeds) and write the results table.

    python tools/experiments.py --grid configs/experiments/main.yaml            # everything (hours)
    python tools/experiments.py --grid configs/experiments/main.yaml --only beauty
    python tools/experiments.py --grid configs/experiments/main.yaml --only beauty --methods dimerec sasrec
    python tools/experiments.py --grid configs/experiments/main.yaml --only beauty --seeds 0 1 2
    python tools/experiments.py --grid configs/experiments/main.yaml --report-only

A grid file names the datasets (a job config each), the methods (config overrides each;
every method is the same trainer with other settings; or {from: METHOD, eval: [overrides]}
to re-evaluate METHOD's runs with other inference settings) and the seeds. Each run is
`torchrun -m dimerec_dist.commands.train` (a plain process with `nproc: 1`) into
OUT/<dataset>/<method>/seed-<s>, and once finished it
is recorded (research/run_records.py: its settings, final metrics and training curves,
tens of KB) into RECORDS/<dataset>/<method>/seed-<s>. The records are what the report is made
from and what "done" means: a recorded run is skipped, so an interrupted grid resumes where
it stopped, and a grid that writes its report into the repository keeps its records there
too (research/results/<runs>), so the tables outlive the machine that ran them; other grids keep
them in OUT/records. A run whose settings differ from what the grid now asks (a changed
default, say) is moved aside - record and run directory - to <name>.stale-<time> and run
again, and its re-evaluations with it. Every dataset is prepared once, into
OUT/<dataset>/data, and shared by its runs. A grid with `runs: OTHER` keeps its runs and
records beside grid OTHER's (OUT defaults to runs/experiments/OTHER), so a method both name -
the ablations' `dimerec` and the comparison's - is trained once; both grids must then ask
the same settings of it (the stale check would otherwise move each other's runs aside).

The report (OUT/report-<grid name>.md, and the grid's `report` file if given, between the
`<!-- experiments:NAME -->` markers) has, per dataset: test metrics as mean +- standard
deviation over the seeds for every method and for popularity (with the test pass's ms
per user, and on synthetic logs the diversity of the top-50: distinct categories and
intra-list distance), the best baseline per metric, and Welch's t-test of the reference
method against it (research/significance.py). Finished runs that no longer answer what
the grid asks are named under the table, never averaged into it. This file runs and records;
what a grid asks, the report and the plots are research/experiments/.
Runs are selected on validation only: each run keeps its best epoch on validation NDCG@10,
and nothing in the grid is tuned on test.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.experiments.grid import (  # noqa: E402
    REPO,
    GridError,
    default_out,
    default_records,
    evaluation_only,
    load_grid,
    run_dir,
    stale_reason,
    training_overrides,
)
from research.experiments.plots import plot  # noqa: E402
from research.experiments.report import glance_of, report_text, write_report  # noqa: E402
from research.run_records import RecordError, code_version, final_digest, is_recorded, move_aside, write_record  # noqa: E402


def run_one(grid: dict, out: Path, dataset: str, method: str, seed: int) -> Path:
    spec = grid["datasets"][dataset]
    target = run_dir(out, dataset, method, seed)
    # One rank needs no torchrun agent (its start costs ~2 s a run): the trainer forms its one-rank group.
    launch = [sys.executable]
    if grid["nproc"] > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={grid['nproc']}"]
    derived = evaluation_only(grid, method)
    if derived is not None:
        source = run_dir(out, dataset, derived["from"], seed)
        if not (source / "model").is_dir():
            raise RecordError(
                f"{dataset} {method} seed {seed} re-evaluates {derived['from']}'s trained model, and "
                f"{source / 'model'} is not on this machine (its record is; the model is not "
                f"recorded): move {derived['from']}'s record aside to train it again here"
            )
        target.mkdir(parents=True, exist_ok=True)
        command = [
            *launch,
            "-m",
            "dimerec_dist.commands.evaluate",
            "--run-dir",
            str(source),
            "--out",
            str(target / "final.json"),
            *derived.get("eval", []),
        ]
    else:
        command = [
            *launch,
            "-m",
            "dimerec_dist.commands.train",
            "--config",
            str(REPO / spec["config"]),
            "--run-dir",
            str(target),
            *training_overrides(grid, out, dataset, method, seed),
        ]
    log = target.with_suffix(".log")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:  # a resumed run adds to the log of its interrupted start
        done = subprocess.run(
            command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return target


def record(grid: dict, out: Path, records: Path, job: tuple[str, str, int], provenance: dict) -> None:
    """Record a finished run; a re-evaluation notes which trained run (its final.json's digest) it read."""
    dataset, method, seed = job
    derived = evaluation_only(grid, method)
    if derived is not None:
        source = run_dir(records, dataset, derived["from"], seed)
        provenance = {**provenance, "source_final_sha256": final_digest(source)}
    write_record(run_dir(out, *job), run_dir(records, *job), provenance)


def record_unrecorded(grid: dict, out: Path, records: Path, jobs: list[tuple[str, str, int]]) -> None:
    """Record runs that finished without being recorded (before records existed, or stopped between
    the two). A re-evaluation only if its trained run's record is there and not newer than it."""
    for job in jobs:
        dataset, method, seed = job
        finished = run_dir(out, *job) / "final.json"
        if is_recorded(run_dir(records, *job)) or not finished.is_file():
            continue
        derived = evaluation_only(grid, method)
        if derived is not None:
            source = run_dir(out, dataset, derived["from"], seed) / "final.json"
            if (
                not is_recorded(run_dir(records, dataset, derived["from"], seed))
                or not source.is_file()
                or source.stat().st_mtime > finished.stat().st_mtime
            ):
                continue  # made from another trained run than the recorded one: it runs again
        record(grid, out, records, job, {"code": None, "note": "recorded after the run; its code version is unknown"})
        print(f"recorded {run_dir(out, *job)} (finished before it was recorded)", flush=True)


def resumed_from_step(run: Path) -> int | None:
    """The step an interrupted training run goes on from (its newest complete checkpoint: the
    trainer's train.resume=auto), or None for a run that starts at step 0."""
    # Here, not at the top: torch.distributed.checkpoint takes seconds to import, and most of the
    # runner's starts (a report, a wrong grid named) never need it.
    from dimerec_dist.training.checkpoint import CheckpointManager, read_meta

    latest = CheckpointManager(run / "checkpoints").latest()
    return read_meta(latest)["training"]["step"] if latest is not None else None  # what the trainer resumes at


def _children_cpu_seconds() -> float:
    """User + system CPU time of every finished child process so far (torchrun and its ranks)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_grid(
    grid: dict,
    out: Path,
    records: Path,
    only: list[str] | None,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
) -> None:
    # Trained methods first: an evaluation-only method needs its source's runs.
    chosen = sorted(
        (m for m in grid["methods"] if not methods or m in methods), key=lambda m: evaluation_only(grid, m) is not None
    )
    # --seeds lets a short session run every method on a few seeds before any method gets all of them.
    picked = [s for s in grid["seeds"] if seeds is None or s in seeds]
    jobs = [(d, m, s) for d in grid["datasets"] if not only or d in only for m in chosen for s in picked]
    record_unrecorded(grid, out, records, jobs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for job in jobs:  # trained runs first, so a re-evaluation sees its source moved aside
        why = stale_reason(grid, out, records, *job)
        if why:
            moved = [move_aside(run_dir(records, *job), stamp), move_aside(run_dir(out, *job), stamp)]
            print(
                f"stale: {run_dir(out, *job)} ({why}); moved to "
                f"{' and '.join(str(m) for m in moved if m)}, running again",
                flush=True,
            )
    todo = [job for job in jobs if not is_recorded(run_dir(records, *job))]
    print(f"{len(jobs)} runs in the grid, {len(jobs) - len(todo)} already done", flush=True)
    started = time.time()
    for index, job in enumerate(todo):
        began, cpu_before = time.time(), _children_cpu_seconds()
        code = code_version(REPO)  # before the run: the code it runs with
        resumed = None if evaluation_only(grid, job[1]) is not None else resumed_from_step(run_dir(out, *job))
        run_one(grid, out, *job)
        # Wall minutes count a pause (a test suite run beside it, SIGSTOPped); CPU minutes, summed
        # over the ranks, do not. A resumed run's minutes are its last leg's: the record says so.
        provenance = {
            "code": code,
            "minutes": round((time.time() - began) / 60, 2),
            "cpu_minutes": round((_children_cpu_seconds() - cpu_before) / 60, 2),
        }
        if resumed is not None:
            provenance["resumed_from_step"] = resumed
        record(grid, out, records, job, provenance)
        spent = time.time() - started
        eta = spent / (index + 1) * (len(todo) - index - 1)
        print(
            f"[{index + 1}/{len(todo)}] {job[0]} {job[1]} seed {job[2]} done in "
            f"{(time.time() - began) / 60:.1f} min | {spent / 60:.1f} min elapsed, ETA {eta / 60:.1f} min",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: runs/experiments/<the grid's `runs`, else its name>"
    )
    parser.add_argument("--only", nargs="*", help="datasets to run (the report covers every finished run)")
    parser.add_argument("--methods", nargs="*", help="methods to run (default: all of the grid's)")
    parser.add_argument("--seeds", nargs="*", type=int, help="seeds to run (default: all of the grid's)")
    parser.add_argument(
        "--records",
        type=Path,
        default=None,
        help="where run records live (default: research/results/<runs> for a grid with a committed "
        "report, else OUT/records)",
    )
    parser.add_argument("--report-only", action="store_true", help="write the report from the records, train nothing")
    args = parser.parse_args()
    try:
        grid = load_grid(args.grid)
    except (GridError, OSError, yaml.YAMLError) as exc:
        print(f"experiments: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or default_out(grid)
    out.mkdir(parents=True, exist_ok=True)
    records = args.records or default_records(grid, out)
    if not args.report_only:
        for flag, noun, asked, known in (
            ("only", "datasets", args.only, grid["datasets"]),
            ("methods", "methods", args.methods, grid["methods"]),
            ("seeds", "seeds", args.seeds, grid["seeds"]),
        ):
            unknown = sorted(set(asked or []) - set(known))
            if unknown:
                print(
                    f"experiments: error: --{flag} {', '.join(map(str, unknown))}: not in {args.grid} "
                    f"(its {noun}: {', '.join(map(str, known))})",
                    file=sys.stderr,
                )
                return 2
    try:
        if not args.report_only:
            run_grid(grid, out, records, args.only, args.methods, args.seeds)
        text, table = report_text(grid, out, records)
    except RecordError as exc:
        print(f"experiments: error: {exc}", file=sys.stderr)
        return 2
    # Figures go beside the report they are linked from (docs/ for the committed grids).
    figures = (REPO / grid["report"]).parent if grid.get("report") else out
    images = plot(grid, records, table, figures)
    if images:
        text += "\n" + "\n".join(images) + "\n"
    write_report(
        grid, out, records, text, f"python tools/experiments.py --grid {args.grid}", glance_of(grid, out, table)
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
