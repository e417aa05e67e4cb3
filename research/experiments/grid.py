"""A grid file (datasets x methods x seeds) and what it asks of each run: loading and checking
it, where runs and records live, each run's config overrides, and whether a finished run still
answers what the grid asks (a changed default makes it stale)."""

from __future__ import annotations

from pathlib import Path

import yaml

from dimerec_dist.config import ConfigError, load_config, settings_changes
from research.run_records import final_digest, is_recorded, read_provenance

# The source checkout the grids' config and report paths are relative to.
REPO = Path(__file__).resolve().parents[2]

GRID_KEYS = {
    "name",
    "seeds",
    "nproc",
    "datasets",
    "methods",
    "reference",
    "metrics",
    "report",
    "common",
    "plots",
    "purpose",
    "runs",
    "glance",
}
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
        unknown_methods = set(spec.get("method_overrides", {})) - set(grid["methods"])
        if unknown_methods:
            raise GridError(
                f"{path}: dataset {name!r}: method_overrides for unknown method(s) {', '.join(sorted(unknown_methods))}"
            )
    for name, spec in grid["methods"].items():
        if isinstance(spec, dict) and (
            set(spec) - {"from", "eval"}
            or spec.get("from") not in grid["methods"]
            or isinstance(grid["methods"][spec["from"]], dict)
        ):
            raise GridError(
                f"{path}: method {name!r}: an evaluation-only method is {{from: TRAINED_METHOD, eval: [overrides]}}"
            )
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
            raise GridError(
                f"{path}: plot {spec['name']!r}: {len(spec['x'])} x values for {len(spec['methods'])} methods"
            )
        unknown_methods = set(spec.get("methods", [])) - set(grid["methods"])
        if unknown_methods:
            raise GridError(
                f"{path}: plot {spec['name']!r}: method(s) {', '.join(sorted(unknown_methods))} not in the grid"
            )
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
    """Where a grid's run records live: in the repository (research/results/<runs>) for a grid whose
    report is committed there, so its tables outlive this machine's runs/; else OUT/records."""
    if grid.get("report"):
        return REPO / "research" / "results" / grid.get("runs", grid["name"])
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
    overrides = [
        *grid["common"],
        *grid["datasets"][dataset].get("overrides", []),
        *grid["methods"][method],
        # One method's settings on one dataset (a time budget equal to another method's time there).
        *grid["datasets"][dataset].get("method_overrides", {}).get(method, []),
        f"seed={seed}",
        f"data.path={data}",
    ]
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
    return {
        method
        for method in grid["methods"]
        if method != reference
        and evaluation_only(grid, method) is None
        and not settings_changes(ours, asked_job(grid, out, dataset, method, seed))
    }
