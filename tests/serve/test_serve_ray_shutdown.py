"""SIGTERM to a real `inpaint-serve --ray` with a job running and one queued: both clients get an
answer (the running job's picture or a 503 that says the server is shutting down; the queued one a
503), and the process exits within 30 s without Ray's "failed to shut down" warning."""
from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("ray.serve")

from serve_helpers import FAST, files, form, free_port, running_server, wait_until  # noqa: E402

LONG = {**FAST, "num_inference_steps": 1000, "scheduler": "euler", "height": 128, "width": 128}  # > the 10 s drain


def test_sigterm_answers_every_waiting_client_and_exits_in_time(engines):
    arguments = ("--ray", "--replicas", "1", "--port", str(free_port()), "--max-steps", "1000")
    with running_server(engines[9], *arguments, ready_seconds=300) as server, ThreadPoolExecutor(2) as pool:
        def inpaint(seed: int):
            return httpx.post(f"{server.url}/v1/inpaint", files=files(), data=form({**LONG, "seed": seed}),
                              timeout=120)

        running = pool.submit(inpaint, 1)
        wait_until(lambda: httpx.get(f"{server.url}/v1/health").json()["busy"] == 1, 120)
        queued = pool.submit(inpaint, 2)
        wait_until(lambda: httpx.get(f"{server.url}/v1/health").json()["queued"] == 1, 60)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(60)
        exit_seconds = time.monotonic() - signalled
        answers = [running.result(60), queued.result(60)]
    output = "".join(server.output)
    assert server.process.returncode == 0, output[-3000:]
    assert exit_seconds < 30, f"exited {exit_seconds:.0f} s after SIGTERM:\n{output[-3000:]}"
    assert "failed to shut down" not in output, output[-3000:]
    first, second = answers
    assert first.status_code in (200, 503), first.text
    if first.status_code == 503:  # stopped at a step once the drain's 10 s were up
        assert "shutting down" in first.json()["error"]["message"], first.text
    assert second.status_code == 503 and "shutting down" in second.json()["error"]["message"], second.text
