"""ControlNet on Ray Serve: a local Ray cluster with one replica of a tiny ControlNet engine. The
replica's facts reach /v1/info, a control image, scale, window and guess mode travel to the replica,
and the picture equals Engine.inpaint's for the same arguments and seed; a refusal still names its field."""
from __future__ import annotations

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

from controlnet_helpers import edge_picture  # noqa: E402
from serve_helpers import FAST, engine_reference, files, form, free_port, pixels, png  # noqa: E402


@pytest.fixture(scope="module")
def engine_dir(controlnet_exported):
    return controlnet_exported["engines"]["single"]  # one plain ControlNet


@pytest.fixture(scope="module")
def client(engine_dir):
    from ray import serve

    from inpaintrt.serve.app import Settings
    from inpaintrt.serve.ray_app import deploy

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             configure_logging=False)
    try:
        url = deploy(Settings(engine_dir=str(engine_dir), max_steps=1000), "127.0.0.1", free_port(), replicas=1)
        with httpx.Client(base_url=url, timeout=300) as http:
            yield http
    finally:
        serve.shutdown()
        ray.shutdown()


def control_parts(control) -> list:
    return list(files().items()) + [("control_image", ("control.png", png(control), "image/png"))]


def test_info_comes_from_the_replica_and_lists_the_controlnet(client):
    model = client.get("/v1/info").json()["model"]
    assert [net["kind"] for net in model["controlnets"]] == ["plain"]
    assert model["default_controlnet_scale"] == 0.5


def test_a_controlnet_request_on_a_replica_is_engine_inpaint(client, engine_dir):
    from inpaintrt import Engine

    control = dict(controlnet_conditioning_scale=0.8, control_guidance_start=0.1, control_guidance_end=0.9,
                   guess_mode=True)
    edges = edge_picture(64, 64, 5)
    answer = client.post("/v1/inpaint", files=control_parts(edges), data=form({**FAST, **control, "seed": 13}))
    assert answer.status_code == 200, answer.text
    engine = Engine.load(engine_dir)
    expected = engine_reference(engine, 13, control_image=edges, **control)
    assert np.array_equal(pixels(answer.content), expected)
    assert not np.array_equal(expected, engine_reference(engine, 13))  # the ControlNet steered


def test_a_refusal_names_its_field_before_reaching_a_replica(client):
    answer = client.post("/v1/inpaint", files=control_parts(edge_picture(32, 32, 1)), data=form({**FAST, "seed": 1}))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "control_image"
