"""tools/experiments.py runs a grid, resumes it, and reports means, spreads and Welch's test;
research/significance.py gives the textbook p-values."""

import json
import math
import re
import shutil
import subprocess
import sys

import pytest

import research.experiments.grid as experiment_grid
import research.experiments.plots as experiment_plots
import research.experiments.report as experiment_report
from dimerec_dist.config import load_config
from research.run_records import RecordError, final_digest, write_record
from research.significance import welch_t_test
from tests.distributed.conftest import REPO


def test_welch_t_test_matches_a_worked_example():
    result = welch_t_test([1, 2, 3, 4, 5], [2, 3, 4, 5, 9])  # R: t = -1.1429, df = 6.4521, p = 0.2937
    assert (result.t, result.df, result.p_two_sided) == pytest.approx((-1.142857, 6.452133, 0.293725), abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 values"):
        welch_t_test([1.0], [1.0, 2.0])
    same = welch_t_test([0.3, 0.3], [0.3, 0.3])  # no spread anywhere: equal means are no difference
    assert (same.t, same.p_two_sided) == (0.0, 1.0)
    apart = welch_t_test([0.4, 0.4], [0.3, 0.3])
    assert apart.t == math.inf and apart.p_two_sided == 0.0


GRID = """
name: smoke
nproc: 1
seeds: [0, 1]
reference: dimerec
metrics: [hr@10, ndcg@10]
common: [model.embedding_dim=16, model.max_history=10, model.num_interests=2, model.dam_hidden=32,
         model.diffusion_steps=10, train.batch_size=64, train.negatives=64, train.max_steps=15,
         train.eval_every_epochs=0, eval.batch_size=64]
datasets:
  tiny: {config: CONFIG}
methods:
  dimerec: []
  comirec_sa: [model.recon_weight=0, model.ssm_weight=0]
  dimerec_5_steps: {from: dimerec, eval: [model.sample_steps=5]}
plots:
  - {kind: curve, name: steps, title: steps, xlabel: steps, x: [1, 5], methods: [dimerec, dimerec_5_steps],
     metrics: [hr@10]}
  - {kind: losses, name: losses, title: losses, methods: [dimerec, comirec_sa]}
  - {kind: bars, name: comparison, title: test, metrics: [hr@10, ndcg@10]}
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    config = root / "tiny.yaml"
    config.write_text("data: {source: synthetic, synth_users: 300, synth_items: 200, synth_events: 6000}\n")
    grid = root / "grid.yaml"
    grid.write_text(GRID.replace("CONFIG", str(config)))
    return root, grid


def run(grid, out, *extra):
    return subprocess.run(
        [sys.executable, "tools/experiments.py", "--grid", str(grid), "--out", str(out), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def finished(grid):
    """The smoke grid run once; tests that change it work on a copy of this tree (each tiny run is a
    torchrun launch, most of it imports: training them once keeps the suite short)."""
    root, grid_file = grid
    done = run(grid_file, root / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out", done


def copy_of(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)  # copy2 keeps the times the runner compares to record old re-evaluations
    return out


def retrain(record):
    """What training a run again does to its record, as a re-evaluation of it sees it: other results."""
    final = json.loads((record / "final.json").read_text())
    final["test"]["hr@10"] += 0.001
    (record / "final.json").write_text(json.dumps(final))


def stale_dirs(parent, name="seed-0"):
    return [p for p in parent.glob(f"{name}.stale-*") if p.is_dir()]


def test_the_grid_runs_reports_and_resumes(grid, finished):
    root, grid_file = grid
    done = finished[1]
    assert "6 runs in the grid, 0 already done" in done.stdout
    assert "tiny dimerec seed 0 done in " in done.stdout, "each run's own time is printed"
    report = (root / "out" / "report-smoke.md").read_text()
    assert "| **dimerec** | 2 |" in report and "| comirec_sa | 2 |" in report and "| popularity | 2 |" in report
    assert "Welch t =" in report and "best baseline" in report
    assert "categories@50 | ild@50 | ms/user |" in report, "a synthetic log reports diversity and latency"
    five = json.loads((root / "out" / "tiny" / "dimerec_5_steps" / "seed-0" / "final.json").read_text())
    assert five["protocol"]["sample_steps"] == 5 and "| dimerec_5_steps | 2 |" in report
    assert not (root / "out" / "tiny" / "dimerec_5_steps" / "seed-0" / "model").exists(), "evaluated, not trained"
    hr = [
        json.loads((root / "out" / "tiny" / "dimerec" / f"seed-{s}" / "final.json").read_text())["test"]["hr@10"]
        for s in (0, 1)
    ]
    assert f"{sum(hr) / 2:.4f} +- " in report
    assert f"(by seed: dimerec 0: {hr[0]:.4f}, 1: {hr[1]:.4f}; " in report, "the seeds behind the t-test"
    for name in ("smoke_steps_tiny.png", "smoke_losses_tiny.png", "smoke_comparison_tiny.png"):
        assert (root / "out" / name).stat().st_size > 5_000 and f"]({name})" in report
    again = run(grid_file, root / "out")
    assert "6 runs in the grid, 6 already done" in again.stdout


def test_a_run_with_other_settings_is_moved_aside_and_run_again(grid, finished, tmp_path):
    root, grid_file = grid
    out = copy_of(finished, tmp_path)
    one_seed = grid_file.read_text().replace("seeds: [0, 1]", "seeds: [0]")
    first = json.loads((out / "tiny" / "comirec_sa" / "seed-0" / "final.json").read_text())
    # The grid now asks comirec_sa for another setting: that run and nothing else is stale.
    gem_only = "[model.recon_weight=0, model.ssm_weight=0]"
    (tmp_path / "grid.yaml").write_text(one_seed.replace(gem_only, gem_only[:-1] + ", model.dropout=0.3]"))
    again = run(tmp_path / "grid.yaml", out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "model.dropout 0.1 -> 0.3" in again.stdout and "3 runs in the grid, 2 already done" in again.stdout
    aside = list((out / "tiny" / "comirec_sa").glob("seed-0.stale-*"))
    aside = stale_dirs(out / "tiny" / "comirec_sa")
    assert len(aside) == 1 and json.loads((aside[0] / "final.json").read_text()) == first, "the old run is kept"
    assert aside[0].with_name(aside[0].name + ".log").is_file(), "and its log, beside it"
    kept = stale_dirs(out / "records" / "tiny" / "comirec_sa")
    assert len(kept) == 1 and json.loads((kept[0] / "final.json").read_text()) == first, "so is its record"
    for where in (out, out / "records"):
        assert "dropout: 0.3" in (where / "tiny" / "comirec_sa" / "seed-0" / "config.yaml").read_text()
    # A retrained source makes its re-evaluations stale too.
    retrain(out / "records" / "tiny" / "dimerec" / "seed-0")
    third = run(tmp_path / "grid.yaml", out)
    assert "dimerec_5_steps/seed-0 (its trained run changed or is missing)" in third.stdout
    assert "3 runs in the grid, 2 already done" in third.stdout
    # An interrupted run (no final.json, no record) the grid now asks other settings of is not resumed under them.
    (out / "tiny" / "comirec_sa" / "seed-0" / "final.json").unlink()
    shutil.rmtree(out / "records" / "tiny" / "comirec_sa" / "seed-0")
    gem_only = "[model.recon_weight=0, model.ssm_weight=0]"
    (tmp_path / "grid.yaml").write_text(one_seed.replace(gem_only, gem_only[:-1] + ", model.dropout=0.2]"))
    fourth = run(tmp_path / "grid.yaml", out)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert "model.dropout 0.3 -> 0.2" in fourth.stdout and len(stale_dirs(out / "tiny" / "comirec_sa")) == 2


def test_the_report_leaves_out_runs_made_with_other_settings_and_names_them(grid, finished, tmp_path):
    root, grid_file = grid
    out = copy_of(finished, tmp_path)
    # A default moved after the runs finished: comirec_sa's runs no longer answer the grid.
    (tmp_path / "grid.yaml").write_text(
        grid_file.read_text().replace(
            "[model.recon_weight=0, model.ssm_weight=0]",
            "[model.recon_weight=0, model.ssm_weight=0, model.dropout=0.3]",
        )
    )
    report = run(tmp_path / "grid.yaml", out, "--report-only")
    assert report.returncode == 0, report.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in report.stdout.splitlines() if line.startswith("| ")}
    assert "comirec_sa" not in rows and rows["**dimerec**"].split("|")[2].strip() == "2"
    assert "- model.dropout 0.1 -> 0.3: tiny comirec_sa seed 0, tiny comirec_sa seed 1" in report.stdout
    assert "smoke_losses_tiny.png" not in report.stdout, "no loss curves of a left-out run beside current ones"
    # A re-evaluation of another trained run than the one recorded is left out too; nothing was moved or trained.
    retrain(out / "records" / "tiny" / "dimerec" / "seed-1")
    report = run(tmp_path / "grid.yaml", out, "--report-only")
    assert "- its trained run changed or is missing: tiny dimerec_5_steps seed 1" in report.stdout
    assert not list(out.glob("**/seed-*.stale-*"))


def test_methods_and_seeds_pick_what_runs_and_an_unknown_one_or_dataset_is_named(grid, tmp_path):
    _, grid_file = grid
    done = run(grid_file, tmp_path / "out", "--methods", "comirec_sa", "--seeds", "0")
    assert done.returncode == 0 and "1 runs in the grid, 0 already done" in done.stdout
    assert not (tmp_path / "out" / "tiny" / "dimerec").exists()
    assert [p.name for p in (tmp_path / "out" / "tiny" / "comirec_sa").glob("seed-*") if p.is_dir()] == ["seed-0"]
    assert not (tmp_path / "out" / "smoke_losses_tiny.png").exists(), "a losses plot waits for every method it names"
    wrong = run(grid_file, tmp_path / "out", "--methods", "comirec")
    assert wrong.returncode == 2 and "--methods comirec: not in" in wrong.stderr
    wrong = run(grid_file, tmp_path / "out", "--seeds", "7")
    assert wrong.returncode == 2 and "--seeds 7: not in" in wrong.stderr
    wrong = run(grid_file, tmp_path / "out", "--only", "beauty")  # a typo would otherwise run nothing, quietly
    assert wrong.returncode == 2 and "--only beauty: not in" in wrong.stderr and "(its datasets: tiny)" in wrong.stderr


def test_a_grid_sharing_runs_trains_a_method_both_name_once(grid, finished, tmp_path):
    root, grid_file = grid
    out = copy_of(finished, tmp_path)
    config = root / "tiny.yaml"
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text(
        GRID.split("datasets:")[0]
        .replace("name: smoke", "name: smoke_ablation\nruns: smoke")
        .replace("seeds: [0, 1]", "seeds: [0]")
        + f"datasets:\n  tiny: {{config: {config}}}\nmethods:\n  dimerec: []\n"
        "  k1: [model.num_interests=1]\n"
    )
    default = experiment_grid.default_out(experiment_grid.load_grid(ablation))
    assert default == experiment_grid.REPO / "runs/experiments/smoke"
    done = run(ablation, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 runs in the grid, 1 already done" in done.stdout, "dimerec seed 0 is the first grid's run"
    assert "| k1 | 1 |" in (out / "report-smoke_ablation.md").read_text()
    assert "| k1 |" not in (out / "report-smoke.md").read_text(), "each grid keeps its own report"


def test_the_records_outlive_the_run_directories(grid, finished, tmp_path):
    """A new machine has the repository's records and none of the runs: the report is the same,
    nothing trains again, and a re-evaluation that needs a model it no longer has says so."""
    root, grid_file = grid
    out = copy_of(finished, tmp_path)
    records = out / "records"
    provenance = json.loads((records / "tiny" / "dimerec" / "seed-0" / "record.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["code"]["commit"]) and provenance["minutes"] > 0
    assert 0 < provenance["cpu_minutes"] < 10, "the ranks' CPU time, not the runner's own"
    table, _ = experiment_report.collect(experiment_grid.load_grid(grid_file), out, records)
    assert table["tiny"]["dimerec"][0]["minutes"] == provenance["minutes"], "what 'Not recorded yet' times with"
    derived = json.loads((records / "tiny" / "dimerec_5_steps" / "seed-0" / "record.json").read_text())
    assert derived["source_final_sha256"] == final_digest(records / "tiny" / "dimerec" / "seed-0")
    assert sorted(p.name for p in (records / "tiny" / "dimerec" / "seed-0").iterdir()) == [
        "config.yaml",
        "final.json",
        "metrics.jsonl.gz",
        "record.json",
    ], "the model and checkpoints stay out"
    before = (root / "out" / "report-smoke.md").read_text()
    for method in ("dimerec", "comirec_sa", "dimerec_5_steps"):
        shutil.rmtree(out / "tiny" / method)
    again = run(grid_file, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 runs in the grid, 6 already done" in again.stdout
    assert (out / "report-smoke.md").read_text().split("\n", 1)[1] == before.split("\n", 1)[1], "the same tables"
    shutil.rmtree(records / "tiny" / "dimerec_5_steps" / "seed-0")
    lost = run(grid_file, out)
    assert lost.returncode == 2 and "dimerec_5_steps seed 0 re-evaluates dimerec's trained model" in lost.stderr
    assert "is not on this machine" in lost.stderr


def test_runs_finished_before_their_records_are_recorded_not_run_again(grid, finished, tmp_path):
    _, grid_file = grid
    out = copy_of(finished, tmp_path)
    shutil.rmtree(out / "records")
    again = run(grid_file, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 runs in the grid, 6 already done" in again.stdout
    assert again.stdout.count("(finished before it was recorded)") == 6
    provenance = json.loads((out / "records" / "tiny" / "comirec_sa" / "seed-1" / "record.json").read_text())
    assert provenance["code"] is None and "code version is unknown" in provenance["note"]


def test_a_resumed_run_records_the_step_it_went_on_from_and_is_not_timed_with(grid, finished, tmp_path):
    """An interrupted run goes on from its checkpoint; the minutes of that last leg are no run's cost."""
    root, grid_file = grid
    out = copy_of(finished, tmp_path)
    run_directory, record = out / "tiny" / "dimerec" / "seed-1", out / "records" / "tiny" / "dimerec" / "seed-1"
    checkpoint = sorted((run_directory / "checkpoints").glob("step-*"))[-1]
    (run_directory / "final.json").unlink()  # interrupted after its last checkpoint, before its evaluation
    shutil.rmtree(record)
    done = run(grid_file, out, "--methods", "dimerec", "--seeds", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    provenance = json.loads((record / "record.json").read_text())
    assert provenance["resumed_from_step"] == int(checkpoint.name.removeprefix("step-")) > 0
    assert provenance["minutes"] > 0, "the leg's minutes stay in the record"
    table, _ = experiment_report.collect(experiment_grid.load_grid(grid_file), out, out / "records")
    timed = {r["seed"]: "minutes" in r for r in table["tiny"]["dimerec"]}
    assert timed == {0: True, 1: False}, "only the run made in one go times the runs still to make"
    first = json.loads((out / "records" / "tiny" / "dimerec" / "seed-0" / "record.json").read_text())
    assert "resumed_from_step" not in first


def test_a_record_is_written_whole_and_a_broken_one_is_named(grid, finished, tmp_path):
    _, grid_file = grid
    out = copy_of(finished, tmp_path)
    with pytest.raises(RecordError, match="no final.json"):
        write_record(out / "tiny" / "data", tmp_path / "record", {})
    assert not (tmp_path / "record").exists() and not (tmp_path / "record.partial").exists()
    (out / "records" / "tiny" / "comirec_sa" / "seed-1" / "final.json").write_text("{truncated")
    broken = run(grid_file, out, "--report-only")
    assert broken.returncode == 2 and "comirec_sa/seed-1/final.json: not JSON" in broken.stderr


def test_a_grid_with_a_committed_report_keeps_its_records_in_the_repository(tmp_path):
    grid = experiment_grid.load_grid(REPO / "configs" / "experiments" / "ablations.yaml")
    assert experiment_grid.default_records(grid, tmp_path) == REPO / "research" / "results" / "main", "beside main's"
    grid = experiment_grid.load_grid(REPO / "configs" / "experiments" / "main.yaml")
    del grid["report"]
    assert experiment_grid.default_records(grid, tmp_path) == tmp_path / "records"


def test_the_report_names_what_the_grid_asks_and_no_record_has_yet():
    grid = {
        "datasets": {"beauty": {}, "games": {}, "ml100k": {}},
        "seeds": [0, 1, 2, 3, 4],
        "methods": {"dimerec": [], "sasrec": [], "dimerec_dam_only": {"from": "dimerec", "eval": []}},
    }

    def runs(*seeds, minutes=None):
        return [{"seed": s, **({"minutes": minutes} if minutes else {})} for s in seeds]

    table = {
        "beauty": {m: runs(0, 1, 2, 3, 4) for m in grid["methods"]},
        "games": {
            "dimerec": runs(0, 1, 2, 4, minutes=24.0),
            "sasrec": runs(1, minutes=36.0),
            "popularity": runs(0, 1, 2, 4),
        },
    }
    # Games: dimerec 1 x 24 + sasrec 4 x 36 = 168 minutes; dimerec_dam_only has no run to time.
    assert experiment_report.render_missing(grid, table) == (
        "Not recorded yet (seeds 0-4 asked of each method; the time each dataset's list takes is the mean "
        "wall minutes of the method's recorded runs there, resumed runs left out):\n"
        "- games: dimerec 3; sasrec 0, 2-4; dimerec_dam_only every seed "
        "(about 2.8 h, and 5 runs of methods not yet timed here)\n"
        "- ml100k: every method\n"
    )
    table["games"]["dimerec_dam_only"] = runs(0, 1, 2, minutes=0.5)
    assert (
        "- games: dimerec 3; sasrec 0, 2-4; dimerec_dam_only 3-4 (about 2.8 h)\n"
        in experiment_report.render_missing(grid, table)
    )
    table["games"] = table["ml100k"] = table["beauty"]
    assert experiment_report.render_missing(grid, table) == ""


def test_a_re_evaluation_of_the_reference_is_not_its_best_baseline():
    run = lambda hr: {"hr@10": hr}  # noqa: E731
    table = {
        "beauty": {
            "dimerec": [run(0.09), run(0.091)],
            "comirec_sa": [run(0.08), run(0.081)],
            "dimerec_more_steps": [run(0.095), run(0.096)],
        }
    }
    grid = {
        "metrics": ["hr@10"],
        "reference": "dimerec",
        "methods": {"dimerec": [], "comirec_sa": [], "dimerec_more_steps": {"from": "dimerec", "eval": []}},
    }
    assert "HR@10: best baseline comirec_sa: 0.0805; dimerec 0.0905" in experiment_report.render(grid, table)
    grid["purpose"] = "ablation"
    table["beauty"]["popularity"] = [run(0.2), run(0.2)]  # shown beside an ablation, never its variant
    assert "HR@10: best variant comirec_sa: 0.0805" in experiment_report.render(grid, table)


def test_a_variant_asking_what_the_reference_asks_is_shown_but_never_its_best_rival(grid, finished, tmp_path):
    root, grid_file = grid
    out = copy_of(finished, tmp_path)
    # temperature 0.07 is the default: this "variant" is the reference trained again (its runs:
    # dimerec's, copied), level with it and so above comirec_sa on every metric.
    (tmp_path / "grid.yaml").write_text(
        grid_file.read_text().replace("  dimerec: []\n", "  dimerec: []\n  dimerec_again: [model.temperature=0.07]\n")
    )
    for seed in (0, 1):
        shutil.copytree(
            out / "records" / "tiny" / "dimerec" / f"seed-{seed}",
            out / "records" / "tiny" / "dimerec_again" / f"seed-{seed}",
        )
    report = run(tmp_path / "grid.yaml", out, "--report-only")
    assert report.returncode == 0, report.stderr[-3000:]
    assert "| dimerec_again (= dimerec's settings) | 2 |" in report.stdout
    assert "- HR@10: best baseline comirec_sa:" in report.stdout and "best baseline dimerec_again" not in report.stdout


def test_a_curve_is_drawn_over_the_seeds_every_point_has():
    run = lambda seed, hr: {"hr@10": hr, "seed": seed}  # noqa: E731
    methods = {"dimerec": [run(0, 0.090), run(1, 0.095), run(2, 0.080)], "steps_5": [run(0, 0.087)]}
    spec = {"x": [1, 5, 50], "methods": ["dimerec", "steps_5", "steps_50"]}
    assert experiment_plots.curve_points(spec, methods) == [(1, [run(0, 0.090)]), (5, [run(0, 0.087)])]
    methods["steps_5"] = [run(3, 0.087)]
    assert experiment_plots.curve_points(spec, methods) == [], "no seed in common: nothing to draw"


def test_the_bars_are_each_methods_mean_with_its_spread():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = lambda hr, ndcg: {"hr@10": hr, "ndcg@10": ndcg}  # noqa: E731
    methods = {"dimerec": [run(0.09, 0.05), run(0.10, 0.06)], "comirec_sa": [run(0.08, 0.04)]}
    fig, ax = plt.subplots()
    experiment_plots._bars(ax, {"reference": "dimerec"}, methods, ["hr@10", "ndcg@10"])
    # Bars are drawn metric by metric: HR@10 of each method, then NDCG@10 of each.
    assert [round(b.get_height(), 6) for b in ax.patches] == [0.095, 0.08, 0.055, 0.04]
    assert [b.get_linewidth() for b in ax.patches][::2] == [1.2, 1.2], "the reference is outlined"
    plt.close(fig)


def test_a_tuning_grid_names_the_setting_best_on_validation_not_on_test():
    run = lambda valid, hr: {"valid ndcg@10": valid, "hr@10": hr, "ndcg@10": hr / 2}  # noqa: E731
    table = {
        "beauty": {
            "dimerec": [run(0.050, 0.070)],
            "popularity": [{"hr@10": 0.01, "ndcg@10": 0.005}],
            "best_on_test": [run(0.051, 0.090)],
            "best_on_valid": [run(0.060, 0.080)],
        }
    }
    grid = {"metrics": ["hr@10", "ndcg@10"], "reference": "dimerec", "purpose": "tuning"}
    text = experiment_report.render(grid, table)
    assert "Chosen on validation NDCG@10: **best_on_valid** (0.0600); its test: HR@10 0.0800, NDCG@10 0.0400" in text
    assert "Welch" not in text and "best baseline" not in text
    del table["beauty"]["best_on_test"], table["beauty"]["best_on_valid"]
    assert "Chosen" not in experiment_report.render(grid, table), "one setting is not a choice"


def test_a_wrong_grid_key_is_named(grid, tmp_path):
    _, grid_file = grid
    bad = tmp_path / "bad.yaml"
    bad.write_text(grid_file.read_text().replace("reference:", "referense:"))
    done = run(bad, tmp_path / "out")
    assert done.returncode == 2 and "unknown key(s) referense" in done.stderr


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("kind: bars", "kind: bar", "kind must be one of curve, losses, bars"),
        (
            "kind: bars, name: comparison, title: test, metrics: [hr@10, ndcg@10]",
            "kind: bars, name: comparison",
            "plot 'comparison': missing metrics, title",
        ),
        ("methods: [dimerec, comirec_sa]}", "methods: [dimerec, comirec]}", "plot 'losses': method(s) comirec not in"),
        ("x: [1, 5]", "x: [1, 5, 10]", "plot 'steps': 3 x values for 2 methods"),
    ],
)
def test_a_wrong_plot_is_named_before_anything_runs(grid, tmp_path, old, new, message):
    _, grid_file = grid
    bad = tmp_path / "bad.yaml"
    bad.write_text(grid_file.read_text().replace(old, new))
    with pytest.raises(experiment_grid.GridError, match=re.escape(message)):
        experiment_grid.load_grid(bad)


@pytest.mark.parametrize("grid_file", sorted((REPO / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_committed_grid_asks_for_valid_jobs(grid_file, tmp_path):
    """A mistyped override in a grid fails here, not hours into a run."""
    grid = experiment_grid.load_grid(grid_file)
    for dataset, spec in grid["datasets"].items():
        for method in grid["methods"]:
            derived = experiment_grid.evaluation_only(grid, method) or {"from": method, "eval": []}
            overrides = experiment_grid.training_overrides(grid, tmp_path, dataset, derived["from"], grid["seeds"][0])
            # Raises ConfigError naming the key; a re-evaluation's settings go on top of its trained run's.
            load_config(REPO / spec["config"], [*overrides, *derived["eval"]])


@pytest.mark.parametrize("grid_file", sorted((REPO / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_committed_tables_are_what_the_committed_records_say(grid_file, tmp_path):
    """docs/RESULTS.md's live tables are the runner's rendering of research/results/: a record added,
    changed or moved aside without the report written again fails here."""
    grid = experiment_grid.load_grid(grid_file)
    records = experiment_grid.default_records(grid, tmp_path)
    block = re.search(
        rf"<!-- experiments:{grid['name']} -->\n(.*?)<!-- /experiments:{grid['name']} -->",
        (REPO / grid["report"]).read_text(),
        flags=re.S,
    ).group(1)
    text, table = experiment_report.report_text(grid, tmp_path, records)
    if not table:
        assert "No run recorded yet" in block
        return
    assert text.strip() in block
    if grid.get("glance"):
        glance = re.search(
            rf"<!-- experiments:{grid['name']}:glance -->\n(.*?)<!-- /experiments:",
            (REPO / grid["report"]).read_text(),
            flags=re.S,
        ).group(1)
        assert experiment_report.glance_of(grid, tmp_path, table).strip() in glance


def test_a_record_names_the_commit_and_whether_code_outside_docs_changed(tmp_path):
    from research.run_records import code_version

    assert code_version(tmp_path) == {"commit": None, "dirty": None}, "outside git: unknown, not a crash"

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    git("init", "-q")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "RESULTS.md").write_text("tables\n")
    (tmp_path / "train.py").write_text("code\n")
    git("add", "-A")
    git("commit", "-qm", "first")
    head = git("rev-parse", "HEAD").stdout.decode().strip()
    (tmp_path / "docs" / "RESULTS.md").write_text("tables the runner rewrote\n")
    assert code_version(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "train.py").write_text("code changed\n")
    assert code_version(tmp_path) == {"commit": head, "dirty": True}


def test_a_method_override_of_one_data_set_reaches_that_method_there_only(tmp_path):
    """The equal wall-clock grid gives the sequence method each data set's own time budget."""
    grid = experiment_grid.load_grid(REPO / "configs" / "experiments" / "sequence.yaml")
    asked = {
        (dataset, method): experiment_grid.asked_job(grid, tmp_path, dataset, method, 0).train.max_minutes
        for dataset in grid["datasets"]
        for method in grid["methods"]
    }
    assert asked[("ml100k", "dimerec_sequence")] == 10.0 and asked[("games", "dimerec_sequence")] == 19.8
    assert asked[("ml100k", "dimerec")] == asked[("games", "dimerec")] == 0.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (REPO / "configs" / "experiments" / "sequence.yaml").read_text().replace("{dimerec_sequence:", "{dimerec_seq:")
    )
    with pytest.raises(experiment_grid.GridError, match="method_overrides for unknown method"):
        experiment_grid.load_grid(bad)
