"""What a command writes never costs what was there: a synthetic log is not written over, every
numeric option is range-checked when parsed, --overwrite replaces only an output of its own kind,
and two commands started on one new --out do not both write it."""

import ast
import multiprocessing
import threading
from pathlib import Path

import pytest

from dimerec_dist.commands import plan as plan_cli
from dimerec_dist.data import prepare, synth
from dimerec_dist.data.schema import Manifest, read_split
from dimerec_dist.runtime.file_lock import FileLock, LockHeld
from dimerec_dist.serving import export, serve_cli

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--users", "30", "--items", "40", "--events", "400", "--categories", "4"]


def one_line(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_synth_refuses_an_existing_log_and_overwrite_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "log"
    assert synth.main(["--out", str(out), *SMALL, "--users-per-shard", "5"]) == 0
    before = files_of(out)
    assert len(list((out / "events").iterdir())) == 6
    one_line(capsys, synth.main(["--out", str(out), *SMALL]), "is never overwritten", "--overwrite")
    assert files_of(out) == before
    assert synth.main(["--out", str(out), *SMALL, "--users-per-shard", "30", "--overwrite"]) == 0
    assert [p.name for p in (out / "events").iterdir()] == ["part-00000.parquet"]  # no shard of the old log left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]  # no staging, no lock


@pytest.mark.parametrize(
    "command, argv, message",
    [
        (prepare.main, ["--buckets", "-1"], "argument --buckets: -1 is out of range: must be in 0..4096"),
        (prepare.main, ["--row-group-size", "0"], "--row-group-size"),
        (prepare.main, ["--rows-per-shard", "x"], "'x' is not an integer"),
        (synth.main, ["--users", "0"], "--users"),
        (synth.main, ["--items", "1"], "--items"),
        (synth.main, ["--drift", "1.5"], "--drift"),
        (synth.main, ["--mean-session", "nan"], "--mean-session"),
        (synth.main, ["--max-interests", "9", "--categories", "4"], "more than --categories"),
        (export.main, ["--nprobe", "0"], "--nprobe"),
        (export.main, ["--recall", "0"], "--recall"),
        (serve_cli.main, ["--port", "70000"], "--port"),
        (serve_cli.main, ["--max-wait-ms", "-1"], "--max-wait-ms"),
        (plan_cli.main, ["--items", "0"], "--items"),
        (plan_cli.main, ["--hbm-gb", "inf"], "--hbm-gb"),
    ],
)
def test_numeric_options_out_of_range_stop_at_parse_time_writing_nothing(tmp_path, capsys, command, argv, message):
    required = {
        prepare.main: ["--format", "pairs", "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "out")],
        synth.main: ["--out", str(tmp_path / "out")],
        export.main: ["--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")],
        serve_cli.main: [str(tmp_path / "bundle")],
        plan_cli.main: ["--items", "10"],
    }[command]
    (tmp_path / "in.txt").write_text("u a\n")
    with pytest.raises(SystemExit) as stop:
        command(required + argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_no_command_takes_an_unchecked_int_or_float_option():
    """Every add_argument(type=...) in the package is a range-checked type (cli_numbers)."""
    unchecked = []
    for path in sorted((REPO / "dimerec_dist").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                for keyword in node.keywords:
                    if keyword.arg == "type" and isinstance(keyword.value, ast.Name):
                        if keyword.value.id in ("int", "float"):
                            unchecked.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert unchecked == []


def test_synth_options_are_all_range_checked():
    assert set(synth.OPTION_RANGES) == set(synth.asdict(synth.SynthOptions()))


@pytest.fixture
def a_run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run / "checkpoints" / "step-00000010" / "meta.json").write_text("{}")
    (run / "config.yaml").write_text("model: {}\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    return run


def test_prepare_overwrite_refuses_a_run_directory_by_name(tmp_path, a_run_dir, capsys):
    before = files_of(a_run_dir)
    (tmp_path / "in.txt").write_text("u a b c\n")
    argv = ["--format", "sequences", "--input", str(tmp_path / "in.txt"), "--out", str(a_run_dir), "--overwrite"]
    one_line(capsys, prepare.main(argv), "is a run directory (it holds config.yaml), not a prepared dataset")
    assert files_of(a_run_dir) == before


def test_prepare_overwrite_refuses_a_folder_of_other_files(tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "in.txt").write_text("u a b c\n")
    argv = ["--format", "sequences", "--input", str(tmp_path / "in.txt"), "--out", str(other), "--overwrite"]
    one_line(capsys, prepare.main(argv), "is a directory of other files, not a prepared dataset")
    assert files_of(other) == {"a.jpg": b"\xff\xd8"}


def test_export_overwrite_refuses_the_run_directory_itself(tmp_path, a_run_dir, capsys):
    before = files_of(a_run_dir)
    argv = ["--run-dir", str(a_run_dir), "--out", str(a_run_dir), "--overwrite"]
    one_line(capsys, export.main(argv), "is a run directory (it holds config.yaml), not a serving bundle")
    assert files_of(a_run_dir) == before


def test_export_overwrite_refuses_a_dataset(tiny_dataset, a_run_dir, capsys):
    before = files_of(tiny_dataset)
    argv = ["--run-dir", str(a_run_dir), "--out", str(tiny_dataset), "--overwrite"]
    one_line(capsys, export.main(argv), "is a prepared dataset (it holds manifest.json), not a serving bundle")
    assert files_of(tiny_dataset) == before


def test_synth_overwrite_refuses_a_dataset(tiny_dataset, capsys):
    before = files_of(tiny_dataset)
    one_line(
        capsys,
        synth.main(["--out", str(tiny_dataset), *SMALL, "--overwrite"]),
        "is a prepared dataset (it holds manifest.json), not a synthetic log",
    )
    assert files_of(tiny_dataset) == before


def _prepare_held_at_start(source: str, out: str, started, release) -> None:
    """A dimerec-prepare that holds --out and waits (as a long prepare would) before it writes."""
    original = prepare.begin

    def slow_begin(target):
        started.set()
        release.wait(30)
        return original(target)

    prepare.begin = slow_begin
    raise SystemExit(prepare.main(["--format", "sequences", "--input", source, "--out", out]))


def test_two_prepares_racing_to_one_new_out_one_writes_it_the_other_says_so(tmp_path, capsys):
    first_input, second_input, out = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "data"
    first_input.write_text("first x y z\n")
    second_input.write_text("second x y z\n")
    context = multiprocessing.get_context("spawn")
    started, release = context.Event(), context.Event()
    first = context.Process(target=_prepare_held_at_start, args=(str(first_input), str(out), started, release))
    first.start()
    try:
        assert started.wait(60)
        code = prepare.main(["--format", "sequences", "--input", str(second_input), "--out", str(out)])
        one_line(capsys, code, f"{out} is being written by dimerec-prepare (pid {first.pid} on")
    finally:
        release.set()
        first.join(60)
    assert first.exitcode == 0
    assert [row["raw_user"] for row in read_split(Manifest.load(out), "train").to_pylist()] == ["first"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "data"]


def _hold_lock_forever(path: str, held) -> None:
    FileLock(Path(path), "the killed job").acquire()
    held.set()
    threading.Event().wait(120)


def test_a_lock_names_its_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    path = tmp_path / ".lock"
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    holder = context.Process(target=_hold_lock_forever, args=(str(path), held))
    holder.start()
    assert held.wait(60)
    with pytest.raises(LockHeld, match="the killed job"):
        FileLock(path, "job B").acquire()
    holder.kill()
    holder.join(30)
    with FileLock(path, "job B"):  # the kernel let go with the process: nothing to clean up
        assert path.read_text().strip() == "job B"
    assert not path.exists()
