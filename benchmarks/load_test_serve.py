"""Bounded load test of the HTTP API on loopback: many clicks from concurrent clients.

Starts the real server (MobileSAM) on 127.0.0.1, uploads the sample photo once, then sends
``--requests`` prompt requests (boxes and clicks around the cup) from ``--clients`` threads.
Prints p50 / p95 / max latency per click and the error count. Only loopback is contacted.

    .venv/bin/python benchmarks/load_test_serve.py --requests 200 --clients 8
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import uvicorn

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.serve.app import create_app, default_engine
from ovsam.serve.settings import ServeSettings


def start_server() -> tuple[uvicorn.Server, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(ServeSettings(), default_engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def prompts(count: int, seed: int = 0) -> list[dict]:
    """Alternating jittered boxes and single clicks on the cup in the sample photo."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = SAMPLE_BOX
    out = []
    for i in range(count):
        if i % 2 == 0:
            jitter = rng.uniform(-8, 8, size=4)
            out.append({"box": [x0 + jitter[0], y0 + jitter[1], x1 + jitter[2], y1 + jitter[3]]})
        else:
            point = [rng.uniform(x0 + 40, x1 - 40), rng.uniform(y0 + 40, y1 - 40)]
            out.append({"points": [point], "labels": [1]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    server, url = start_server()
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            upload = client.post(
                "/v1/images",
                files={"file": ("coffee.jpg", SAMPLE_PHOTO.read_bytes(), "image/jpeg")},
            )
            upload.raise_for_status()
            image_id = upload.json()["image_id"]
            print(f"upload + embedding: {upload.json()['embedding_ms']:.0f} ms")

            def click(body: dict) -> tuple[float, int]:
                start = time.perf_counter()
                r = client.post(f"/v1/images/{image_id}/predict", json=body)
                return (time.perf_counter() - start) * 1000, r.status_code

            wall = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                results = list(pool.map(click, prompts(args.requests)))
            wall = time.perf_counter() - wall
    finally:
        server.should_exit = True
    latencies = sorted(ms for ms, _ in results)
    errors = sum(status != 200 for _, status in results)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"{len(results)} requests from {args.clients} concurrent clients in {wall:.1f} s "
          f"({len(results) / wall:.1f} req/s), errors: {errors}")  # fmt: skip
    print(f"latency per click: p50 {statistics.median(latencies):.0f} ms, p95 {p95:.0f} ms, "
          f"max {latencies[-1]:.0f} ms (includes queueing behind the one model)")  # fmt: skip
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
