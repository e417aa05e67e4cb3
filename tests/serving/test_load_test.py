"""tools/load_test.py, the tool behind docs/SERVING.md's load figures: it measures each server it
is asked for with no errors and writes what the docs cite; the FastAPI + uvicorn candidate it can
weigh against the standard-library server answers as that server does."""

import json
import subprocess
import sys

from tests.distributed.conftest import REPO
from tests.serving.conftest import call


def test_the_load_test_measures_both_single_process_servers_and_keeps_its_raw_output(bundle_dir, tmp_path):
    out = tmp_path / "load"
    command = [sys.executable, "tools/load_test.py", "--bundles", str(bundle_dir), "--single-process", "--fastapi"]
    command += ["--shards", "--concurrency", "1", "4", "--requests", "40", "--seconds", "10", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    cells = {(r["server"], r["concurrency"]): r for r in results}
    servers = ("single process", "single process, FastAPI + uvicorn")
    assert set(cells) == {(server, level) for server in servers for level in (1, 4)}
    for cell in cells.values():
        assert cell["requests"] == 40 and cell["errors"] == 0 and cell["p99_ms"] >= cell["p50_ms"] > 0
    assert json.loads((out / "provenance.json").read_text())["command"]
    assert "| single process, FastAPI + uvicorn |" in (out / "results.md").read_text()


def test_the_fastapi_candidate_answers_as_the_standard_server_does(bundle_dir, single_server):
    sys.path.insert(0, str(REPO / "tools"))
    from load_test import SingleProcessServer, histories_from

    candidate = SingleProcessServer(bundle_dir, threads=0, max_batch=64, fastapi=True)
    try:
        url = f"http://127.0.0.1:{candidate.port}"
        for history in histories_from(bundle_dir, None, 5):
            body = {"history": history, "k": 10, "exact": True}
            assert call(url, "/recommend", body) == call(single_server, "/recommend", body)
        batch = {"requests": [{"history": history, "k": 3} for history in histories_from(bundle_dir, None, 3)]}
        assert call(url, "/recommend/batch", batch) == call(single_server, "/recommend/batch", batch)
        wrong = {"history": "not a list", "k": 10}
        status, error = call(url, "/recommend", wrong)
        assert (status, error) == call(single_server, "/recommend", wrong) and status == 400, error
        (status, health), (_, reference) = call(url, "/health"), call(single_server, "/health")
        assert status == 200 and health == {key: value for key, value in reference.items() if key != "start_s"}
    finally:
        candidate.stop()
