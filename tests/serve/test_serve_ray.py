"""The API on Ray Serve: a local Ray cluster (2 CPUs), an ingress and 2 engine replicas of the tiny
model. The results equal the single-process server's for the same seeds, requests spread over both
replicas, and job events and cancel work through the replicas."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

from serve_helpers import FAST, files, form, free_port, picture, pixels, running_server, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def ray_url(engines):
    from ray import serve

    from inpaintrt.serve.app import Settings
    from inpaintrt.serve.ray_app import deploy

    # a small, local, bounded cluster: 2 CPUs (one per engine replica), a small object store, no dashboard
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             configure_logging=False)
    try:
        yield deploy(Settings(engine_dir=str(engines[9]), max_steps=1000), "127.0.0.1", free_port(), replicas=2)
    finally:
        serve.shutdown()
        ray.shutdown()


def test_same_results_as_the_single_process_server_spread_over_both_replicas(ray_url, engines):
    seeds = list(range(20, 28))

    def run(url, seed):
        with httpx.Client(base_url=url, timeout=120) as client:
            return client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": seed}))

    with ThreadPoolExecutor(4) as pool:
        on_ray = list(pool.map(lambda s: run(ray_url, s), seeds))
    with running_server(engines[9]) as single:
        alone = [run(single.url, s) for s in seeds]
    for seed, remote, local in zip(seeds, on_ray, alone):
        assert remote.status_code == 200 and remote.headers["x-seed"] == str(seed), remote.text
        assert np.array_equal(pixels(remote.content), pixels(local.content)), f"seed {seed} differs on Ray"
    replicas = {r.headers["x-replica"] for r in on_ray}
    assert len(replicas) == 2, f"requests went to {replicas}, not to both replicas"


def test_info_jobs_events_cancel_and_outpaint_through_the_replicas(ray_url, engines):
    with httpx.Client(base_url=ray_url, timeout=120) as client:
        info = client.get("/v1/info").json()
        assert info["model"]["unet_in_channels"] == 9 and info["limits"]["workers"] == 2
        job = client.post("/v1/jobs", files=files(),
                          data=form({**FAST, "num_inference_steps": 1000, "scheduler": "euler"})).json()
        wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["step"] >= 2, 120)
        at_cancel = client.delete(f"/v1/jobs/{job['id']}").json()
        kinds = []
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    kinds.append(json.loads(line[6:]))
        assert kinds[-1]["status"] == "cancelled" and kinds[-1]["step"] <= at_cancel["step"] + 1
        again = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 3}))
        assert again.status_code == 200, "the replicas keep serving after a cancel"
        bad = client.post("/v1/inpaint", files=files(), data=form({**FAST, "scheduler": "nope"}))
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "scheduler"

        from inpaintrt import Engine

        sides = {"left": 24, "top": 16, "fill": "noise"}
        grown = client.post("/v1/outpaint", files={"image": files()["image"]}, data=form({**FAST, **sides, "seed": 4}))
        assert grown.status_code == 200 and grown.headers["x-replica"], grown.text
        expected = Engine.load(engines[9]).outpaint(picture(), generator=4, progress=False, **FAST, **sides).images[0]
        assert np.array_equal(pixels(grown.content), np.asarray(expected.convert("RGB"))), "outpaint on a replica"
