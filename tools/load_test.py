"""Load test of dimerec-serve on loopback: requests/s and latency at several concurrencies.

    python tools/load_test.py --bundles bundles/steps1 bundles/steps10 --data runs/quick/data \
        --concurrency 1 8 32 --requests 600 --seconds 30 --out runs/load

For each bundle and each server (`--shards 1 2`: the sharded service on Ray Serve with that
many shards of `--replicas` each; `--single-process`: the standard-library server) a server
is started (`dimerec-serve BUNDLE --port 0 ...`, its start-up time recorded), then for each
concurrency level that many client threads, each with its own keep-alive connection, send
POST /recommend (k = 50) with the histories of the dataset's test users (or random histories
from the bundle's vocabulary without --data) until --requests answers or --seconds pass,
whichever comes first. Client and server share the machine's cores, as on a one-box
deployment. "open" is the time to open the bundle as the server does (memory maps, no
reads); "start" is the server's start to listening (to every shard loaded, for the service).
Exact search reads the whole table per query batch: the tool measures this machine's memory
bandwidth with a plain copy (numpy, STREAM's convention: bytes read plus bytes written) and
reports the bytes an exact query scans and the time that scan takes at that bandwidth, beside
the measured p50.
`--fastapi` adds the same single-process server on FastAPI + uvicorn instead of the standard
library (tools/fastapi_frontend.py), to weigh a move to it. `--max-batch 1` turns the single-process
server's micro-batching off. `--kill-replica-after S`
SIGKILLs one replica of shard 0 S seconds into each level of the sharded service (a fault under
load: the errors column says what clients saw; Ray Serve restarts the replica).
Writes results.json, results.md and a plot.

    python tools/load_test.py --bundles runs/serving/m1-f32 --shards 1 2 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from provenance import write_provenance  # tools/, beside this script

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def histories_from(bundle_dir: Path, data: str | None, count: int, seed: int = 0) -> list[list[str]]:
    from dimerec_dist.serving.bundle import Bundle

    bundle = Bundle(bundle_dir)
    if data:
        from dimerec_dist.data.samples import EvaluationUsers
        from dimerec_dist.data.schema import Manifest, read_split

        users = EvaluationUsers(read_split(Manifest.load(data), "test"), bundle.manifest["max_history"])
        rows = np.arange(min(count, len(users)))
        return [bundle.raw_ids(users.items[users.offsets[r] : users.offsets[r + 1]]) for r in rows]
    rng = np.random.default_rng(seed)
    return [bundle.raw_ids(rng.integers(1, bundle.num_items + 1, rng.integers(5, 51))) for _ in range(count)]


def copy_bandwidth(size: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes per second of a plain copy of `size` bytes (read + written), the best of `repeats`."""
    source = np.ones(size // 8, np.float64)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * size / best


class SingleProcessServer:
    """`dimerec-serve BUNDLE --single-process`: the standard-library server, without Ray; or with
    `fastapi`, the same server's candidate on FastAPI + uvicorn (tools/fastapi_frontend.py)."""

    def __init__(self, bundle: Path, threads: int, max_batch: int, fastapi: bool = False):
        if fastapi:
            command = [sys.executable, str(Path(__file__).with_name("fastapi_frontend.py")), str(bundle)]
        else:
            command = [sys.executable, "-m", "dimerec_dist.serving.serve_cli", str(bundle), "--single-process"]
        command += ["--port", "0", "--threads", str(threads), "--max-batch", str(max_batch)]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        line = self.process.stdout.readline()
        if not line.startswith("listening on"):
            self.process.kill()
            raise RuntimeError(f"dimerec-serve {bundle} did not start: {line}{self.process.stderr.read()[-3000:]}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


SINGLE_PROCESS, FASTAPI = 0, -1  # the servers without Ray, among the sharded services' shard counts


def start_server(bundle: Path, shards: int, args, log_dir: Path):
    """A started server and its start-up time: shards SINGLE_PROCESS or FASTAPI are the single-process ones."""
    from tests.serving.service_process import Service

    started = time.time()
    if shards in (SINGLE_PROCESS, FASTAPI):
        server = SingleProcessServer(bundle, args.threads, args.max_batch, fastapi=shards == FASTAPI)
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
        server = Service(bundle, log_dir, "--shards", str(shards), "--replicas", str(args.replicas))
    return server, time.time() - started


def kill_a_replica_later(server, seconds: float) -> threading.Timer:
    """SIGKILL one replica of shard 0 after `seconds` (the sharded service only)."""

    def kill():
        pids = server.replica_pids("shard-0")
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            timer.killed = True
            print(f"  killed shard-0's replica (pid {pids[0]}) under load", flush=True)

    timer = threading.Timer(seconds, kill)
    timer.killed = False  # set once the kill happened (a level may end first)
    timer.start()
    return timer


def run_level(port: int, histories: list[list[str]], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors, error_kinds = [0], {}
    lock = threading.Lock()
    issued = [0]
    deadline = time.time() + max_seconds

    def client(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.time() < deadline:
            with lock:
                if issued[0] >= max_requests:
                    break
                number = issued[0]
                issued[0] += 1
            body = json.dumps({"history": histories[number % len(histories)], "k": 50})
            sent = time.perf_counter()
            try:
                connection.request("POST", "/recommend", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                status, payload = response.status, response.read()
            except OSError as exc:  # a dropped connection counts as an error, and the client reconnects
                status, payload = type(exc).__name__, b""
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            took = time.perf_counter() - sent
            with lock:
                if status == 200 and len(json.loads(payload)["items"]) == 50:
                    latencies.append(took)
                else:
                    errors[0] += 1
                    error_kinds[str(status)] = error_kinds.get(str(status), 0) + 1
        connection.close()

    started = time.time()
    workers = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.time() - started
    ms = np.array(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors[0],
        "error_kinds": error_kinds,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", type=Path, nargs="+", required=True)
    parser.add_argument("--data", default=None, help="a prepared dataset: its test users' histories are sent")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=600, help="at most this many per level")
    parser.add_argument("--seconds", type=float, default=30, help="at most this long per level")
    parser.add_argument("--shards", type=int, nargs="*", default=[1], help="sharded services to test, by shards")
    parser.add_argument("--replicas", type=int, default=1, help="replicas of each shard")
    parser.add_argument("--single-process", action="store_true", help="also test the single-process server")
    parser.add_argument(
        "--fastapi",
        action="store_true",
        help="also test the single-process server's candidate on FastAPI + uvicorn (tools/fastapi_frontend.py)",
    )
    parser.add_argument("--kill-replica-after", type=float, default=0, help="> 0: kill a shard replica mid-level")
    parser.add_argument("--threads", type=int, default=0, help="single-process: torch threads (0: default)")
    parser.add_argument("--max-batch", type=int, default=64, help="single-process: micro-batch (1: no batching)")
    parser.add_argument("--out", type=Path, default=Path("runs/load_test"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    from dimerec_dist.serving.bundle import Bundle
    from dimerec_dist.serving.exact_search import ExactSearch

    bandwidth = copy_bandwidth()
    print(f"memory bandwidth (plain copy): {bandwidth / 1e9:.1f} GB/s", flush=True)

    for bundle in args.bundles:
        manifest = json.loads((bundle / "bundle.json").read_text())
        opened = time.time()
        Bundle(bundle, verify=False)  # map the table and the vocabulary (the server also verifies: verify_s)
        open_s = time.time() - opened
        verifying = time.time()
        Bundle(bundle)  # open and verify every checksum: what dimerec-serve does by default
        verify_s = time.time() - verifying
        opened_bundle = Bundle(bundle, verify=False)
        scan_bytes = ExactSearch(opened_bundle.parts, opened_bundle.cosine).table_bytes
        scan_ms = 1000 * scan_bytes / bandwidth
        histories = histories_from(bundle, args.data, 2000)
        single = [SINGLE_PROCESS] if args.single_process else []
        for shards in single + ([FASTAPI] if args.fastapi else []) + args.shards:
            name = {SINGLE_PROCESS: "single process", FASTAPI: "single process, FastAPI + uvicorn"}.get(
                shards, f"{shards} shard(s) x {args.replicas}"
            )
            server, start_s = start_server(bundle, shards, args, args.out / "logs" / f"{bundle.name}-{shards}")
            try:
                run_level(server.port, histories, 1, 5, 30)  # warm-up: first calls page the table in
                for level in args.concurrency:
                    timer = (
                        kill_a_replica_later(server, args.kill_replica_after)
                        if shards > 0 and args.kill_replica_after
                        else None
                    )
                    result = run_level(server.port, histories, level, args.requests, args.seconds)
                    if timer is not None:
                        timer.cancel()
                        if timer.killed:
                            run_level(server.port, histories, 1, 3, 120)  # the replica back before the next level
                    result.update(
                        bundle=str(bundle),
                        server=name,
                        items=manifest["num_items"],
                        dtype=manifest["dtype"],
                        steps=manifest["steps"],
                        index=(manifest.get("index") or {}).get("kind", "exact"),
                        open_s=round(open_s, 3),
                        verify_s=round(verify_s, 3),
                        start_s=round(start_s, 2),
                        max_batch=args.max_batch,
                        replica_killed=bool(timer and timer.killed),
                        scan_bytes=scan_bytes,
                        scan_ms=round(scan_ms, 2),
                        bandwidth_gb_s=round(bandwidth / 1e9, 2),
                    )
                    results.append(result)
                    print(
                        f"{bundle} ({manifest['dtype']}, {result['index']}), {name}, concurrency {level}: "
                        f"{result['requests_per_s']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                        f"{result['errors']} errors {result['error_kinds'] or ''}; an exact scan of "
                        f"{scan_bytes / 2**20:,.0f} MiB: {scan_ms:.1f} ms at {bandwidth / 1e9:.1f} GB/s",
                        flush=True,
                    )
            finally:
                server.stop()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    write_provenance(args.out)
    rows = [
        "| bundle | items | dtype | search | server | start (s) | concurrency | requests | req/s | p50 (ms) "
        "| p99 (ms) | errors | scanned per exact query (MiB) | scan at memory bandwidth (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {Path(r['bundle']).name} | {r['items']:,} | {r['dtype']} | {r['index']} | {r['server']} | "
        f"{r['start_s']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']} | {r['p50_ms']} | "
        f"{r['p99_ms']} | {r['errors']}{' (replica killed)' if r['replica_killed'] else ''} | "
        f"{r['scan_bytes'] / 2**20:,.0f} | {r['scan_ms']} |"
        for r in results
    ]
    opening = sorted({(Path(r["bundle"]).name, r["open_s"], r["verify_s"]) for r in results})
    rows += ["", "| bundle | open (s) | verify every checksum (s) |", "|---|---|---|"]
    rows += [f"| {name} | {open_s} | {verify_s} |" for name, open_s, verify_s in opening]
    (args.out / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    plot(results, args.out / "load_test.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for bundle, server in dict.fromkeys((r["bundle"], r["server"]) for r in results):
        rows = [r for r in results if (r["bundle"], r["server"]) == (bundle, server)]
        label = f"{Path(bundle).name}, {server}"
        left.plot([r["concurrency"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=label)
        right.plot([r["concurrency"] for r in rows], [r["p99_ms"] for r in rows], marker="o", label=label)
    for axis, label in ((left, "requests/s"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
