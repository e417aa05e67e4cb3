"""tools/bench_train.py: every cell trains the same batches to the same losses (the sharded
trainer and the replicated baseline, 1 and 2 ranks), and the report holds what it promises."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.distributed.conftest import REPO


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_train")
    command = [
        sys.executable,
        "tools/bench_train.py",
        "--out",
        str(out),
        "--catalogs",
        "500",
        "1000000000000",
        "--worlds",
        "1",
        "2",
        "--layouts",
        "row_wise",
        "replicated",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--batch",
        "32",
        "--repeats",
        "1",
        "--devices",
        "cpu",
        "cuda",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text()), done.stdout


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


def test_the_sequence_grid_trains_the_same_model_to_the_same_losses_in_both_modes(tmp_path):
    """--sequence-modes: per-prefix and sequence mode on the same targets and weights (score-bias
    positions) lose the same at every step, and sequence mode looks up fewer ids per target."""
    command = [
        sys.executable,
        "tools/bench_train.py",
        "--out",
        str(tmp_path),
        "--sequence-modes",
        "--histories",
        "12",
        "--sequence-batches",
        "32",
        "--catalogs",
        "300",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    cells = {(r["mode"], r["positions"]): r for r in json.loads((tmp_path / "sequence.json").read_text())}
    assert set(cells) == {("per_prefix", "input"), ("per_prefix", "bias"), ("sequence", "bias")}
    per_prefix, sequence = cells[("per_prefix", "bias")], cells[("sequence", "bias")]
    assert len(sequence["losses"]) == 3
    assert sequence["losses"] == pytest.approx(per_prefix["losses"], rel=1e-5)
    assert sequence["ids_per_target"] < per_prefix["ids_per_target"] / 3
    assert len(sequence["targets_per_s_runs"]) == 1
    assert "| 32 | 12 | sequence | bias |" in (tmp_path / "sequence.md").read_text()
    assert (tmp_path / "bench_sequence_throughput.png").stat().st_size > 0


def test_the_step_grid_trains_plain_and_pipelined_to_the_same_losses_and_reports_host_time(tmp_path):
    """--compare-steps: the plain step (batches made on the training thread, losses read every step)
    and the pipelined one (a prefetch thread, TorchRec's pipeline, one read at the end) train to the
    same losses; bf16 stays within 1e-2 relative of fp32 over these steps."""
    command = [
        sys.executable,
        "tools/bench_train.py",
        "--out",
        str(tmp_path),
        "--compare-steps",
        "--catalogs",
        "500",
        "--worlds",
        "1",  # 2 ranks: tests/distributed/test_pipelined_step.py proves the same equality there
        "--precisions",
        "fp32",
        "bf16",
        "--batch",
        "32",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--repeats",
        "1",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    cells = {(r["world"], r["precision"], r["step"]): r for r in json.loads((tmp_path / "steps.json").read_text())}
    assert len(cells) == 4
    for (world, precision, step), cell in cells.items():
        plain = cells[world, precision, "plain"]
        assert len(cell["losses"]) == 4
        assert cell["losses"] == pytest.approx(plain["losses"], rel=1e-6)
        assert cell["losses"] == pytest.approx(cells[world, "fp32", step]["losses"], rel=1e-2)
        assert cell["ms_per_step"] > 0 and (cell["read_ms_per_step"] > 0) == (step == "plain")
    assert cells[1, "bf16", "plain"]["losses"] != cells[1, "fp32", "plain"]["losses"], "bf16 really ran"
    text = (tmp_path / "steps.md").read_text()
    assert "pipelined / plain, cpu, 500 items, batch 32, world 1, fp32: samples/s x" in text
    assert "bf16 / fp32, cpu, 500 items, batch 32, world 1, pipelined: samples/s x" in text
