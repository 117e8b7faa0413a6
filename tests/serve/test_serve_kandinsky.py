"""A Kandinsky 2.2 engine behind `inpaint-serve` (tiny checkpoints): fields left out take the
family's defaults (100 steps at guidance 4, as Engine.inpaint and the CLI do), not Stable
Diffusion's, and the result is Engine.inpaint's for the same seed."""
from __future__ import annotations

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import engine_reference, files, form, pixels, running_server  # noqa: E402

SIZE = {"height": 64, "width": 64, "prompt": "a red bench"}


@pytest.fixture(scope="module")
def served(kandinsky):
    with running_server(kandinsky.engine) as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            yield client


def test_info_gives_the_family_defaults(served):
    model = served.get("/v1/info").json()["model"]
    assert model["family"] == "kandinsky22"
    assert (model["default_steps"], model["default_guidance_scale"]) == (100, 4.0)


@pytest.mark.parametrize("fields", [{"num_inference_steps": 3}, {}], ids=["steps-given", "all-defaults"])
def test_fields_left_out_are_the_engines_defaults(served, kandinsky, fields):
    from inpaintrt import Engine

    answer = served.post("/v1/inpaint", files=files(), data=form({**SIZE, **fields, "seed": 5}))
    assert answer.status_code == 200, answer.text
    engine = Engine.load(kandinsky.engine)
    arguments = {**SIZE, **fields, "num_inference_steps": fields.get("num_inference_steps", 100)}
    expected = engine_reference(engine, 5, **arguments)  # guidance_scale: Engine.inpaint's own (4)
    assert np.array_equal(pixels(answer.content), expected)
    assert not np.array_equal(pixels(answer.content), engine_reference(engine, 5, **arguments, guidance_scale=7.5))


def test_a_stable_diffusion_field_is_refused_by_name(served):
    answer = served.post("/v1/inpaint", files=files(), data=form({**SIZE, "num_inference_steps": 2, "strength": 0.5}))
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "strength" and "kandinsky22" in answer.json()["error"]["message"]


@pytest.mark.parametrize("endpoint", ["/v1/outpaint", "/v1/outpaint/jobs"])
def test_outpaint_is_refused_before_a_job_is_queued(served, endpoint):
    image = {"image": files()["image"]}
    answer = served.post(endpoint, files=image, data=form({**SIZE, "num_inference_steps": 2, "right": 64}))
    assert answer.status_code == 422, answer.text
    assert "not available for Kandinsky" in answer.json()["error"]["message"]


def test_prior_fields_reach_the_prior(served, kandinsky):
    from inpaintrt import Engine

    prior = {"prior_guidance_scale": 2.0, "prior_num_inference_steps": 3, "negative_prior_prompt": "dark"}
    answer = served.post("/v1/inpaint", files=files(), data=form({**SIZE, "num_inference_steps": 3, "seed": 9, **prior}))
    assert answer.status_code == 200, answer.text
    engine = Engine.load(kandinsky.engine)
    expected = engine_reference(engine, 9, **SIZE, num_inference_steps=3, **prior)
    assert np.array_equal(pixels(answer.content), expected)
    assert not np.array_equal(expected, engine_reference(engine, 9, **SIZE, num_inference_steps=3))


def test_prior_fields_on_a_stable_diffusion_engine_are_refused_by_name(engines):
    with running_server(engines[9]) as server:
        answer = httpx.post(server.url + "/v1/jobs", files=files(), data=form({**SIZE, "prior_guidance_scale": 2}))
    assert answer.status_code == 422  # before any job is queued
    assert answer.json()["error"]["field"] == "prior_guidance_scale"
    assert "Kandinsky 2.2" in answer.json()["error"]["message"]
