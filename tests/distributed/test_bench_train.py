"""tools/bench_train.py: every cell trains the same batches to the same losses (the sharded
trainer and the replicated baseline, 1 and 2 ranks), and the report holds what it promises."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.distributed.conftest import REPO, two_at_a_time

GRIDS = {  # the tool's three grids, small: each trains a few steps of real cells
    "catalogs": ["--catalogs", "500", "1000000000000", "--worlds", "1", "2", "--layouts", "row_wise", "replicated"]
    + ["--steps", "3", "--warmup", "1", "--batch", "32", "--repeats", "1", "--devices", "cpu", "cuda"],
    "sequence": ["--sequence-modes", "--histories", "12", "--sequence-batches", "32", "--catalogs", "300"]
    + ["--steps", "2", "--warmup", "1", "--repeats", "1"],
    # 2 ranks: tests/distributed/test_pipelined_step.py proves the same equality there
    "steps": ["--compare-steps", "--catalogs", "500", "--worlds", "1", "--precisions", "fp32", "bf16"]
    + ["--batch", "32", "--steps", "3", "--warmup", "1", "--repeats", "1"],
}


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """Each grid's output directory, the tool run once per grid (two at a time)."""
    root = tmp_path_factory.mktemp("bench_train")

    def run(name):
        command = [sys.executable, "tools/bench_train.py", "--out", str(root / name), *GRIDS[name]]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        return root / name, done

    return dict(zip(GRIDS, two_at_a_time(run, GRIDS)))


def grid(grids, name):
    out, done = grids[name]
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def report(grids):
    out = grid(grids, "catalogs")
    return out, json.loads((out / "results.json").read_text()), grids["catalogs"][1].stdout


def test_the_replicated_baseline_and_the_sharded_trainer_train_to_the_same_losses(report):
    _, results, _ = report
    cells = {(r["layout"], r["world"]): r for r in results if r["items"] == 500 and r["device"] == "cpu"}
    assert set(cells) == {("row_wise", 1), ("row_wise", 2), ("replicated", 1), ("replicated", 2)}
    reference = cells[("row_wise", 1)]["losses"]
    assert len(reference) == 4
    for cell in cells.values():
        assert cell["losses"] == pytest.approx(reference, rel=1e-5)
        assert cell["samples_per_s"] > 0 and all(rss > 0 for rss in cell["peak_rss_bytes"])
    # 501 rows of 64 floats plus one Adagrad float per row, split over the ranks or not.
    assert cells[("replicated", 2)]["table_bytes"] == [501 * 65 * 4] * 2
    assert sum(cells[("row_wise", 2)]["table_bytes"]) == 501 * 65 * 4


def test_a_catalog_that_cannot_fit_is_reported_not_started(report):
    out, results, stdout = report
    skipped = [r for r in results if r["items"] == 1_000_000_000_000]
    assert len(skipped) == 8
    assert all("GiB available" in r["skipped"] for r in skipped if r["device"] == "cpu")
    assert "cannot run" in (out / "results.md").read_text()


def test_the_report_has_its_ratios_and_plots(report):
    out, _, _ = report
    text = (out / "results.md").read_text()
    assert "row_wise / replicated, world 1, 500 items, cpu: samples/s x" in text
    assert "max relative difference" in text
    for name in ("bench_train_throughput.png", "bench_train_memory.png"):
        assert (out / name).stat().st_size > 10_000


def test_gpu_cells_run_where_there_is_a_gpu_and_are_reported_not_started_elsewhere(report):
    _, results, _ = report
    cells = {(r["layout"], r["world"]): r for r in results if r["items"] == 500 and r["device"] == "cuda"}
    if shutil.which("nvidia-smi") is None:  # CI: said plainly, nothing started
        assert all("GPU(s), 0 visible" in cell["skipped"] for cell in cells.values()) and len(cells) == 4
        return
    # One card: the sharded trainer's single-rank cell trains (NCCL, FBGEMM's CUDA kernels) to the
    # CPU's losses; the replicated baseline is said not to run there (no sparse all-reduce in NCCL).
    reference = next(
        r for r in results if (r["device"], r["layout"], r["world"], r["items"]) == ("cpu", "row_wise", 1, 500)
    )
    assert cells[("row_wise", 1)]["losses"] == pytest.approx(reference["losses"], rel=1e-4)
    assert max(cells[("row_wise", 1)]["peak_device_bytes"]) > 0
    assert "NCCL has no sparse all-reduce" in cells[("replicated", 1)]["skipped"]


def test_the_sequence_grid_trains_the_same_model_to_the_same_losses_in_both_modes(grids):
    """--sequence-modes: per-prefix and sequence mode on the same targets and weights (score-bias
    positions) lose the same at every step, and sequence mode looks up fewer ids per target."""
    out = grid(grids, "sequence")
    cells = {(r["mode"], r["positions"]): r for r in json.loads((out / "sequence.json").read_text())}
    assert set(cells) == {("per_prefix", "input"), ("per_prefix", "bias"), ("sequence", "bias")}
    per_prefix, sequence = cells[("per_prefix", "bias")], cells[("sequence", "bias")]
    assert len(sequence["losses"]) == 3
    assert sequence["losses"] == pytest.approx(per_prefix["losses"], rel=1e-5)
    assert sequence["ids_per_target"] < per_prefix["ids_per_target"] / 3
    assert len(sequence["targets_per_s_runs"]) == 1
    assert "| 32 | 12 | sequence | bias |" in (out / "sequence.md").read_text()
    assert (out / "bench_sequence_throughput.png").stat().st_size > 0


def test_the_step_grid_trains_plain_and_pipelined_to_the_same_losses_and_reports_host_time(grids):
    """--compare-steps: the plain step (batches made on the training thread, losses read every step)
    and the pipelined one (a prefetch thread, TorchRec's pipeline, one read at the end) train to the
    same losses; bf16 stays within 1e-2 relative of fp32 over these steps."""
    out = grid(grids, "steps")
    cells = {(r["world"], r["precision"], r["step"]): r for r in json.loads((out / "steps.json").read_text())}
    assert len(cells) == 4
    for (world, precision, step), cell in cells.items():
        plain = cells[world, precision, "plain"]
        assert len(cell["losses"]) == 4
        assert cell["losses"] == pytest.approx(plain["losses"], rel=1e-6)
        assert cell["losses"] == pytest.approx(cells[world, "fp32", step]["losses"], rel=1e-2)
        assert cell["ms_per_step"] > 0 and (cell["read_ms_per_step"] > 0) == (step == "plain")
    assert cells[1, "bf16", "plain"]["losses"] != cells[1, "fp32", "plain"]["losses"], "bf16 really ran"
    text = (out / "steps.md").read_text()
    assert "pipelined / plain, cpu, 500 items, batch 32, world 1, fp32: samples/s x" in text
    assert "bf16 / fp32, cpu, 500 items, batch 32, world 1, pipelined: samples/s x" in text


def test_a_crashed_cell_is_reported_and_the_grid_goes_on(tmp_path, monkeypatch):
    """One cell's job dying (a gloo segfault once took a 2-rank replicated cell) costs that run of
    the cell, not the grid: the other cells are measured, a later repeat of the cell still counts,
    and a cell that failed on every run is named in the report with its kept output."""
    sys.path.insert(0, str(REPO))
    bench_train = pytest.importorskip("tools.bench_train")
    crashes = {("replicated", 2, 1), ("row_wise", 2, 1), ("row_wise", 2, 2)}  # (layout, world, run of the cell)
    runs: dict[tuple, int] = {}

    def cell_job(args, world, cell_args, items, result_file):
        layout = cell_args[cell_args.index("--layout") + 1]
        runs[layout, world] = runs.get((layout, world), 0) + 1
        if (layout, world, runs[layout, world]) in crashes:
            log = result_file.with_suffix(".failed.log")
            log.write_text("Segmentation fault")
            raise bench_train.CellFailed("exit status -11", log)
        loss = [1.0, 0.5]
        result_file.write_text(
            json.dumps(
                {"device": "cpu", "layout": layout, "world": world, "items": items, "losses": loss}
                | {"samples_per_s": 100.0 * world, "peak_rss_bytes": [2**30] * world}
                | {"peak_device_bytes": [0] * world, "table_bytes": [items * 260] * world}
            )
        )
        return result_file

    monkeypatch.setattr(bench_train, "run_cell_job", cell_job)
    args = bench_train.argparse.Namespace(
        out=str(tmp_path), devices=["cpu"], catalogs=[500], worlds=[1, 2], layouts=["row_wise", "replicated"], repeats=2
    )
    results = bench_train.run_grid(args, gpus=[])
    cells = {(r["layout"], r["world"]): r for r in results}
    assert cells["row_wise", 1]["samples_per_s_runs"] == [100.0, 100.0] and "failed" not in cells["row_wise", 1]
    assert cells["replicated", 2]["samples_per_s_runs"] == [200.0]  # the repeat measured it
    assert cells["replicated", 2]["failed"] == [str(tmp_path / "cell-cpu-replicated-w2-500.failed.log")]
    assert "samples_per_s" not in cells["row_wise", 2] and len(cells["row_wise", 2]["failed"]) == 2
    bench_train.write_report(results, tmp_path, "test machine")
    assert "| cpu | row_wise | 2 | 500 | failed, every run: " in (tmp_path / "results.md").read_text()
    assert "replicated, world 2, 500 items, cpu: 1 run(s) failed" in (tmp_path / "results.md").read_text()
