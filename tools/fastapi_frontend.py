"""The single-process server's candidate on FastAPI + uvicorn, for tools/load_test.py --fastapi.

    python tools/fastapi_frontend.py BUNDLE --port 0 [--max-batch 64] [--threads N]

The same bundle, recommender, micro-batcher and wire protocol (dimerec_dist/serving/protocol.py)
as `dimerec-serve --single-process`, behind FastAPI instead of the standard library's threaded
server: POST /recommend, POST /recommend/batch, GET /health. The handlers are plain functions, so
FastAPI runs them on its thread pool, where the micro-batcher gathers them as it gathers the
standard server's threads. It is here to be measured beside the standard server (issue #51 asked
whether the product's server should move to it), not to be deployed: it has none of the
standard server's drain on SIGTERM or its checks of framing (chunked bodies, smuggling).
Prints `listening on http://127.0.0.1:PORT` once it accepts connections, as dimerec-serve does.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from dimerec_dist.serving.batcher import MicroBatcher  # noqa: E402
from dimerec_dist.serving.bundle import Bundle  # noqa: E402
from dimerec_dist.serving.protocol import MAX_BODY_BYTES, answer, health_of, parse_batch, parse_body, parse_request  # noqa: E402
from dimerec_dist.serving.recommender import Recommender, RequestError  # noqa: E402


def build_app(bundle_dir: Path, max_batch: int) -> FastAPI:
    bundle = Bundle(bundle_dir)
    batcher = MicroBatcher(Recommender(bundle), max_batch)
    health = health_of(bundle)
    app = FastAPI()

    def recommended(raw: bytes, batch: bool) -> JSONResponse:
        if len(raw) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            body = parse_body(raw)
            requests = (
                parse_batch(body, bundle.num_items) if batch else [parse_request(body, "request", bundle.num_items)]
            )
            results = batcher.recommend(requests)
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"results": [answer(r) for r in results]} if batch else answer(results[0]))

    # The body is read on the event loop (async), the recommendation made on the thread pool (sync).
    @app.post("/recommend")
    async def recommend(http: Request):
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(recommended, await http.body(), False)

    @app.post("/recommend/batch")
    async def recommend_batch(http: Request):
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(recommended, await http.body(), True)

    @app.get("/health")
    def healthy():
        return health

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="a bundle directory written by dimerec-export")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--max-batch", type=int, default=64, help="requests answered together at most")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    app = build_app(args.bundle, args.max_batch)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(256)
    print(f"listening on http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[listener])


if __name__ == "__main__":
    main()
