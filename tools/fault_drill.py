"""The fault drill: kill, corrupt and signal a tiny 2-rank run, and show that nothing is lost.

    tools/fault_drill.sh [--out runs/fault_drill] [--seed 0]

One uninterrupted run is the reference. Each case then does one harmful thing to a copy
of the same job, finishes the job the way a person would (launch it again), and compares:
a training case must end with the reference's final metrics exactly (bitwise on this CPU
path) and its losses step for step; a case that cannot go on must end with one line of
error and every file it was pointed at unchanged. The table goes to OUT/table.md (and
the console); docs/FAULTS.md holds the one from the last run on the project's machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the restart tests' job settings and read-only helper live in tests/

from tests.distributed.conftest import TINY_JOB  # noqa: E402
from tests.full_disk import small_disk  # noqa: E402
from tests.read_only import read_only_directory  # noqa: E402

STEPS = 60
JOB = [
    *TINY_JOB,  # the restart tests' tiny model, and the drill's schedule
    "train.eval_every_epochs=0",
    f"train.max_steps={STEPS}",
    "train.checkpoint_every=10",
    "train.keep_checkpoints=2",
]
STEP_DELAY_S = "0.15"  # slow steps down, so a signal or a kill lands mid-run


@dataclass
class Row:
    case: str
    done: str
    exits: str
    outcome: str
    nothing_lost: bool


def bin_path(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def torchrun_command(
    run_dir: Path, dataset: Path, *extra: str, restarts: int = 0, slow: bool = False, fault: tuple[str, ...] = ()
) -> list[str]:
    """The drill's job under dimerec-torchrun; `slow` runs it through tools/faulty_train.py with a
    delay in every step, so a signal or a kill lands mid-run; `fault`: faulty_train's other faults."""
    trainer = (
        [str(REPO / "tools" / "faulty_train.py"), *(["--step-delay", STEP_DELAY_S] if slow else []), *fault]
        if slow or fault
        else ["-m", "dimerec_dist.commands.train"]
    )
    return [
        bin_path("dimerec-torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        f"--max-restarts={restarts}",
        *trainer,
        "--run-dir",
        str(run_dir),
        "data.source=prepared",
        f"data.path={dataset}",
        *JOB,
        *extra,
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((json.loads(line)["step"] for line in path.read_text().splitlines() if "loss/total" in line), default=0)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss/total"] for row in rows if "loss/total" in row}


def final(run_dir: Path) -> dict | None:
    path = run_dir / "final.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    result.pop("latency")  # a timing, not a result
    return result


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)


def workers_of(agent: subprocess.Popen) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def error_line(stderr: str) -> str:
    """The one error line (every rank of a job may print the same one), or '' if there is none,
    more than one, or a traceback."""
    lines = {line for line in stderr.splitlines() if ": error: " in line}
    return lines.pop() if len(lines) == 1 and "Traceback" not in stderr else ""


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


class Drill:
    def __init__(self, out: Path, seed: int):
        self.out, self.random = out, random.Random(seed)
        self.rows: list[Row] = []
        self.started = time.time()

    def log(self, message: str) -> None:
        print(f"[{time.time() - self.started:6.0f}s] {message}", flush=True)

    def matches_reference(self, run_dir: Path) -> bool:
        return final(run_dir) == final(self.reference) and losses(run_dir) == losses(self.reference)

    def finish(self, run_dir: Path) -> subprocess.CompletedProcess:
        """Launch the job again, as a person would after the fault."""
        return run(torchrun_command(run_dir, self.dataset))

    def training_row(self, case: str, done: str, run_dir: Path, exits: list[int]) -> None:
        same = self.matches_reference(run_dir)
        outcome = (
            "final metrics and every step's loss equal the reference"
            if same
            else f"DIFFERS from the reference (final: {final(run_dir)})"
        )
        self.rows.append(Row(case, done, ", ".join(map(str, exits)), outcome, same))
        self.log(f"{case}: {outcome}")

    def error_row(self, case: str, done: str, completed: subprocess.CompletedProcess, untouched: bool) -> None:
        line = error_line(completed.stderr)
        ok = completed.returncode == 2 and bool(line) and untouched
        outcome = f"one line: `{line.split(': error: ', 1)[-1]}`" if line else "NO one-line error"
        if not untouched:
            outcome += "; FILES CHANGED"
        self.rows.append(Row(case, done, str(completed.returncode), outcome, ok))
        self.log(f"{case}: {outcome}")

    # ------------------------------------------------------------------ the cases

    def prepare(self) -> None:
        from dimerec_dist.data.prepare import PrepareOptions, prepare
        from dimerec_dist.data.synth import SynthOptions, synthesize

        if self.out.exists():
            shutil.rmtree(self.out)
        raw = self.out / "raw"
        synthesize(raw, SynthOptions(users=400, items=300, events=8000, categories=12, seed=1))
        self.dataset = self.out / "data"
        prepare(PrepareOptions(format="events", input=raw / "events", out=self.dataset))
        self.reference = self.out / "reference"
        done = run(torchrun_command(self.reference, self.dataset))
        if done.returncode != 0:
            raise SystemExit(f"the reference run failed:\n{done.stderr[-3000:]}")
        self.log(f"reference: {STEPS} steps on 2 ranks, test {final(self.reference)['test']}")

    def sigkill_random_ranks(self, kills: int = 3) -> None:
        """SIGKILL one random rank at a random step, `kills` times; torchrun restarts each time."""
        run_dir = self.out / "sigkill"
        agent = subprocess.Popen(
            torchrun_command(run_dir, self.dataset, restarts=kills, slow=True),
            cwd=REPO,
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        targets = sorted(self.random.sample(range(12, STEPS - 5), kills))
        done = []
        for target in targets:
            while steps_logged(run_dir) < target and agent.poll() is None:
                time.sleep(0.05)
            workers = workers_of(agent)
            if workers:
                os.kill(self.random.choice(workers), signal.SIGKILL)
                done.append(target)
            time.sleep(3)  # let torchrun notice and restart before the next kill is aimed
        _, stderr = agent.communicate(timeout=600)
        self.training_row(
            f"SIGKILL a random rank, {kills} times",
            f"killed at steps ~{done}, torchrun --max-restarts={kills} restarted",
            run_dir,
            [agent.returncode],
        )

    def kill_during_save(self) -> None:
        """Asynchronous saves stay `step-N.tmp` until the next save commits them: kill a rank then."""
        run_dir = self.out / "kill-during-save"
        command = torchrun_command(run_dir, self.dataset, "train.checkpoint_async=true", slow=True)
        agent = subprocess.Popen(
            command, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        staging = run_dir / "checkpoints" / "step-00000030.tmp"
        while not (staging.exists() and steps_logged(run_dir) >= 32) and agent.poll() is None:
            time.sleep(0.02)
        os.kill(workers_of(agent)[0], signal.SIGKILL)
        agent.communicate(timeout=600)
        left = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        again = self.finish(run_dir)
        self.training_row(
            "SIGKILL during a checkpoint save",
            f"killed rank 0 while {staging.name} was being written (left: {', '.join(left)}), launched again",
            run_dir,
            [agent.returncode, again.returncode],
        )

    def stop_with_sigterm(self, run_dir: Path, at_step: int, target: str) -> tuple[int, str]:
        agent = subprocess.Popen(
            torchrun_command(run_dir, self.dataset, restarts=2, slow=True),
            cwd=REPO,
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        while steps_logged(run_dir) < at_step and agent.poll() is None:
            time.sleep(0.05)
        os.kill(agent.pid if target == "agent" else workers_of(agent)[-1], signal.SIGTERM)
        _, stderr = agent.communicate(timeout=600)
        return agent.returncode, stderr

    def sigterm(self, target: str) -> None:
        """A preemption: SIGTERM to torchrun's agent, or to one worker, under dimerec-torchrun."""
        run_dir = self.out / f"sigterm-{target}"
        code, stderr = self.stop_with_sigterm(run_dir, 25, target)
        stopped_at, restarted = steps_logged(run_dir), "resumed from" in stderr
        saves = stderr.count(f"step-{stopped_at:08d} written")
        again = self.finish(run_dir)
        self.training_row(
            f"SIGTERM to the {target}",
            f"stopped at step {stopped_at}, {saves} save there, "
            f"{'RESTARTED' if restarted else 'no restart'}; launched again",
            run_dir,
            [code, again.returncode],
        )
        if code != 143 or restarted or saves != 1:
            self.rows[-1].nothing_lost = False

    def corrupt_newest_checkpoint(self, how: str) -> None:
        """Stopped at ~step 45 (checkpoints 40 and 45), the newest damaged: resume falls back to 40."""
        run_dir = self.out / f"corrupt-{how.replace(' ', '-')}"
        code, _ = self.stop_with_sigterm(run_dir, 45, "agent")
        newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
        if how == "truncated shard":
            shard = sorted(newest.glob("__1_*.distcp"))[0]
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        else:
            (newest / ".metadata").write_bytes((newest / ".metadata").read_bytes()[:64])
        again = self.finish(run_dir)
        skipped = f"not resuming from {newest}" in again.stderr
        self.training_row(
            f"corrupt newest checkpoint ({how})",
            f"{newest.name} damaged after a stop; launched again, {'skipped it' if skipped else 'DID NOT SKIP IT'}",
            run_dir,
            [code, again.returncode],
        )
        self.rows[-1].nothing_lost &= skipped

    def corrupt_bundle(self) -> None:
        bundle = self.out / "bundle"
        exported = run([bin_path("dimerec-export"), "--run-dir", str(self.reference), "--out", str(bundle)])
        if exported.returncode != 0:
            raise SystemExit(f"export failed:\n{exported.stderr[-3000:]}")
        part = sorted((bundle / "items").glob("part-*.npy"))[-1]
        data = bytearray(part.read_bytes())
        data[-7] ^= 0x01
        part.write_bytes(bytes(data))
        before = tree_digest(bundle)
        served = run([bin_path("dimerec-serve"), str(bundle), "--port", "0"])
        self.error_row(
            "corrupt bundle",
            f"one bit flipped in {part.name}, dimerec-serve started",
            served,
            tree_digest(bundle) == before,
        )

    def read_only(self, what: str) -> None:
        """A read-only run directory, checkpoint directory, or prepare output's parent."""
        run_dir = self.out / f"read-only-{what.replace(' ', '-')}"
        target = run_dir / "checkpoints" if what == "checkpoint dir" else run_dir
        target.mkdir(parents=True)
        with read_only_directory(target) as how:
            before = tree_digest(target)
            if what == "prepare output":
                done = run(self.prepare_command(target / "data"))
            else:
                done = run(torchrun_command(run_dir, self.dataset))
            self.error_row(
                f"read-only {what}",
                f"{target.relative_to(self.out)} made read-only ({how}), then the command run",
                done,
                tree_digest(target) == before,
            )

    def prepare_command(self, out: Path, *extra: str) -> list[str]:
        """dimerec-prepare of the drill's raw log into `out`."""
        return [
            bin_path("dimerec-prepare"),
            "--format",
            "events",
            "--input",
            str(self.out / "raw" / "events"),
            "--out",
            str(out),
            *extra,
        ]

    def existing_dataset(self) -> None:
        before = tree_digest(self.dataset)
        done = run(self.prepare_command(self.dataset, "--kcore", "3"))
        self.error_row(
            "prepare onto an existing dataset",
            "dimerec-prepare --out <the drill's dataset>",
            done,
            tree_digest(self.dataset) == before,
        )

    def full_disk_during_save(self) -> None:
        """The run directory on a small disk that fills at step 35: the save at step 40 meets it."""
        with small_disk(self.out / "full-disk", 8192) as disk:
            run_dir = disk / "run"
            first = run(torchrun_command(run_dir, self.dataset, fault=("--fill-disk-at-step", "35")))
            line = error_line(first.stderr)
            left = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
            (run_dir / "disk-filler").unlink()
            again = self.finish(run_dir)
            self.training_row(
                "disk full during training",
                f"the run directory's disk filled at step 35; one line: `{line.split(': error: ', 1)[-1]}` "
                f"(left: {', '.join(left)}); space freed, launched again",
                run_dir,
                [first.returncode, again.returncode],
            )
        self.rows[-1].nothing_lost &= (
            first.returncode == 2 and bool(line) and left == ["step-00000020", "step-00000030"]
        )

    def two_jobs_on_one_run_dir(self) -> None:
        """A second job started on a run directory a running job holds."""
        run_dir = self.out / "two-jobs"
        agent = subprocess.Popen(
            torchrun_command(run_dir, self.dataset, slow=True),
            cwd=REPO,
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        while steps_logged(run_dir) < 10 and agent.poll() is None:
            time.sleep(0.05)
        config = (run_dir / "config.yaml").read_bytes()
        second = run(torchrun_command(run_dir, self.dataset))
        line = error_line(second.stderr)
        untouched = (run_dir / "config.yaml").read_bytes() == config
        agent.communicate(timeout=600)
        self.training_row(
            "two jobs on one run directory",
            f"a second job started at step ~10 of the first; one line: `{line.split(': error: ', 1)[-1]}`; "
            "the first ran on",
            run_dir,
            [second.returncode, agent.returncode],
        )
        self.rows[-1].nothing_lost &= second.returncode == 2 and bool(line) and untouched

    def skewed_plan(self) -> None:
        """One user with 100,000 events among the drill's 400: a 2-rank job's steps per epoch against one rank's."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        raw = self.out / "skewed-raw"
        raw.mkdir()
        shutil.copytree(self.out / "raw" / "events", raw / "events")
        whale = 100_000
        pq.write_table(
            pa.table(
                {
                    "user": pa.array([10**6] * whale, pa.int64()),
                    "item": pa.array([i % 300 for i in range(whale)], pa.int64()),
                    "time": pa.array(range(whale), pa.int64()),
                    "watch_ratio": pa.array([0.5] * whale, pa.float32()),
                }
            ),
            raw / "events" / "part-whale.parquet",
        )
        dataset = self.out / "skewed-data"
        run(self.prepare_command(dataset)[:4] + [str(raw / "events"), "--out", str(dataset)])
        plans = {}
        for ranks in (1, 2):
            command = torchrun_command(self.out / f"skewed-{ranks}", dataset, "train.max_steps=1", "eval.at_end=false")
            command[command.index("--nproc_per_node=2")] = f"--nproc_per_node={ranks}"
            command = [c for c in command if c != "data.streams=2"]
            done = run(command)
            planned = [line for line in done.stderr.splitlines() if "steps/epoch" in line]
            plans[ranks] = int(planned[0].split("~")[1].split()[0]) if planned else 0
        ok = plans[2] >= 0.95 * plans[1] > 0
        outcome = f"{plans[2]} steps/epoch on 2 ranks, {plans[1]} on one ({100 * plans[2] / max(plans[1], 1):.0f}%)"
        self.rows.append(
            Row("skewed plan", f"one user with {whale:,} events among 400, 2 ranks against 1", "0, 0", outcome, ok)
        )
        self.log(f"skewed plan: {outcome}")

    def table(self) -> str:
        """The rows as markdown, with the drill's own directory written as OUT."""
        lines = ["| case | what was done | exit codes | outcome | nothing lost |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.case} | {r.done} | {r.exits} | {r.outcome} | {'yes' if r.nothing_lost else '**NO**'} |"
            for r in self.rows
        ]
        kept = sum(row.nothing_lost for row in self.rows)
        lines.append(f"\n{len(self.rows)} cases, nothing lost in {kept}; {time.time() - self.started:.0f} s.")
        return "\n".join(lines).replace(str(self.out), "OUT") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "fault_drill")
    parser.add_argument("--seed", type=int, default=0, help="chooses the ranks and steps of the random kills")
    args = parser.parse_args()
    drill = Drill(args.out, args.seed)
    drill.prepare()
    cases = [
        drill.sigkill_random_ranks,
        drill.kill_during_save,
        lambda: drill.sigterm("agent"),
        lambda: drill.sigterm("worker"),
        lambda: drill.corrupt_newest_checkpoint("truncated shard"),
        lambda: drill.corrupt_newest_checkpoint("truncated metadata"),
        drill.corrupt_bundle,
        lambda: drill.read_only("run dir"),
        lambda: drill.read_only("checkpoint dir"),
        lambda: drill.read_only("prepare output"),
        drill.existing_dataset,
        drill.full_disk_during_save,
        drill.two_jobs_on_one_run_dir,
        drill.skewed_plan,
    ]
    for number, case in enumerate(cases, start=1):
        drill.log(f"case {number}/{len(cases)}")
        case()
    table = drill.table()
    (args.out / "table.md").write_text(table)
    print(table)
    return 0 if all(row.nothing_lost for row in drill.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
