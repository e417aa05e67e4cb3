"""The report of a grid, made from its run records: per dataset, every method's test metrics as
mean +- standard deviation over seeds (with popularity, ms per user, diversity on synthetic
logs and the validation NDCG@10 settings are chosen by), the best baseline per metric with
Welch's t-test of the reference against it, the runs left out as stale, and what is still to
run with about how long it takes."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from research.experiments.grid import REPO, reference_twins, run_dir, stale_reason
from research.run_records import is_recorded, read_final, read_provenance
from research.significance import welch_t_test


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
                    provenance = read_provenance(record)
                    # A resumed run's minutes time its last leg only: not a run's cost to estimate with.
                    if provenance.get("minutes") is not None and "resumed_from_step" not in provenance:
                        extra["minutes"] = provenance["minutes"]
                    diversity = result.get("diversity", {})
                    selection = {"valid ndcg@10": result["valid"]["ndcg@10"]} if "ndcg@10" in result["valid"] else {}
                    table.setdefault(dataset, {}).setdefault(method, []).append(
                        {**result["test"], **diversity.get("test", {}), **extra, **selection, "seed": seed}
                    )
                    if method == grid["reference"]:
                        table[dataset].setdefault("popularity", []).append(
                            {**result["popularity"]["test"], **diversity.get("popularity", {}), "seed": seed}
                        )
    return table, left_out


def render_left_out(left_out: dict[str, list[str]]) -> str:
    if not left_out:
        return ""
    lines = [
        "Left out: finished runs made with other settings than the grid asks now (running the grid "
        "moves them aside and runs them again):"
    ]
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
    has recorded runs on that dataset, about how long the rest take (the mean wall minutes of those
    that ran in one go: a resumed run records its last leg)."""
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
    return (
        (
            f"Not recorded yet ({asked} asked of each method; the time each dataset's list takes is "
            f"the mean wall minutes of the method's recorded runs there, resumed runs left out):\n"
        )
        + "\n".join(f"- {part}" for part in parts)
        + "\n"
    )


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
    excluded = {
        m for m, spec in grid.get("methods", {}).items() if isinstance(spec, dict) and spec.get("from") == reference
    }
    if ablation:
        excluded.add("popularity")
    lines = []
    for dataset, methods in table.items():
        extras = [c for c in EXTRA_COLUMNS if any(c in r for runs in methods.values() for r in runs)]
        columns = [*metrics, *extras]
        same = (twins or {}).get(dataset, set())
        lines += [
            f"### {dataset}",
            "",
            "| method | seeds | " + " | ".join(m.upper() if m in metrics else m for m in columns) + " |",
            "|---|---|" + "---|" * len(columns),
        ]
        for method, runs in methods.items():
            cells = [
                _cell([r[c] for r in runs if c in r], 2 if c in ("categories@50", "ms/user") else 4) for c in columns
            ]
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
                verdict = (
                    f"best {'variant' if ablation else 'baseline'} {best}: {statistics.mean(theirs):.4f}; "
                    f"{reference} {statistics.mean(ours):.4f}"
                )
                if len(ours) > 1 and len(theirs) > 1:
                    test = welch_t_test(ours, theirs)
                    verdict += (
                        f"; Welch t = {test.t:.2f}, df = {test.df:.1f}, p = {test.p_two_sided:.3g} "
                        f"(by seed: {reference} {_by_seed(methods[reference], metric)}; "
                        f"{best} {_by_seed(baselines[best], metric)})"
                    )
                lines.append(f"- {metric.upper()}: {verdict}")
            lines.append("")
    return "\n".join(lines)


def _by_seed(runs: list[dict], metric: str) -> str:
    """ "0: 0.0910, 1: 0.0926, ...": the seeds behind a mean, so a reader sees what the t-test saw."""
    return ", ".join(f"{r['seed']}: {r[metric]:.4f}" if "seed" in r else f"{r[metric]:.4f}" for r in runs)


def _chosen_on_validation(methods: dict, metrics: list[str]) -> list[str]:
    """A tuning grid's verdict: the setting with the best mean validation NDCG@10, and its test."""
    scored = {
        m: statistics.mean(r["valid ndcg@10"] for r in runs)
        for m, runs in methods.items()
        if runs and all("valid ndcg@10" in r for r in runs)
    }
    if len(scored) < 2:
        return []  # nothing to choose between yet
    best = max(scored, key=scored.get)
    tested = ", ".join(
        f"{metric.upper()} {statistics.mean(r[metric] for r in methods[best]):.4f}" for metric in metrics
    )
    return [f"- Chosen on validation NDCG@10: **{best}** ({scored[best]:.4f}); its test: {tested}", ""]


GLANCE_METRICS = ("hr@10", "ndcg@10")


def glance(grid: dict, table: dict, twins: dict[str, set[str]] | None = None) -> str:
    """The comparison in one table a reader takes in at a glance: method x data set, test HR@10 /
    NDCG@10 as mean +- sd over the seeds; then the reference's lead over the best baseline of each
    data set, in bold where Welch's test finds it significant (p < 0.05)."""
    reference, datasets = grid["reference"], list(table)
    methods = [m for m in [*grid["methods"], "popularity"] if any(m in table[d] for d in datasets)]
    lines = ["| method | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for method in methods:
        cells = []
        for dataset in datasets:
            runs = table[dataset].get(method, [])
            cells.append(
                " / ".join(_cell([r[m] for r in runs]) for m in GLANCE_METRICS) + f" ({len(runs)})" if runs else "-"
            )
        lines.append(f"| {f'**{method}**' if method == reference else method} | " + " | ".join(cells) + " |")
    leads = []
    for dataset in datasets:
        methods_here, same = table[dataset], (twins or {}).get(dataset, set())
        baselines = {
            m: r
            for m, r in methods_here.items()
            if m not in {reference, "popularity"} | same
            and not (isinstance(grid["methods"].get(m), dict) and grid["methods"][m].get("from") == reference)
        }
        if reference not in methods_here or not baselines:
            leads.append("-")
            continue
        parts = []
        for metric in GLANCE_METRICS:
            best = max(baselines, key=lambda m, metric=metric: statistics.mean(r[metric] for r in baselines[m]))
            ours, theirs = [r[metric] for r in methods_here[reference]], [r[metric] for r in baselines[best]]
            change = statistics.mean(ours) / statistics.mean(theirs) - 1
            p = welch_t_test(ours, theirs).p_two_sided if len(ours) > 1 and len(theirs) > 1 else float("nan")
            part = f"{change:+.1%} vs {best} (p = {p:.2g})"
            parts.append(f"**{part}**" if p < 0.05 else part)
        leads.append(" / ".join(parts))
    lines.append(f"| {reference}'s lead over the best baseline | " + " | ".join(leads) + " |")
    return (
        "Test HR@10 / NDCG@10, mean +- sd over seeds (the count in brackets); the last row: the "
        f"relative lead of {reference} over the best other method on each metric, with Welch's two-sided "
        "p, in bold where p < 0.05.\n\n" + "\n".join(lines) + "\n"
    )


def glance_of(grid: dict, out: Path, table: dict) -> str | None:
    """The at-a-glance table of a grid that asks for one (`glance: true`) and has records."""
    if not grid.get("glance") or not table:
        return None
    return glance(grid, table, {dataset: reference_twins(grid, out, dataset) for dataset in table})


def _replace_block(current: str, name: str, body: str) -> str:
    """`current` with the text between <!-- experiments:NAME --> markers replaced by `body` (the
    block appended at the end where the markers are missing)."""
    marker_open, marker_close = f"<!-- experiments:{name} -->", f"<!-- /experiments:{name} -->"
    block = f"{marker_open}\n{body}\n{marker_close}"
    if marker_open in current:
        return re.sub(re.escape(marker_open) + r".*?" + re.escape(marker_close), lambda _: block, current, flags=re.S)
    return current.rstrip() + "\n\n" + block + "\n"


def write_report(grid: dict, out: Path, records: Path, text: str, command: str, glance_text: str | None = None) -> None:
    shown = records.resolve().relative_to(REPO) if records.resolve().is_relative_to(REPO) else records
    body = f"Made by `{command}` from the run records in `{shown}`.\n\n{text}"
    (out / f"report-{grid['name']}.md").write_text(body)
    if grid.get("report"):
        target = REPO / grid["report"]
        current = _replace_block(target.read_text() if target.is_file() else "", grid["name"], body)
        if glance_text is not None:
            current = _replace_block(
                current,
                f"{grid['name']}:glance",
                f"Made by `{command}` from the run records in `{shown}`.\n\n{glance_text}",
            )
        target.write_text(current)
