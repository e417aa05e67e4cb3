"""A grid's plots, drawn from its table and run records: quality against a setting (`curve`),
the training losses of some methods (`losses`) and every method's test metrics side by side
(`bars`)."""

from __future__ import annotations

import statistics
from pathlib import Path

from research.experiments.grid import run_dir
from research.run_records import read_curves


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
                    twin.plot(
                        xs,
                        [statistics.mean(r["ms/user"] for r in runs) for _, runs in points],
                        "k--",
                        marker="s",
                        label="ms/user",
                    )
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
                fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
                for method in spec["methods"]:
                    rows = [r for r in read_curves(run_dir(records, dataset, method, seed)) if "loss/gem" in r]
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
