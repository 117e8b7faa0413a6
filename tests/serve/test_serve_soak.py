"""Soak: 320 requests at concurrency 8 against a real server (tiny model, loopback only): no 5xx,
every picture is its seed's, and the server's memory levels off. Prints the figures."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import FAST, engine_reference, files, form, pixels, running_server  # noqa: E402

REQUESTS, CONCURRENCY, WARM_UP, SEEDS = 320, 8, 50, 16
TIME_LIMIT_S = 300  # the whole soak is bounded; a stall fails instead of hanging CI


def test_soak(engines, engine, capsys):
    references = {seed: engine_reference(engine, seed) for seed in range(SEEDS)}
    statuses, mismatches = [], []
    started = time.monotonic()

    def one(index: int, client) -> None:
        if time.monotonic() - started > TIME_LIMIT_S:
            statuses.append(-1)
            return
        seed = index % SEEDS
        response = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": seed}))
        statuses.append(response.status_code)
        if response.status_code != 200 or not np.array_equal(pixels(response.content), references[seed]):
            mismatches.append((index, seed, response.status_code))

    with running_server(engines[9], "--workers", "2", "--queue-size", "16") as server, \
            httpx.Client(base_url=server.url, timeout=60,
                         limits=httpx.Limits(max_connections=CONCURRENCY)) as client, \
            ThreadPoolExecutor(CONCURRENCY) as pool:
        rss_start = server.rss_mb()
        list(pool.map(lambda i: one(i, client), range(WARM_UP)))
        rss_warm = server.rss_mb()
        list(pool.map(lambda i: one(i, client), range(WARM_UP, REQUESTS)))
        rss_end = server.rss_mb()
        elapsed = time.monotonic() - started

    server_errors = sum(s >= 500 for s in statuses)
    with capsys.disabled():
        print(f"\nsoak: {len(statuses)} requests at concurrency {CONCURRENCY} in {elapsed:.1f} s "
              f"({len(statuses) / elapsed:.1f}/s), 2 workers, {FAST['height']}x{FAST['width']}, "
              f"{FAST['num_inference_steps']} steps; 5xx: {server_errors}; other non-200: "
              f"{sum(s != 200 for s in statuses) - server_errors}; results not their seed's: {len(mismatches)}; "
              f"server RSS MB: start {rss_start:.0f}, after {WARM_UP} {rss_warm:.0f}, after {REQUESTS} {rss_end:.0f} "
              f"({(rss_end / rss_warm - 1) * 100:+.1f} %)")
    assert -1 not in statuses, f"the soak ran past {TIME_LIMIT_S} s"
    assert len(statuses) == REQUESTS and server_errors == 0
    assert mismatches == [], f"results that are not their seed's: {mismatches[:5]}"
    assert rss_end <= rss_warm * 1.10, "server memory kept growing"
