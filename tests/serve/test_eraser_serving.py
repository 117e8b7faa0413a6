"""An eraser engine (LaMa) behind the HTTP API, beside a diffusion engine in one `inpaint-serve`: the inpaint
route erases with no prompt, giving exactly EraserEngine.inpaint's picture (every unmasked pixel the input's);
/v1/info says each engine's kind; each kind refuses the other's fields by name (the engines' own rules);
outpaint, the A1111 routes and a picture over the output limit are clear 4xx."""
from __future__ import annotations

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import (FAST, b64, files, finished_job, form, mask, picture, pixels, png, refusal,  # noqa: E402
                           running_server)

MAX_OUTPUT = 96 * 96  # the tiny diffusion engine's 64x64 fits; a 128x96 picture to erase does not
SIZE = (70, 50)  # not a multiple of LaMa's 8: the engine pads and crops back


@pytest.fixture(scope="module")
def server(eraser_engine_dir, engine_dir):
    with running_server(eraser_engine_dir, "--engine", str(engine_dir), "--max-output-pixels", str(MAX_OUTPUT)) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def eraser(eraser_engine_dir):
    from inpaintrt import Engine

    return Engine.load(eraser_engine_dir)


def inputs():
    return picture(*SIZE, seed=4), mask(*SIZE)


def erased(eraser, **arguments) -> np.ndarray:
    image, hole = inputs()
    return np.asarray(eraser.inpaint(image, hole, progress=False, **arguments).images[0].convert("RGB"))


def test_erase_with_no_prompt_is_the_engines_picture(client, eraser):
    image, hole = inputs()
    answer = client.post("/v1/inpaint", files=files(image, hole))  # no fields at all: the default engine erases
    assert answer.status_code == 200, answer.text
    result, kept = pixels(answer.content), np.asarray(hole) == 0
    assert result.shape == (SIZE[1], SIZE[0], 3), "an eraser answers at the picture's own size"
    assert np.array_equal(result, erased(eraser))
    assert np.array_equal(result[kept], np.asarray(image)[kept]), "every unmasked pixel is the input's"
    assert (result[~kept] != np.asarray(image)[~kept]).any()


def test_eraser_fields_reach_the_engine_by_json_and_as_a_job(client, eraser, eraser_engine_dir):
    image, hole = inputs()
    fields = {"hd_strategy": "resize", "hd_strategy_resize_limit": 32, "mask_grow": 3}
    answer = client.post("/v1/inpaint", json={"image": b64(image), "mask_image": b64(hole), "prompt": "",
                                              "model": eraser_engine_dir.name, **fields})
    assert answer.status_code == 200, answer.text
    assert np.array_equal(pixels(answer.content), erased(eraser, **fields))
    view = finished_job(client, client.post("/v1/jobs", files=files(image, hole), data=form(fields)))
    assert view["status"] == "done" and (view["steps"], view["steps_done"]) == (1, 1), "one forward pass"
    assert np.array_equal(pixels(client.get(f"/v1/jobs/{view['id']}/result").content), erased(eraser, **fields))


def test_info_says_each_engines_kind(client, eraser_engine_dir, engine_dir):
    info = client.get("/v1/info").json()
    assert info["model"]["kind"] == "eraser" and info["model"]["family"] == "lama"
    kinds = {model["name"]: model["kind"] for model in info["models"]}
    assert kinds == {eraser_engine_dir.name: "eraser", engine_dir.name: "diffusion"}


@pytest.mark.parametrize("field, value", [("prompt", "a red bench"), ("num_inference_steps", 5),
                                          ("guidance_scale", 3.0), ("strength", 0.5), ("keep_unmasked", True),
                                          ("seed", 7)])
def test_an_eraser_refuses_diffusion_fields_by_name(client, field, value):
    error = refusal(client.post("/v1/inpaint", files=files(*inputs()), data=form({field: value})))
    assert error["field"] == field and "eraser" in error["message"] and field in error["fix"] + error["message"]


def test_a_diffusion_engine_refuses_eraser_fields_by_name_and_takes_their_defaults(client, engine_dir):
    diffusion = {**FAST, "model": engine_dir.name, "seed": 1}
    error = refusal(client.post("/v1/inpaint", files=files(), data=form({**diffusion, "hd_strategy": "resize"})))
    assert error["field"] == "hd_strategy" and "LaMa" in error["message"] and "leave it out" in error["fix"]
    left = client.post("/v1/inpaint", files=files(), data=form(diffusion))
    defaults = client.post("/v1/inpaint", files=files(), data=form({**diffusion, "hd_strategy": "crop",
                                                                    "hd_strategy_crop_margin": 128}))
    assert left.status_code == defaults.status_code == 200, defaults.text
    assert left.content == defaults.content, "an eraser field at its default changes nothing"


@pytest.mark.parametrize("path", ["/v1/outpaint", "/v1/outpaint/jobs"])
def test_outpaint_on_an_eraser_is_refused_naming_model(client, path):
    answer = client.post(path, files={"image": ("i.png", png(picture(*SIZE)), "image/png")}, data={"right": "16"})
    error = refusal(answer)
    assert answer.status_code == 422 and error["field"] == "model" and "eraser" in error["message"]


@pytest.mark.parametrize("fields, field", [({"hd_strategy": "zoom"}, "hd_strategy"),
                                           ({"hd_strategy_resize_limit": 4}, "hd_strategy_resize_limit"),
                                           ({"mask_grow": 2, "mask_shrink": 2}, "mask_shrink")])
def test_bad_eraser_fields_are_422s_naming_them(client, fields, field):
    answer = client.post("/v1/inpaint", files=files(*inputs()), data=form(fields))
    assert answer.status_code == 422 and refusal(answer)["field"] == field, answer.text


def test_the_output_limit_applies_to_the_picture_erased(client):
    answer = client.post("/v1/inpaint", files=files(picture(128, 96), mask(128, 96)))
    error = refusal(answer)
    assert answer.status_code == 422 and error["field"] == "image" and str(MAX_OUTPUT) in error["message"]


def test_a1111_img2img_on_an_eraser_is_refused_naming_the_checkpoint(client):
    image, hole = inputs()
    answer = client.post("/sdapi/v1/img2img", json={"init_images": [b64(image)], "mask": b64(hole)})
    error = refusal(answer)
    assert answer.status_code == 422 and error["field"] == "sd_model_checkpoint" and "/v1/inpaint" in error["fix"]
    assert client.get("/v1/health").json()["status"] == "ok", "and the server keeps answering"


def test_a_ray_replica_runs_an_eraser_job(eraser):
    """The replica's call (ray_app.InpaintEngine.run) without a cluster: one step event, then the picture."""
    import asyncio

    pytest.importorskip("ray")
    from inpaintrt.serve.ray_app import InpaintEngine

    replica = object.__new__(InpaintEngine.func_or_class)  # its __init__ loads an engine inside Serve
    replica.engine, replica.replica = eraser, "replica-1"
    image, hole = inputs()

    async def events():
        return [event async for event in replica.run({"image": image, "mask_image": hole}, 0)]

    got = asyncio.run(events())
    assert got[0] == ("step", 1) and got[-1][0] == "done", got[:1]
    assert np.array_equal(pixels(got[-1][1]), erased(eraser))
