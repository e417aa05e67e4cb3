"""Run a grid of experiments (datasets x methods x seeds) and write the results table.

    python tools/experiments.py --grid configs/experiments/main.yaml            # everything (hours)
    python tools/experiments.py --grid configs/experiments/main.yaml --only beauty
    python tools/experiments.py --grid configs/experiments/main.yaml --only beauty --methods dimerec sasrec
    python tools/experiments.py --grid configs/experiments/main.yaml --only beauty --seeds 0 1 2
    python tools/experiments.py --grid configs/experiments/main.yaml --report-only

A grid file names the datasets (a job config each), the methods (config overrides each;
every method is the same trainer with other settings; or {from: METHOD, eval: [overrides]}
to re-evaluate METHOD's runs with other inference settings) and the seeds. Each run is
`torchrun -m dimerec_dist.train` into OUT/<dataset>/<method>/seed-<s>, and once finished it
is recorded (dimerec_dist/run_records.py: its settings, final metrics and training curves,
tens of KB) into RECORDS/<dataset>/<method>/seed-<s>. The records are what the report is made
from and what "done" means: a recorded run is skipped, so an interrupted grid resumes where
it stopped, and a grid that writes its report into the repository keeps its records there
too (docs/results/<runs>), so the tables outlive the machine that ran them; other grids keep
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
method against it (dimerec_dist/significance.py). Finished runs that no longer answer what
the grid asks are named under the table, never averaged into it.
Runs are selected on validation only: each run keeps its best epoch on validation NDCG@10,
and nothing in the grid is tuned on test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dimerec_dist.config import ConfigError, load_config, settings_changes  # noqa: E402
from dimerec_dist.run_records import (RecordError, code_version, final_digest, is_recorded, move_aside,  # noqa: E402
                                      read_final, read_provenance, write_record)
from dimerec_dist.significance import welch_t_test  # noqa: E402

GRID_KEYS = {"name", "seeds", "nproc", "datasets", "methods", "reference", "metrics", "report", "common", "plots",
             "purpose", "runs"}
# comparison: the reference method against the best of the others, its baselines (Welch's t-test);
# ablation: the same, the others being variants of the reference;
# tuning: the others are candidate settings, and the one with the best validation NDCG@10 is named.
PURPOSES = ("comparison", "ablation", "tuning")
# A plot's kind and the keys it needs besides name and title (see plot()).
PLOT_KEYS = {"curve": {"x", "xlabel", "methods", "metrics"}, "losses": {"methods"}, "bars": {"metrics"}}


class GridError(ValueError):
    pass


def load_grid(path: Path) -> dict:
    grid = yaml.safe_load(path.read_text())
    if not isinstance(grid, dict):
        raise GridError(f"{path}: expected a mapping at the top")
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise GridError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(GRID_KEYS))})")
    for key in ("name", "seeds", "datasets", "methods", "reference"):
        if key not in grid:
            raise GridError(f"{path}: missing key {key!r}")
    if grid["reference"] not in grid["methods"]:
        raise GridError(f"{path}: reference {grid['reference']!r} is not one of the methods")
    for name, spec in grid["datasets"].items():
        if not isinstance(spec, dict) or "config" not in spec:
            raise GridError(f"{path}: dataset {name!r} needs a 'config' (a job YAML)")
    for name, spec in grid["methods"].items():
        if isinstance(spec, dict) and (set(spec) - {"from", "eval"} or spec.get("from") not in grid["methods"]
                                       or isinstance(grid["methods"][spec["from"]], dict)):
            raise GridError(f"{path}: method {name!r}: an evaluation-only method is {{from: TRAINED_METHOD, "
                            f"eval: [overrides]}}")
        if not isinstance(spec, (dict, list)):
            raise GridError(f"{path}: method {name!r}: a list of config overrides, or {{from: ..., eval: [...]}}")
    for spec in grid.get("plots", []):
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in PLOT_KEYS:
            raise GridError(f"{path}: plot {spec!r}: kind must be one of {', '.join(PLOT_KEYS)}")
        missing = ({"name", "title"} | PLOT_KEYS[kind]) - set(spec)
        if missing:
            raise GridError(f"{path}: plot {spec.get('name', kind)!r}: missing {', '.join(sorted(missing))}")
        if kind == "curve" and len(spec["x"]) != len(spec["methods"]):
            raise GridError(f"{path}: plot {spec['name']!r}: {len(spec['x'])} x values for "
                            f"{len(spec['methods'])} methods")
        unknown_methods = set(spec.get("methods", [])) - set(grid["methods"])
        if unknown_methods:
            raise GridError(f"{path}: plot {spec['name']!r}: method(s) {', '.join(sorted(unknown_methods))} "
                            f"not in the grid")
    grid.setdefault("purpose", "comparison")
    if grid["purpose"] not in PURPOSES:
        raise GridError(f"{path}: purpose {grid['purpose']!r} is not one of {', '.join(PURPOSES)}")
    grid.setdefault("nproc", 2)
    grid.setdefault("metrics", ["hr@10", "ndcg@10", "hr@20", "ndcg@20"])
    grid.setdefault("common", [])
    return grid


def default_out(grid: dict) -> Path:
    return REPO / "runs" / "experiments" / grid.get("runs", grid["name"])


def default_records(grid: dict, out: Path) -> Path:
    """Where a grid's run records live: in the repository (docs/results/<runs>) for a grid whose
    report is committed there, so its tables outlive this machine's runs/; else OUT/records."""
    if grid.get("report"):
        return REPO / "docs" / "results" / grid.get("runs", grid["name"])
    return out / "records"


def run_dir(out: Path, dataset: str, method: str, seed: int) -> Path:
    return out / dataset / method / f"seed-{seed}"


def evaluation_only(grid: dict, method: str) -> dict | None:
    """A method given as {from: METHOD, eval: [overrides]} re-evaluates METHOD's trained runs
    with other inference settings (e.g. more reverse steps) instead of training again."""
    spec = grid["methods"][method]
    return spec if isinstance(spec, dict) else None


def training_overrides(grid: dict, out: Path, dataset: str, method: str, seed: int) -> list[str]:
    data = out / dataset / "data"
    overrides = [*grid["common"], *grid["datasets"][dataset].get("overrides", []), *grid["methods"][method],
                 f"seed={seed}", f"data.path={data}"]
    if (data / "manifest.json").is_file():
        overrides.append("data.source=prepared")
    return overrides


def asked_job(grid: dict, out: Path, dataset: str, method: str, seed: int):
    """The job config the grid asks of a trained method: the dataset's config with its overrides."""
    return load_config(REPO / grid["datasets"][dataset]["config"], training_overrides(grid, out, dataset, method, seed))


def changed_settings(grid: dict, out: Path, dataset: str, method: str, seed: int, where: Path) -> list[str]:
    """How a trained run's settings differ from what the grid asks now ([] if not at all): the
    config.yaml saved in `where` (its record, or its run directory) read with today's defaults,
    against the grid's job."""
    saved = where / "config.yaml"
    if not saved.is_file():
        return ["no config.yaml saved"]
    try:
        before = load_config(saved)
    except ConfigError as exc:
        return [f"its config.yaml no longer loads: {exc}"]
    return settings_changes(before, asked_job(grid, out, dataset, method, seed))


def stale_reason(grid: dict, out: Path, records: Path, dataset: str, method: str, seed: int) -> str:
    """Why a run no longer answers what the grid asks ("" if it does, or never started): a trained
    run's settings changed (recorded, or interrupted: resuming it would mix two settings), or a
    re-evaluation's trained run changed or is gone since it was re-evaluated."""
    record = run_dir(records, dataset, method, seed)
    derived = evaluation_only(grid, method)
    if derived is None:
        target = record if is_recorded(record) else run_dir(out, dataset, method, seed)
        started = (target / "final.json").is_file() or (target / "config.yaml").is_file()
        return ", ".join(changed_settings(grid, out, dataset, method, seed, target)) if started else ""
    if not is_recorded(record):
        return ""
    source = run_dir(records, dataset, derived["from"], seed)
    made_from = read_provenance(record).get("source_final_sha256")
    if not is_recorded(source) or made_from != final_digest(source):
        return "its trained run changed or is missing"
    return ""


def reference_twins(grid: dict, out: Path, dataset: str) -> set[str]:
    """Trained methods that ask exactly what the reference asks on this dataset (an ablation's
    `temperature_0.1` once 0.1 became the default): the reference again, never its rival."""
    reference, seed = grid["reference"], grid["seeds"][0]
    ours = asked_job(grid, out, dataset, reference, seed)
    return {method for method in grid["methods"] if method != reference and evaluation_only(grid, method) is None
            and not settings_changes(ours, asked_job(grid, out, dataset, method, seed))}


def run_one(grid: dict, out: Path, dataset: str, method: str, seed: int) -> Path:
    spec = grid["datasets"][dataset]
    target = run_dir(out, dataset, method, seed)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={grid['nproc']}"]
    derived = evaluation_only(grid, method)
    if derived is not None:
        source = run_dir(out, dataset, derived["from"], seed)
        if not (source / "model").is_dir():
            raise RecordError(f"{dataset} {method} seed {seed} re-evaluates {derived['from']}'s trained model, and "
                              f"{source / 'model'} is not on this machine (its record is; the model is not "
                              f"recorded): move {derived['from']}'s record aside to train it again here")
        target.mkdir(parents=True, exist_ok=True)
        command = [*launch, "-m", "dimerec_dist.eval_cli", "--run-dir", str(source), "--out",
                   str(target / "final.json"), *derived.get("eval", [])]
    else:
        command = [*launch, "-m", "dimerec_dist.train", "--config", str(REPO / spec["config"]), "--run-dir",
                   str(target), *training_overrides(grid, out, dataset, method, seed)]
    log = target.with_suffix(".log")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:  # a resumed run adds to the log of its interrupted start
        done = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return target


def record(grid: dict, out: Path, records: Path, job: tuple[str, str, int], provenance: dict) -> None:
    """Record a finished run; a re-evaluation notes which trained run (its final.json's digest) it read."""
    dataset, method, seed = job
    derived = evaluation_only(grid, method)
    if derived is not None:
        provenance = {**provenance, "source_final_sha256": final_digest(run_dir(records, dataset, derived["from"], seed))}
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
            if not is_recorded(run_dir(records, dataset, derived["from"], seed)) or not source.is_file() \
                    or source.stat().st_mtime > finished.stat().st_mtime:
                continue  # made from another trained run than the recorded one: it runs again
        record(grid, out, records, job, {"code": None, "note": "recorded after the run; its code version is unknown"})
        print(f"recorded {run_dir(out, *job)} (finished before it was recorded)", flush=True)


def _children_cpu_seconds() -> float:
    """User + system CPU time of every finished child process so far (torchrun and its ranks)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_grid(grid: dict, out: Path, records: Path, only: list[str] | None, methods: list[str] | None = None,
             seeds: list[int] | None = None) -> None:
    # Trained methods first: an evaluation-only method needs its source's runs.
    chosen = sorted((m for m in grid["methods"] if not methods or m in methods),
                    key=lambda m: evaluation_only(grid, m) is not None)
    # --seeds lets a short session run every method on a few seeds before any method gets all of them.
    picked = [s for s in grid["seeds"] if seeds is None or s in seeds]
    jobs = [(d, m, s) for d in grid["datasets"] if not only or d in only for m in chosen for s in picked]
    record_unrecorded(grid, out, records, jobs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for job in jobs:  # trained runs first, so a re-evaluation sees its source moved aside
        why = stale_reason(grid, out, records, *job)
        if why:
            moved = [move_aside(run_dir(records, *job), stamp), move_aside(run_dir(out, *job), stamp)]
            print(f"stale: {run_dir(out, *job)} ({why}); moved to "
                  f"{' and '.join(str(m) for m in moved if m)}, running again", flush=True)
    todo = [job for job in jobs if not is_recorded(run_dir(records, *job))]
    print(f"{len(jobs)} runs in the grid, {len(jobs) - len(todo)} already done", flush=True)
    started = time.time()
    for index, job in enumerate(todo):
        began, cpu_before = time.time(), _children_cpu_seconds()
        code = code_version(REPO)  # before the run: the code it runs with
        run_one(grid, out, *job)
        # Wall minutes count a pause (a test suite run beside it, SIGSTOPped); CPU minutes, summed
        # over the ranks, do not.
        record(grid, out, records, job, {"code": code, "minutes": round((time.time() - began) / 60, 2),
                                         "cpu_minutes": round((_children_cpu_seconds() - cpu_before) / 60, 2)})
        spent = time.time() - started
        eta = spent / (index + 1) * (len(todo) - index - 1)
        print(f"[{index + 1}/{len(todo)}] {job[0]} {job[1]} seed {job[2]} done in "
              f"{(time.time() - began) / 60:.1f} min | {spent / 60:.1f} min elapsed, ETA {eta / 60:.1f} min",
              flush=True)


def collect(grid: dict, out: Path, records: Path) -> tuple[dict, dict[str, list[str]]]:
    """({dataset: {method: [one dict per seed]}}, left out): recorded runs only: the test metrics,
    plus ms/user and diversity where the run has them. Popularity comes with the reference's runs.
    A finished run that no longer answers what the grid asks (made before a default moved) is left
    out of the table, never averaged with current ones: left out maps each reason to its runs."""
    table: dict[str, dict[str, list[dict]]] = {}
    left_out: dict[str, list[str]] = {}
    for dataset in grid["datasets"]:
        for method in grid["methods"]:
            for seed in grid["seeds"]:
                record = run_dir(records, dataset, method, seed)
                if is_recorded(record):
                    why = stale_reason(grid, out, records, dataset, method, seed)
                    if why:
                        left_out.setdefault(why, []).append(f"{dataset} {method} seed {seed}")
                        continue
                    result = read_final(record)
                    extra = {"ms/user": result["latency"]["ms_per_user"]} if "latency" in result else {}
                    minutes = read_provenance(record).get("minutes")
                    if minutes is not None:
                        extra["minutes"] = minutes
                    diversity = result.get("diversity", {})
                    selection = {"valid ndcg@10": result["valid"]["ndcg@10"]} if "ndcg@10" in result["valid"] else {}
                    table.setdefault(dataset, {}).setdefault(method, []).append(
                        {**result["test"], **diversity.get("test", {}), **extra, **selection, "seed": seed})
                    if method == grid["reference"]:
                        table[dataset].setdefault("popularity", []).append(
                            {**result["popularity"]["test"], **diversity.get("popularity", {}), "seed": seed})
    return table, left_out


def render_left_out(left_out: dict[str, list[str]]) -> str:
    if not left_out:
        return ""
    lines = ["Left out: finished runs made with other settings than the grid asks now (running the grid "
             "moves them aside and runs them again):"]
    lines += [f"- {why}: {', '.join(runs)}" for why, runs in left_out.items()]
    return "\n".join(lines) + "\n"


def _seed_ranges(seeds: list[int]) -> str:
    """[0, 1, 2, 4] -> "0-2, 4"."""
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def render_missing(grid: dict, table: dict) -> str:
    """What the grid asks that has no current record: a dataset, a method, or some seeds of it -
    the table's own 'still to run', so no prose has to keep count - and, where a method already
    has recorded runs on that dataset, about how long the rest take (their mean wall minutes)."""
    parts = []
    for dataset in grid["datasets"]:
        recorded = table.get(dataset, {})
        if not recorded:
            parts.append(f"{dataset}: every method")
            continue
        missing, estimated_minutes, not_estimated, timed = [], 0.0, 0, False
        for method in grid["methods"]:
            runs = recorded.get(method, [])
            seeds = sorted(set(grid["seeds"]) - {r["seed"] for r in runs})
            if not seeds:
                continue
            missing.append(f"{method} {'every seed' if len(seeds) == len(grid['seeds']) else _seed_ranges(seeds)}")
            minutes = [r["minutes"] for r in runs if "minutes" in r]
            if minutes:
                estimated_minutes += statistics.mean(minutes) * len(seeds)
                timed = True
            else:
                not_estimated += len(seeds)
        if missing:
            cost = [f"about {estimated_minutes / 60:.1f} h"] if timed else []
            if not_estimated:
                cost.append(f"{not_estimated} run{'s' if not_estimated > 1 else ''} of methods not yet timed here")
            parts.append(f"{dataset}: {'; '.join(missing)} ({', and '.join(cost)})")
    if not parts:
        return ""
    asked = f"seed{'s' if len(grid['seeds']) > 1 else ''} {_seed_ranges(grid['seeds'])}"
    return (f"Not recorded yet ({asked} asked of each method; the time each dataset's list takes is "
            f"the mean wall minutes of the method's recorded runs there):\n") + \
        "\n".join(f"- {part}" for part in parts) + "\n"


def report_text(grid: dict, out: Path, records: Path) -> tuple[str, dict]:
    """The report's text (tables, verdicts, runs left out, runs still to make) and its table."""
    table, left_out = collect(grid, out, records)
    twins = {dataset: reference_twins(grid, out, dataset) for dataset in table}
    text = render(grid, table, twins) + "\n" + render_left_out(left_out) + render_missing(grid, table)
    return text, table


# Shown where runs report them. "valid ndcg@10" is what settings are chosen by; the rest is test.
EXTRA_COLUMNS = ("categories@50", "ild@50", "ms/user", "valid ndcg@10")


def _cell(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    spread = f" +- {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{spread}"


def render(grid: dict, table: dict, twins: dict[str, set[str]] | None = None) -> str:
    """The tables and verdicts; twins: per dataset, the methods that ask what the reference asks
    (reference_twins), shown but never picked as its best baseline or variant."""
    metrics, reference = grid["metrics"], grid["reference"]
    # The reference's own re-evaluations (another query, more steps) are the reference itself
    # under other inference settings, never what it is compared against; nor is popularity,
    # shown beside an ablation, a variant of the reference.
    ablation = grid.get("purpose") == "ablation"
    excluded = {m for m, spec in grid.get("methods", {}).items()
                if isinstance(spec, dict) and spec.get("from") == reference}
    if ablation:
        excluded.add("popularity")
    lines = []
    for dataset, methods in table.items():
        extras = [c for c in EXTRA_COLUMNS if any(c in r for runs in methods.values() for r in runs)]
        columns = [*metrics, *extras]
        same = (twins or {}).get(dataset, set())
        lines += [f"### {dataset}", "",
                  "| method | seeds | " + " | ".join(m.upper() if m in metrics else m for m in columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        for method, runs in methods.items():
            cells = [_cell([r[c] for r in runs if c in r], 2 if c in ("categories@50", "ms/user") else 4)
                     for c in columns]
            name = f"**{method}**" if method == reference else method
            if method in same:
                name += f" (= {reference}'s settings)"
            lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
        lines.append("")
        if grid.get("purpose") == "tuning":
            lines += _chosen_on_validation(methods, metrics)
            continue
        baselines = {m: r for m, r in methods.items() if m != reference and m not in excluded | same}
        if reference in methods and baselines:
            for metric in metrics:
                best = max(baselines, key=lambda m: statistics.mean(r[metric] for r in baselines[m]))
                ours = [r[metric] for r in methods[reference]]
                theirs = [r[metric] for r in baselines[best]]
                verdict = (f"best {'variant' if ablation else 'baseline'} {best}: {statistics.mean(theirs):.4f}; "
                           f"{reference} {statistics.mean(ours):.4f}")
                if len(ours) > 1 and len(theirs) > 1:
                    test = welch_t_test(ours, theirs)
                    verdict += (f"; Welch t = {test.t:.2f}, df = {test.df:.1f}, p = {test.p_two_sided:.3g} "
                                f"(by seed: {reference} {_by_seed(methods[reference], metric)}; "
                                f"{best} {_by_seed(baselines[best], metric)})")
                lines.append(f"- {metric.upper()}: {verdict}")
            lines.append("")
    return "\n".join(lines)


def _by_seed(runs: list[dict], metric: str) -> str:
    """"0: 0.0910, 1: 0.0926, ...": the seeds behind a mean, so a reader sees what the t-test saw."""
    return ", ".join(f"{r['seed']}: {r[metric]:.4f}" if "seed" in r else f"{r[metric]:.4f}" for r in runs)


def _chosen_on_validation(methods: dict, metrics: list[str]) -> list[str]:
    """A tuning grid's verdict: the setting with the best mean validation NDCG@10, and its test."""
    scored = {m: statistics.mean(r["valid ndcg@10"] for r in runs) for m, runs in methods.items()
              if runs and all("valid ndcg@10" in r for r in runs)}
    if len(scored) < 2:
        return []  # nothing to choose between yet
    best = max(scored, key=scored.get)
    tested = ", ".join(f"{metric.upper()} {statistics.mean(r[metric] for r in methods[best]):.4f}" for metric in metrics)
    return [f"- Chosen on validation NDCG@10: **{best}** ({scored[best]:.4f}); its test: {tested}", ""]


def curve_points(spec: dict, methods: dict) -> list[tuple[float, list[dict]]]:
    """(x, runs) for each of a curve's methods that has runs, over the seeds all of them have:
    a point averaging 3 seeds beside points of 1 would draw the seeds' spread as an effect of x."""
    points = [(x, methods[m]) for x, m in zip(spec["x"], spec["methods"]) if m in methods]
    if not points:
        return []
    common = set.intersection(*({r["seed"] for r in runs} for _, runs in points))
    return [(x, [r for r in runs if r["seed"] in common]) for x, runs in points] if common else []


def _bars(ax, grid: dict, methods: dict, metrics: list[str]) -> None:
    """Grouped bars, one group per method (the reference outlined), one bar per metric:
    the mean over seeds with its standard deviation, and every seed as a dot."""
    names = list(methods)
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        runs = [[r[metric] for r in methods[m] if metric in r] for m in names]
        means = [statistics.mean(v) if v else 0 for v in runs]
        spread = [statistics.stdev(v) if len(v) > 1 else 0 for v in runs]
        bars = ax.bar(xs, means, width, yerr=spread, capsize=2, label=metric.upper())
        for bar, name in zip(bars, names):
            if name == grid["reference"]:
                bar.set_edgecolor("black")
                bar.set_linewidth(1.2)
        for x, values in zip(xs, runs):
            ax.plot([x] * len(values), values, "k.", markersize=3)
    seeds = {m: f"{len(methods[m])} seed{'' if len(methods[m]) == 1 else 's'}" for m in names}
    ax.set_xticks(range(len(names)), [f"{m}\n({seeds[m]})" for m in names], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("test")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
    ax.legend(fontsize=8, ncols=len(metrics), loc="upper right")


def plot(grid: dict, records: Path, table: dict, figures: Path) -> list[str]:
    """The grid's `plots`: `curve` (a metric, and ms/user if reported, against an x value per
    method, mean and spread over seeds), `losses` (training losses of some methods, one seed) or
    `bars` (every method's test metrics side by side, mean, spread and seeds).
    One PNG per plot and dataset in `figures`; returns Markdown image lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for spec in grid.get("plots", []):
        for dataset, methods in table.items():
            name = f"{grid['name']}_{spec['name']}_{dataset}.png"
            if spec["kind"] == "curve":
                points = curve_points(spec, methods)
                if len(points) < 2:
                    continue
                fig, ax = plt.subplots(figsize=(5.2, 3.6))
                xs = [x for x, _ in points]
                for metric in spec["metrics"]:
                    means = [statistics.mean(r[metric] for r in runs) for _, runs in points]
                    spread = [statistics.stdev(r[metric] for r in runs) if len(runs) > 1 else 0 for _, runs in points]
                    ax.errorbar(xs, means, yerr=spread, marker="o", capsize=3, label=metric.upper())
                ax.set_xlabel(spec["xlabel"])
                ax.set_ylabel("test")
                if all("ms/user" in r for _, runs in points for r in runs):
                    twin = ax.twinx()
                    twin.plot(xs, [statistics.mean(r["ms/user"] for r in runs) for _, runs in points], "k--",
                              marker="s", label="ms/user")
                    twin.set_ylabel("evaluation ms per user (dashed)")
                if spec.get("log_x"):
                    ax.set_xscale("log")
                ax.legend(fontsize=8, loc="best")
            elif spec["kind"] == "bars":
                if len(methods) < 2:
                    continue
                fig, ax = plt.subplots(figsize=(1.1 * len(methods) + 2.5, 3.8))
                _bars(ax, grid, methods, spec["metrics"])
            else:  # losses: a comparison, so drawn only once every method named has a current, finished run
                seed = spec.get("seed", grid["seeds"][0])
                if not all(any(r["seed"] == seed for r in methods.get(m, [])) for m in spec["methods"]):
                    continue
                files = [run_dir(records, dataset, m, seed) / "metrics.jsonl" for m in spec["methods"]]
                fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
                for method, metrics_file in zip(spec["methods"], files):
                    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
                    rows = [r for r in rows if "loss/gem" in r]
                    for ax, loss in zip(axes, ("gem", "recon", "ssm")):
                        ax.plot([r["step"] for r in rows], [r[f"loss/{loss}"] for r in rows], label=method)
                        ax.set_title(f"L_{loss}")
                        ax.set_xlabel("step")
                axes[0].legend(fontsize=8)
            fig.suptitle(f"{dataset}: {spec['title']}", fontsize=10)
            fig.tight_layout()
            figures.mkdir(parents=True, exist_ok=True)
            fig.savefig(figures / name, dpi=110)
            plt.close(fig)
            lines.append(f"![{spec['title']} ({dataset})]({name})")
    return lines


def write_report(grid: dict, out: Path, records: Path, text: str, command: str) -> None:
    shown = records.resolve().relative_to(REPO) if records.resolve().is_relative_to(REPO) else records
    body = f"Made by `{command}` from the run records in `{shown}`.\n\n{text}"
    (out / f"report-{grid['name']}.md").write_text(body)
    if grid.get("report"):
        target = REPO / grid["report"]
        marker_open, marker_close = f"<!-- experiments:{grid['name']} -->", f"<!-- /experiments:{grid['name']} -->"
        current = target.read_text() if target.is_file() else ""
        block = f"{marker_open}\n{body}\n{marker_close}"
        if marker_open in current:
            current = re.sub(re.escape(marker_open) + r".*?" + re.escape(marker_close), lambda _: block, current,
                             flags=re.S)
        else:
            current = current.rstrip() + "\n\n" + block + "\n"
        target.write_text(current)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: runs/experiments/<the grid's `runs`, else its name>")
    parser.add_argument("--only", nargs="*", help="datasets to run (the report covers every finished run)")
    parser.add_argument("--methods", nargs="*", help="methods to run (default: all of the grid's)")
    parser.add_argument("--seeds", nargs="*", type=int, help="seeds to run (default: all of the grid's)")
    parser.add_argument("--records", type=Path, default=None,
                        help="where run records live (default: docs/results/<runs> for a grid with a committed "
                             "report, else OUT/records)")
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
        for flag, asked, known in (("methods", args.methods, grid["methods"]), ("seeds", args.seeds, grid["seeds"])):
            unknown = sorted(set(asked or []) - set(known))
            if unknown:
                print(f"experiments: error: --{flag} {', '.join(map(str, unknown))}: not in {args.grid} "
                      f"(its {flag}: {', '.join(map(str, known))})", file=sys.stderr)
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
    write_report(grid, out, records, text, f"python tools/experiments.py --grid {args.grid}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
