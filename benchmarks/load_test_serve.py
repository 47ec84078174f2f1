"""Bounded load test of the HTTP API on loopback: many clicks from concurrent clients.

Starts the real server (MobileSAM) on 127.0.0.1, uploads the sample photo once, sends one
untimed warm-up click, then ``--requests`` prompt requests (boxes and clicks around the cup)
from ``--clients`` threads. Prints p50 / p95 (nearest rank) / max latency per click of the
requests that got a response, and the error count (non-200 answers, timeouts and connection
errors). Only loopback is contacted.

    .venv/bin/python benchmarks/load_test_serve.py --requests 200 --clients 8
"""

from __future__ import annotations

import argparse
import math
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import uvicorn
from _common import load_average, positive_int, run_main

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.cli.serve_cmd import listen_sockets
from ovsam.errors import OVSamError
from ovsam.serve.app import create_app, default_engine
from ovsam.serve.settings import ServeSettings

STARTUP_TIMEOUT_S = 60.0


def start_server() -> tuple[uvicorn.Server, str]:
    """The server running in a daemon thread on a socket bound here (no free-port race);
    :class:`OVSamError` when it does not start within ``STARTUP_TIMEOUT_S``."""
    sockets = listen_sockets("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    app = create_app(ServeSettings(), default_engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise OVSamError(f"the server on 127.0.0.1:{port} stopped while starting")
        if time.monotonic() > deadline:
            raise OVSamError(f"the server did not start within {STARTUP_TIMEOUT_S:.0f} s")
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


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    """The ``ceil(fraction * n)``-th smallest of ``sorted_values`` (nearest-rank percentile)."""
    return sorted_values[max(1, math.ceil(fraction * len(sorted_values))) - 1]


def upload(client: httpx.Client) -> str:
    """Upload the sample photo; its image id. A failed upload is an :class:`OVSamError`."""
    try:
        response = client.post(
            "/v1/images", files={"file": ("coffee.jpg", SAMPLE_PHOTO.read_bytes(), "image/jpeg")}
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise OVSamError(f"uploading the sample photo failed: {exc}") from exc
    print(f"upload + embedding: {response.json()['embedding_ms']:.0f} ms")
    return str(response.json()["image_id"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=positive_int, default=200, help="timed requests (default %(default)s)"
    )
    parser.add_argument(
        "--clients", type=positive_int, default=8,
        help="concurrent client threads (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=positive_int, default=120,
        help="seconds before a request counts as an error (default %(default)s)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"load average at start {load_average()}")
    server, url = start_server()
    try:
        with httpx.Client(base_url=url, timeout=args.timeout) as client:
            image_id = upload(client)

            def click(body: dict) -> tuple[float, int | None]:
                """Milliseconds and status of one request (status None: no response)."""
                start = time.perf_counter()
                try:
                    status: int | None = client.post(
                        f"/v1/images/{image_id}/predict", json=body
                    ).status_code
                except httpx.TransportError:  # timeouts and connection errors
                    status = None
                return (time.perf_counter() - start) * 1000, status

            warm_ms, warm_status = click(prompts(1, seed=1)[0])
            print(f"warm-up click: {warm_ms:.0f} ms, status {warm_status or 'no response'}")
            wall = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                results = list(pool.map(click, prompts(args.requests)))
            wall = time.perf_counter() - wall
    finally:
        server.should_exit = True
    latencies = sorted(ms for ms, status in results if status is not None)
    errors = sum(status != 200 for _, status in results)
    print(f"{len(results)} requests from {args.clients} concurrent clients in {wall:.1f} s "
          f"({len(results) / wall:.1f} req/s), errors: {errors} "
          f"({len(results) - len(latencies)} without a response)")  # fmt: skip
    if latencies:
        print(f"latency per click: p50 {statistics.median(latencies):.0f} ms, "
              f"p95 {nearest_rank(latencies, 0.95):.0f} ms, max {latencies[-1]:.0f} ms "
              "(includes queueing behind the one model)")  # fmt: skip
    print(f"load average at end {load_average()}")
    return 1 if errors else 0


if __name__ == "__main__":
    run_main(main)
