"""Where a benchmark's figures came from, written beside them (provenance.json): the command,
the commit (and whether the tree had uncommitted changes), the machine and the stack. A doc
citing a figure cites the raw output and this file, so anyone can see what to rerun and where.

    from tools.provenance import write_provenance
    write_provenance(out_dir)          # at the end of a benchmark's main()

A command that is not a benchmark tool (a training run whose metrics a doc cites) runs under it:

    python tools/provenance.py runs/quick_bf16 -- dimerec-train --config configs/quickstart.yaml \
        --run-dir runs/quick_bf16 train.precision=bf16
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # research/, when a tool runs as a script

from research.run_records import code_version  # noqa: E402  the commit, and whether the tree differed


def machine() -> dict:
    """The CPU, its cores, the memory and the GPUs of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        gpus = [line.split(" (UUID")[0] for line in listed.stdout.splitlines() if line.startswith("GPU")]
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory_gb, 1), "gpus": gpus}


def stack() -> dict:
    versions = {"python": platform.python_version()}
    for module in ("torch", "torchrec", "fbgemm_gpu", "ray", "pyarrow", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # absent or broken: the figure's file says so rather than the tool failing
            versions[module] = None
    return versions


def provenance(argv: list[str] | None = None, as_given: bool = False) -> dict:
    """`argv`: a script's arguments (python is put before them), or with `as_given` a whole command."""
    argv = argv if argv is not None else sys.argv
    return {
        "command": shlex.join(argv if as_given else [Path(sys.executable).name, *argv]),
        "code": code_version(REPO),
        "machine": machine(),
        "stack": stack(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_provenance(out: Path, argv: list[str] | None = None, as_given: bool = False) -> Path:
    path = Path(out) / "provenance.json"
    path.write_text(json.dumps(provenance(argv, as_given), indent=2) + "\n")
    return path


def main() -> int:
    """Run the command after `--`; once it succeeds, write its provenance into OUT."""
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print("usage: python tools/provenance.py OUT -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    out, command = Path(sys.argv[1]), sys.argv[3:]
    done = subprocess.run(command)
    if done.returncode != 0:
        return done.returncode
    out.mkdir(parents=True, exist_ok=True)
    print(f"provenance: {write_provenance(out, command, as_given=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
