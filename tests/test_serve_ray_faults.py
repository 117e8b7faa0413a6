"""Faults on Ray Serve (a local 2-CPU cluster, the tiny model): an engine replica killed with SIGKILL
in the middle of a load loses no job (each reruns on a live replica and gives its seed's picture,
byte for byte), and a replica that cannot start makes /v1/health and requests answer 503 at once."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

from serve_helpers import FAST, engine_reference, files, form, pixels, wait_until  # noqa: E402

STEPS = 150  # long enough (~1.5 s a job here) that the kill lands while both replicas run a job
SEEDS = list(range(40, 48))
BOUND_S = 240  # every wait below fails rather than hang


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             configure_logging=False)
    try:
        yield free_port()
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(engine_dir, port: int, replicas: int, replica_wait_s: float) -> str:
    from inpaintrt.serve.app import Settings
    from inpaintrt.serve.ray_app import deploy as deploy_on_ray

    return deploy_on_ray(Settings(engine_dir=str(engine_dir), max_steps=1000), "127.0.0.1", port, replicas,
                         replica_wait_s=replica_wait_s)


def replica_pids(count: int) -> list[int]:
    """Ask the engine deployment until `count` different replicas have answered."""
    from ray import serve

    from inpaintrt.serve.ray_app import APP_NAME, ENGINE_DEPLOYMENT

    handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=APP_NAME)
    pids: set[int] = set()

    def answered() -> bool:
        pids.update(handle.pid.remote().result(timeout_s=30) for _ in range(4))
        return len(pids) >= count

    wait_until(answered, 60)
    return sorted(pids)


def finished(client, job_id: str) -> dict:
    view = client.get(f"/v1/jobs/{job_id}").json()
    return view if view["status"] in ("done", "failed", "cancelled") else None


def test_a_killed_replica_loses_no_job_and_changes_no_picture(cluster, engines, engine):
    url = deploy(engines[9], cluster, replicas=2, replica_wait_s=60)
    victim = replica_pids(2)[0]
    with httpx.Client(base_url=url, timeout=60) as client:
        jobs = [client.post("/v1/jobs", files=files(), data=form({**FAST, "num_inference_steps": STEPS, "seed": seed}))
                for seed in SEEDS]
        assert all(job.status_code == 202 for job in jobs), [job.text for job in jobs]
        ids = [job.json()["id"] for job in jobs]
        # both replicas are mid-job: kill one of them as a crash would
        wait_until(lambda: client.get("/v1/health").json()["busy"] == 2
                   and any(client.get(f"/v1/jobs/{i}").json()["step"] >= 3 for i in ids), BOUND_S)
        os.kill(victim, signal.SIGKILL)
        views = [wait_until(lambda i=i: finished(client, i), BOUND_S) for i in ids]
        assert [view["status"] for view in views] == ["done"] * len(ids), [view["error"] for view in views]
        restarted = [view for view in views if "restarted" in view]
        assert restarted, "the killed replica was running a job: that job must say it restarted"
        assert "rerun from step 0" in restarted[0]["restarted"][0]
        results = [client.get(f"/v1/jobs/{i}/result") for i in ids]
    for seed, result in zip(SEEDS, results):
        assert result.status_code == 200 and result.headers["x-seed"] == str(seed)
        expected = engine_reference(engine, seed, num_inference_steps=STEPS)
        assert np.array_equal(pixels(result.content), expected), f"seed {seed}: not the picture of a faultless run"


def test_a_replica_that_cannot_start_answers_503_at_once_and_recovers(cluster, engines, tmp_path):
    engine_dir = shutil.copytree(engines[9], tmp_path / "engine")
    url = deploy(engine_dir, cluster, replicas=1, replica_wait_s=5)
    pid = replica_pids(1)[0]
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/inpaint", files=files(), data=form(FAST)).status_code == 200
        engine_dir.rename(tmp_path / "moved")  # the restarted replica finds no engine folder
        os.kill(pid, signal.SIGKILL)
        health = wait_until(lambda: (r := client.get("/v1/health")).status_code == 503 and r, BOUND_S)
        assert "no engine replica is running" in health.json()["error"]["message"], health.text
        refused = client.post("/v1/inpaint", files=files(), data=form(FAST))
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1, refused.text
        assert refused.json()["error"]["field"] == "server"
        (tmp_path / "moved").rename(engine_dir)  # Serve keeps restarting the replica: it comes back
        wait_until(lambda: client.get("/v1/health").status_code == 200, BOUND_S, every=0.5)
        again = client.post("/v1/inpaint", files=files(), data=form(FAST))
        assert again.status_code == 200, again.text
