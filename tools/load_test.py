"""Load test of dimerec-serve on loopback: requests/s and latency at several concurrencies.

    python tools/load_test.py --bundles bundles/steps1 bundles/steps10 --data runs/quick/data \
        --concurrency 1 8 32 --requests 600 --seconds 30 --out runs/load

For each bundle a server is started (`dimerec-serve BUNDLE --port 0`, its start-up time
recorded), then for each concurrency level that many client threads, each with its own
keep-alive connection, send POST /recommend (k = 50) with the histories of the dataset's
test users (or random histories from the bundle's vocabulary without --data) until
--requests answers or --seconds pass, whichever comes first. Client and server share the
machine's cores, as on a one-box deployment. "open" is the time to open the bundle as the
server does (memory maps, no reads); "start" is the server process's start to listening.
Exact search reads the whole table per query batch: the tool measures this machine's memory
bandwidth with a plain copy (numpy, STREAM's convention: bytes read plus bytes written) and
reports the bytes an exact query scans and the time that scan takes at that bandwidth, beside
the measured p50.
`--max-batch 1` turns the server's micro-batching off. Writes results.json, results.md and a plot.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

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


def start_server(bundle: Path, threads: int, max_batch: int) -> tuple[subprocess.Popen, int, float]:
    started = time.time()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dimerec_dist.serving.server",
            str(bundle),
            "--port",
            "0",
            "--threads",
            str(threads),
            "--max-batch",
            str(max_batch),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    line = server.stdout.readline()
    if not line.startswith("listening on"):
        server.kill()
        raise RuntimeError(f"dimerec-serve {bundle} did not start: {line}{server.stderr.read()[-3000:]}")
    port = int(line.rsplit(":", 1)[1])
    return server, port, time.time() - started


def run_level(port: int, histories: list[list[str]], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors = [0]
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
            connection.request("POST", "/recommend", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            took = time.perf_counter() - sent
            with lock:
                if response.status == 200 and len(json.loads(payload)["items"]) == 50:
                    latencies.append(took)
                else:
                    errors[0] += 1
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
    parser.add_argument("--threads", type=int, default=0, help="the server's torch threads (0: default)")
    parser.add_argument("--max-batch", type=int, default=64, help="the server's micro-batch (1: no batching)")
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
        server, port, start_s = start_server(bundle, args.threads, args.max_batch)
        try:
            run_level(port, histories, 1, 5, 30)  # warm-up: first calls page the table in
            for level in args.concurrency:
                result = run_level(port, histories, level, args.requests, args.seconds)
                result.update(
                    bundle=str(bundle),
                    items=manifest["num_items"],
                    dtype=manifest["dtype"],
                    steps=manifest["steps"],
                    open_s=round(open_s, 3),
                    verify_s=round(verify_s, 3),
                    start_s=round(start_s, 2),
                    max_batch=args.max_batch,
                    scan_bytes=scan_bytes,
                    scan_ms=round(scan_ms, 2),
                    bandwidth_gb_s=round(bandwidth / 1e9, 2),
                )
                results.append(result)
                print(
                    f"{bundle} ({manifest['dtype']}, {manifest['steps']} step(s)) concurrency {level}: "
                    f"{result['requests_per_s']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                    f"{result['errors']} errors; an exact scan of {scan_bytes / 2**20:,.0f} MiB: {scan_ms:.1f} ms "
                    f"at {bandwidth / 1e9:.1f} GB/s",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    rows = [
        "| bundle | items | dtype | steps | open (s) | verify (s) | start (s) | concurrency | requests | req/s "
        "| p50 (ms) | p99 (ms) | scanned per exact query (MiB) | scan at memory bandwidth (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {Path(r['bundle']).name} | {r['items']:,} | {r['dtype']} | {r['steps']} | {r['open_s']} | "
        f"{r['verify_s']} | {r['start_s']} | "
        f"{r['concurrency']} | {r['requests']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
        f"{r['scan_bytes'] / 2**20:,.0f} | {r['scan_ms']} |"
        for r in results
    ]
    (args.out / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    plot(results, args.out / "load_test.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for bundle in dict.fromkeys(r["bundle"] for r in results):
        rows = [r for r in results if r["bundle"] == bundle]
        label = f"{Path(bundle).name} ({rows[0]['steps']} step(s))"
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
