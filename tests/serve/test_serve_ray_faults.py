"""Faults on Ray Serve (a local 2-CPU cluster, the tiny model): an engine replica killed with SIGKILL
in the middle of a load loses no job (each reruns on a live replica and gives its seed's picture,
byte for byte), and a replica that cannot start makes /v1/health and requests answer 503 at once."""
from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

from serve_helpers import FAST, engine_reference, files, form, free_port, pixels, wait_until  # noqa: E402

STEPS = 150  # long enough (~1.5 s a job here) that the kill lands while both replicas run a job
SEEDS = list(range(40, 48))
BOUND_S = 240  # every wait below fails rather than hang


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


class Call:
    def __init__(self, answer):
        self.answer, self.cancelled = answer, 0

    def remote(self, *_):
        return self.answer() if callable(self.answer) else self

    def result(self, timeout_s=None):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def cancel(self):
        self.cancelled += 1


class FakeHandle:
    """A DeploymentHandle stand-in without Ray: each streamed run plays the next script; the ping that
    looks for a live replica answers, or times out."""

    def __init__(self, scripts: list, replica_answers: bool):
        scripts = list(scripts)
        self.facts = Call({"family": "sd15"})
        self.pid = Call(1234 if replica_answers else TimeoutError("no replica"))
        self.run = Call(lambda: scripts.pop(0))

    def options(self, **_):
        return self


def dies_after_one_step():
    from ray.exceptions import ActorDiedError

    yield ("step", 1)
    raise ActorDiedError()


def finishes():
    yield ("step", 1)
    yield ("step", 2)
    yield ("done", b"png", 8, 8, "replica-b")


def remote_engine(*scripts, replica_answers: bool):
    from inpaintrt.serve.ray_app import RemoteEngine

    return RemoteEngine(FakeHandle([script() for script in scripts], replica_answers), replica_wait_s=1)


def test_a_job_whose_replica_died_reruns_from_step_0_on_a_live_one():
    steps, restarts = [], []
    result = remote_engine(dies_after_one_step, finishes, replica_answers=True).inpaint(
        generator=3, callback_on_step_end=lambda step, *_: steps.append(step), on_restart=restarts.append)
    assert result.replica == "replica-b" and steps == [0, 0, 1], "progress starts again with the rerun"
    assert len(restarts) == 1 and "ActorDiedError" in restarts[0] and "rerun from step 0" in restarts[0]


def test_no_live_replica_within_the_bound_fails_the_job_with_503_and_retry_after():
    import asyncio

    from inpaintrt.serve.app import result_response
    from inpaintrt.serve.errors import ApiError
    from inpaintrt.serve.jobs import JobManager

    manager = JobManager(lambda: remote_engine(dies_after_one_step, replica_answers=False))
    manager.start(asyncio.new_event_loop())
    try:
        job = manager.submit({}, seed=3, total=2)
        assert job.done.wait(30), "the job must end, not wait for a replica forever"
    finally:
        manager.stop(10)
    assert job.status == "failed" and job.retry_after == 1 and len(job.restarts) == 1, job.error
    assert "no engine replica answered within 1 s" in job.error
    with pytest.raises(ApiError) as refused:
        result_response(job, "png")
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}


def test_the_ping_that_timed_out_is_cancelled_and_one_that_answered_is_not():
    from inpaintrt.serve.jobs import EngineUnavailable

    silent = remote_engine(replica_answers=False)
    with pytest.raises(EngineUnavailable):
        silent._wait_for_a_replica()
    assert silent.handle.pid.cancelled == 1
    answering = remote_engine(replica_answers=True)
    answering._wait_for_a_replica()
    assert answering.handle.pid.cancelled == 0


def test_a_job_that_gave_up_waiting_leaves_no_ping_to_run_later(cluster, tmp_path):
    """The only replica is busy past the wait: the job fails with EngineUnavailable, and its ping, cancelled,
    never reaches the replica once it is free (it would otherwise run there, after the job's 503)."""
    import time
    from pathlib import Path

    from ray import serve

    from inpaintrt.serve.jobs import EngineUnavailable
    from inpaintrt.serve.ray_app import RemoteEngine

    @serve.deployment(max_ongoing_requests=1)
    class CountsPings:  # the engine deployment's facts and pid, and a call that keeps the replica busy
        def __init__(self):
            self.pings = 0

        def facts(self):
            return {}

        def pid(self):
            self.pings += 1
            return os.getpid()

        def hold(self, marker: str, seconds: float):
            Path(marker).touch()
            time.sleep(seconds)

        def count(self):
            return self.pings

    serve.start(http_options={"host": "127.0.0.1", "port": cluster})  # as deploy() starts it, for the tests after
    handle = serve.run(CountsPings.bind(), name="counts-pings", route_prefix=None)
    try:
        engine = RemoteEngine(handle, replica_wait_s=1)
        busy = handle.hold.remote(str(tmp_path / "holding"), 4.0)
        wait_until(lambda: (tmp_path / "holding").exists(), 30)
        with pytest.raises(EngineUnavailable, match="no engine replica answered within 1 s"):
            engine._wait_for_a_replica()
        busy.result(timeout_s=30)
        assert [handle.count.remote().result(timeout_s=30) for _ in range(2)] == [0, 0]
        engine._wait_for_a_replica()  # a free replica answers the next ping, which counts
        assert handle.count.remote().result(timeout_s=30) == 1
    finally:
        serve.delete("counts-pings")


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
