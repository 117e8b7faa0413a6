"""The HTTP API against a real `inpaint-serve` process on 127.0.0.1 (tiny model): results, seeds,
jobs, live events, cancellation, the bounded queue, the token and SIGTERM."""
from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import (AUTH, FAST, TOKEN, engine_reference, files, form, pixels, png, picture, mask,  # noqa: E402
                           free_port, running_server, wait_until)


@pytest.fixture(scope="module")
def server(engine_dir):
    with running_server(engine_dir, "--workers", "2", "--token", TOKEN, "--queue-size", "32",
                        "--max-steps", "1000", "--cors-origin", "http://app.example") as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        yield c


def events(client, job_id: str, found: list | None = None) -> list[tuple[str, dict]]:
    """Every server-sent event of one job, until its last (appended to `found` as they arrive)."""
    found, kind = [] if found is None else found, None
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                found.append((kind, json.loads(line[6:])))
    return found


def test_health_info_docs_and_token(server, client):
    assert httpx.get(server.url + "/v1/health").json()["status"] == "ok"  # no token needed to probe liveness
    refused = httpx.get(server.url + "/v1/info")
    assert refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"
    assert refused.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(server.url + "/v1/inpaint", files=files(), data=form(FAST),
                       headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401
    info = client.get("/v1/info").json()
    assert info["model"]["unet_in_channels"] == 9 and info["model"]["backend"] == "ort-cpu"
    assert (info["model"]["default_height"], info["model"]["default_width"]) == (128, 128)
    assert "euler_a" in info["schedulers"] and info["limits"]["workers"] == 2
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/inpaint"]["post"]["requestBody"]["content"]
    for kind in ("multipart/form-data", "application/json"):
        properties = body[kind]["schema"]["properties"]
        assert {"image", "mask_image", "prompt", "num_inference_steps", "seed", "scheduler"} <= set(properties)
        assert all(p.get("description") for p in properties.values()), "every field is documented"


def test_cors_only_for_the_origins_asked_for(server):
    def preflight(origin):
        return httpx.options(server.url + "/v1/inpaint", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})

    assert preflight("http://app.example").headers.get("access-control-allow-origin") == "http://app.example"
    assert "access-control-allow-origin" not in preflight("http://elsewhere.example").headers


def test_inpaint_png_is_the_engine_result_for_its_seed(client, engine):
    response = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 5}))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
    assert response.headers["x-seed"] == "5"
    assert set(json.loads(response.headers["x-timings"])) == {"queued_ms", "run_ms"}
    assert np.array_equal(pixels(response.content), engine_reference(engine, 5))


def test_inpaint_json_base64_with_a_random_seed(client, engine):
    body = {**FAST, "image": base64.b64encode(png(picture())).decode(),
            "mask_image": "data:image/png;base64," + base64.b64encode(png(mask())).decode(),
            "response_format": "json"}
    answer = client.post("/v1/inpaint", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert isinstance(result["seed"], int) and (result["width"], result["height"]) == (64, 64)
    assert np.array_equal(pixels(base64.b64decode(result["image"])), engine_reference(engine, result["seed"]))


def test_interleaved_requests_each_get_their_own_seeds_result(client, engine):
    seeds = list(range(100, 112))
    variants = [{}, {"num_inference_steps": 3, "scheduler": "euler_a"}]  # different lengths interleave

    def run(seed):
        fields = {**FAST, **variants[seed % 2], "seed": seed}
        return client.post("/v1/inpaint", files=files(), data=form(fields))

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(run, seeds))
    for seed, response in zip(seeds, responses):
        assert response.status_code == 200 and response.headers["x-seed"] == str(seed)
        expected = engine_reference(engine, seed, **variants[seed % 2])
        assert np.array_equal(pixels(response.content), expected), f"seed {seed} got another request's result"


def test_jobs_report_progress_only_for_themselves(client, engine):
    # long jobs hold both workers until both streams listen, so neither job can finish before its stream opens
    blockers = [client.post("/v1/jobs", files=files(), data=form({**FAST, "num_inference_steps": 1000,
                                                                  "scheduler": "euler"})).json()["id"] for _ in "ab"]
    ids = [client.post("/v1/jobs", files=files(), data=form({**FAST, "num_inference_steps": 6, "seed": s})).json()["id"]
           for s in (7, 8)]
    found = {job_id: [] for job_id in ids}
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(events, client, job_id, found[job_id]) for job_id in ids]
        wait_until(lambda: all(found.values()))  # each stream has answered its queued job's state: it listens
        for blocker in blockers:
            client.delete(f"/v1/jobs/{blocker}")
        streams = [future.result() for future in futures]
    for job_id, seed, stream in zip(ids, (7, 8), streams):
        assert {view["id"] for _, view in stream} == {job_id}, "a stream carries only its own job"
        steps = [view["step"] for kind, view in stream if kind == "progress" and view["status"] == "running"]
        assert steps and steps == sorted(steps)  # quick steps may coalesce into one event: never go back
        assert stream[-1][0] == "done" and stream[-1][1]["seed"] == seed
        assert stream[-1][1]["step"] == stream[-1][1]["total"] == 7  # PNDM runs one extra step
        assert stream[-1][1]["steps_done"] == stream[-1][1]["steps"] == 6, "progress in the steps asked for"
        assert all(view["steps"] == 6 and view["steps_done"] <= 6 for _, view in stream)
        status = client.get(f"/v1/jobs/{job_id}").json()
        assert status["status"] == "done" and status["result_url"].endswith("/result")
        result = client.get(status["result_url"])
        assert np.array_equal(pixels(result.content), engine_reference(engine, seed, num_inference_steps=6))


def test_cancel_stops_a_running_job_within_one_step_and_frees_the_worker(client, engine):
    long = form({**FAST, "num_inference_steps": 1000, "scheduler": "euler"})
    job = client.post("/v1/jobs", files=files(), data=long).json()
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["step"] >= 2)
    at_cancel = client.delete(f"/v1/jobs/{job['id']}").json()
    final = events(client, job["id"])[-1]
    assert final[0] == "cancelled" and final[1]["step"] <= at_cancel["step"] + 1 < 1000
    gone = client.get(f"/v1/jobs/{job['id']}/result")
    assert gone.status_code == 409 and gone.json()["error"]["field"] == "job_id"
    after = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 1}))
    assert np.array_equal(pixels(after.content), engine_reference(engine, 1))


def test_unknown_job_is_404_naming_the_id(client):
    answer = client.get("/v1/jobs/nope")
    assert answer.status_code == 404 and answer.json()["error"]["field"] == "job_id"
    assert client.delete("/v1/jobs/nope").status_code == 404


def test_full_queue_answers_429_with_retry_after(engine_dir):
    with running_server(engine_dir, "--workers", "1", "--queue-size", "1", "--max-steps", "1000") as s, \
            httpx.Client(base_url=s.url, timeout=60) as client:
        long = form({**FAST, "num_inference_steps": 1000, "scheduler": "euler"})
        running = client.post("/v1/jobs", files=files(), data=long).json()
        wait_until(lambda: client.get(f"/v1/jobs/{running['id']}").json()["status"] == "running")
        waiting = client.post("/v1/jobs", files=files(), data=long).json()
        refused = client.post("/v1/jobs", files=files(), data=long)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["field"] == "queue"
        assert client.delete(f"/v1/jobs/{waiting['id']}").json()["status"] == "cancelled"  # leaves the queue now
        accepted = client.post("/v1/jobs", files=files(), data=form(FAST))
        assert accepted.status_code == 202
        client.delete(f"/v1/jobs/{running['id']}")
        assert events(client, accepted.json()["id"])[-1][0] == "done"


def test_a_client_that_connects_while_the_engines_load_is_answered_not_refused(engine_dir):
    """The port listens from the start: connecting before the URL is announced waits for the answer."""
    port = free_port()
    command = [sys.executable, "-m", "inpaintrt.serve.cli", "--engine", str(engine_dir), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "".join(output)
            try:
                early = socket.create_connection(("127.0.0.1", port), timeout=120)
                break
            except ConnectionRefusedError:
                time.sleep(0.01)
        announced_before = any("inpaint-serve: http" in line for line in output)
        with early:
            early.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: early.recv(65536), b""))
        assert not announced_before, "the port took no connection until the engines had loaded"
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def test_sigterm_finishes_the_running_job_cancels_the_queued_and_exits(engine_dir):
    with running_server(engine_dir, "--workers", "1", "--max-steps", "600") as s, \
            httpx.Client(base_url=s.url, timeout=60) as client:
        long = form({**FAST, "num_inference_steps": 600, "scheduler": "euler"})
        running = client.post("/v1/jobs", files=files(), data=long).json()
        queued = client.post("/v1/jobs", files=files(), data=form(FAST)).json()
        wait_until(lambda: client.get(f"/v1/jobs/{running['id']}").json()["step"] >= 1)
        streams = {running["id"]: [], queued["id"]: []}
        threads = [threading.Thread(target=events, args=(client, i, found)) for i, found in streams.items()]
        for t in threads:
            t.start()
        wait_until(lambda: all(streams.values()))  # both streams are open before the signal
        s.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert s.process.wait(60) == 0
        assert streams[running["id"]][-1][0] == "done", "the running job finishes"
        assert streams[queued["id"]][-1][0] == "cancelled", "the queued job is cancelled"
        assert "stopped" in "".join(s.output)


def test_mask_edits_and_modes_reach_the_engine(client, engine):
    """Issue 15's arguments over HTTP give Engine.inpaint's result for the same seed."""
    extra = {"mask_grow": 4, "masked_content": "fill", "strength": 0.7, "mask_mode": "soft"}
    answer = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 3, **extra}))
    assert answer.status_code == 200, answer.text
    assert np.array_equal(pixels(answer.content), engine_reference(engine, 3, **extra))
    inverted = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 3, "mask_invert": "true"}))
    assert np.array_equal(pixels(inverted.content), engine_reference(engine, 3, mask_invert=True))
    wrong = client.post("/v1/inpaint", files=files(), data=form({**FAST, "masked_content": "blank"}))
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "masked_content"


OUTPAINT = {**FAST, "right": 40, "bottom": 24, "overlap": 8, "fill": "mirror"}  # 104x88 from 64x64: several passes


def test_outpaint_is_engine_outpaint_for_its_seed_synchronously_and_as_a_job(client, engine):
    steps = []
    expected = engine.outpaint(picture(), generator=9, progress=False, **OUTPAINT,
                               callback_on_step_end=lambda *_: steps.append(1)).images[0]
    assert expected.size == (104, 88)
    answer = client.post("/v1/outpaint", files={"image": files()["image"]}, data=form({**OUTPAINT, "seed": 9}))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", answer.text
    assert answer.headers["x-seed"] == "9"
    assert np.array_equal(pixels(answer.content), np.asarray(expected.convert("RGB")))

    body = {**OUTPAINT, "seed": 9, "image": base64.b64encode(png(picture())).decode()}
    job = client.post("/v1/outpaint/jobs", json=body)
    assert job.status_code == 202 and job.json()["total"] == len(steps), "total counts the steps of every pass"
    stream = events(client, job.json()["id"])
    last = stream[-1][1]
    assert stream[-1][0] == "done" and last["step"] == last["total"] == len(steps)
    assert (last["width"], last["height"]) == (104, 88)
    assert np.array_equal(pixels(client.get(last["result_url"]).content), np.asarray(expected.convert("RGB")))
    schema = client.get("/openapi.json").json()["paths"]["/v1/outpaint"]["post"]["requestBody"]["content"]
    properties = schema["application/json"]["schema"]["properties"]
    assert {"image", "left", "right", "top", "bottom", "overlap", "fill"} <= set(properties)
    assert "mask_image" not in properties and all(p.get("description") for p in properties.values())
