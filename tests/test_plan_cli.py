"""dimerec-plan: TorchRec's planner for a cluster described on the command line, on a machine
with no GPU (tables on the meta device, nothing allocated)."""

import re

import pytest

from dimerec_dist.commands.plan import main

BILLION = ["--items", "1000000000", "--dim", "128", "--optimizer", "rowwise_adagrad"]
ROW_BYTES = 128 * 4 + 4  # fp32 row + one row-wise Adagrad accumulator


def ranks(output: str) -> dict[int, tuple[float, float, float]]:
    """rank -> (HBM GB, host GB, planner's ms) from the report's table."""
    rows = re.findall(r"^\s*(\d+) \|\s*([\d.]+) \|\s*([\d.]+) \| ([\d.]+)$", output, re.MULTILINE)
    return {int(r): (float(h), float(d), float(p)) for r, h, d, p in rows}


def test_a_billion_items_row_wise_on_8_nodes_of_8_gpus_of_80_gb(capsys):
    args = ["--nodes", "8", "--gpus-per-node", "8", "--hbm-gb", "80", *BILLION, "--batch-size", "262144"]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = ranks(out)
    assert sorted(table) == list(range(64))
    by_hand = (10**9 + 1) * ROW_BYTES / 64 / 1e9  # 8.06 GB a rank
    for hbm, host, perf in table.values():
        assert hbm == pytest.approx(by_hand, rel=0.05) and host == 0 and perf > 0
    assert "| fused " in out and "8 node(s) x 8 rank(s) (cuda), 80 GB HBM" in out
    assert "4,096 samples per rank" in out


def test_a_billion_items_on_one_node_of_8_gpus_with_uvm_caching(capsys):
    args = ["--nodes", "1", "--gpus-per-node", "8", "--hbm-gb", "80", *BILLION, "--kernel", "fused_uvm_caching"]
    assert main([*args, "--cache-load-factor", "0.1", "--batch-size", "32768"]) == 0
    out = capsys.readouterr().out
    table = ranks(out)
    assert sorted(table) == list(range(8)) and "fused_uvm_caching" in out
    whole = (10**9 + 1) * ROW_BYTES / 8 / 1e9  # 64.5 GB a rank: in host memory, the hot tenth cached in HBM
    for hbm, host, _ in table.values():
        assert host == pytest.approx(whole, rel=0.05)
        assert 0.05 * whole < hbm < 0.2 * whole


def test_a_table_that_cannot_fit_is_one_line_saying_so(capsys):
    args = ["--nodes", "1", "--gpus-per-node", "2", "--hbm-gb", "80", *BILLION, "--kernel", "fused"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dimerec-plan: error: no plan fits 1,000,000,000 items x d 128")
    assert "fused_uvm_caching" in err[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cpu", "--kernel", "fused_uvm", "--items", "1000"], "needs GPUs"),
        (["--nodes", "0", "--items", "1000"], "argument --nodes: 0 is out of range: must be at least 1"),
        (["--items", "1000", "--batch-size", "100"], "does not split evenly over 8 ranks"),
        (["--items", "1000", "sharding.kernal=fused"], "sharding.kernal"),
    ],
)
def test_bad_requests_are_one_line_errors(capsys, args, message):
    try:
        code = main(args)
    except SystemExit as stop:  # out of range when parsed: argparse's usage error
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_host_memory_is_per_rank_as_the_jobs_sharding_host_memory_gb():
    """64.5 GB of table a rank in host memory: 70 GB a rank holds it, 60 does not (per node, 70 is 8.75 a rank)."""
    args = ["--nodes", "1", "--gpus-per-node", "8", "--hbm-gb", "80", *BILLION, "--kernel", "fused_uvm_caching"]
    args += ["--cache-load-factor", "0.1", "--batch-size", "32768"]
    assert main([*args, "--host-memory-gb", "70"]) == 0
    assert main([*args, "--host-memory-gb", "60"]) == 2


def test_help_shows_every_default_and_the_examples_as_written(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--dim 128 \\\n        --kernel fused_uvm_caching" in out  # the continued example keeps its line break
    assert "machines (default: 1)" in out and "(default: 80.0)" in out and "(default: 125.0)" in out
