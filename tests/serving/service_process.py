"""A dimerec-serve process as users start it, for the serving tests and tools/load_test.py:
its URL, its output, SIGTERM, and the processes of its shards' replicas (to kill one)."""

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Service:
    """`dimerec-serve BUNDLE ARGS` started as users start it; its output goes to files (Ray writes a
    lot, and a full pipe would stall the service)."""

    def __init__(self, bundle_dir, log_dir, *args: str):
        self.out, self.err = Path(log_dir) / "serve.out", Path(log_dir) / "serve.err"
        command = [sys.executable, "-m", "dimerec_dist.serving.serve_cli", str(bundle_dir), "--port", "0", *args]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True)
        started = time.time()
        deadline = started + 240
        # What a probe sees while the service starts: (seconds since start, path, status or error name).
        self.start_probes: list[tuple[float, str, int | str]] = []
        while not self.stdout().startswith("listening on http://"):
            if self.process.poll() is not None or time.time() > deadline:
                self.kill()
                raise RuntimeError(f"dimerec-serve did not start: {self.stdout()}{self.stderr()[-3000:]}")
            early = [line for line in self.stderr().splitlines() if "starting on http://" in line]
            if early:
                url = early[0].split("starting on ")[1].split()[0]
                for path in ("/health", "/health/ready"):
                    self.start_probes.append((time.time() - started, path, _status(url + path)))
            time.sleep(0.2)
        self.url = self.stdout().splitlines()[0].split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self, timeout: float = 120) -> str:
        """SIGTERM, then its output; it must exit 0 having said how many requests it answered."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            self.kill()
        if code != 0 or "recommendation requests answered" not in self.stdout():
            raise RuntimeError(f"dimerec-serve exited {code}: {self.stdout()[-1000:]}{self.stderr()[-3000:]}")
        return self.stdout()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def replica_pids(self, deployment: str) -> list[int]:
        """Processes of `deployment`'s replicas in this service's own Ray (another may be running)."""
        return [pid for pid in _descendants(self.process.pid) if f"ServeReplica:default:{deployment}" in _cmdline(pid)]


def _status(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return type(error).__name__


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
