"""Kandinsky 2.2 image prompts over HTTP: a real `inpaint-serve` with tiny Kandinsky engines (one exported
with the prior's CLIP image encoder, one decoder-only) and a Stable Diffusion one. The served picture is
KandinskyEngine.inpaint's with the same image_prompts, prompt_weight and seed; refusals name the field."""
from __future__ import annotations


import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import (  # noqa: E402
    b64, engine_reference, files, finished_job, form, mask, picture, pixels, png, refusal, running_server)

FAST = {"num_inference_steps": 2, "prior_num_inference_steps": 2, "height": 64, "width": 64,
        "prompt": "a red bench"}
MIXED, DECODER, SD = "engine", "decoder-engine", "engine9"  # the engines' directory names


@pytest.fixture(scope="module")
def directories(kandinsky, engines):
    return {MIXED: kandinsky.engine, DECODER: kandinsky.decoder_engine, SD: engines[9]}


@pytest.fixture(scope="module")
def served(directories):
    with running_server(directories[MIXED], "--engine", str(directories[DECODER]), "--engine",
                        str(directories[SD]), "--max-batch", "4") as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            yield client


@pytest.fixture(scope="module")
def engine(directories):
    from inpaintrt import Engine

    return Engine.load(directories[MIXED])


def prompts(count: int = 2) -> list:
    return [picture(seed=40 + i) for i in range(count)]


def prompt_parts(pictures) -> list:
    return list(files().items()) + [("image_prompt", (f"p{i}.png", png(p), "image/png")) for i, p in enumerate(pictures)]


def test_info_says_which_engines_take_image_prompts(served):
    models = {model["name"]: model for model in served.get("/v1/info").json()["models"]}
    assert (models[MIXED]["image_prompts"], models[DECODER]["image_prompts"], models[SD]["image_prompts"]) == (
        True, False, False)
    assert models[MIXED]["controlnets"] == [] and models[MIXED]["default_controlnet_scale"] is None


def test_two_image_prompts_multipart_are_engine_inpaint(served, engine):
    fields = {**form({**FAST, "seed": 8, "prompt_weight": 0.7}), "image_prompt_weight": ["0.3", "0.5"]}
    answer = served.post("/v1/inpaint", files=prompt_parts(prompts()), data=fields)
    assert answer.status_code == 200, answer.text
    pairs = list(zip(prompts(), [0.3, 0.5]))
    expected = engine_reference(engine, 8, **FAST, image_prompts=pairs, prompt_weight=0.7)
    assert np.array_equal(pixels(answer.content), expected)
    assert not np.array_equal(expected, engine_reference(engine, 8, **FAST))  # the pictures did count


def test_one_image_prompt_json_job_with_default_weight(served, engine):
    body = {"image": b64(picture()), "mask_image": b64(mask()), **FAST, "seed": 9, "image_prompt": b64(prompts(1)[0])}
    view = finished_job(served, served.post("/v1/jobs", json=body))
    assert view["status"] == "done", view
    expected = engine_reference(engine, 9, **FAST, image_prompts=[(prompts(1)[0], 1.0)])
    assert np.array_equal(pixels(served.get(f"/v1/jobs/{view['id']}/result").content), expected)


def test_json_lists_of_pictures_and_weights(served, engine):
    body = {"image": b64(picture()), "mask_image": b64(mask()), **FAST, "seed": 10,
            "image_prompt": [b64(p) for p in prompts()], "image_prompt_weight": [1.0, 0.25], "prompt_weight": 0.5}
    answer = served.post("/v1/inpaint", json=body)
    assert answer.status_code == 200, answer.text
    expected = engine_reference(engine, 10, **FAST, image_prompts=list(zip(prompts(), [1.0, 0.25])), prompt_weight=0.5)
    assert np.array_equal(pixels(answer.content), expected)


REFUSED = [
    ("a Stable Diffusion engine", SD, 1, {}, "image_prompt", "leave image_prompt out"),
    ("an engine without the image encoder", DECODER, 1, {}, "image_prompt", "re-export"),
    ("five image prompts", MIXED, 5, {}, "image_prompt", "at most 4"),
    ("more weights than image prompts", MIXED, 1, {"image_prompt_weight": [0.5, 0.5]}, "image_prompt_weight",
     "one weight per image_prompt"),
    ("weights without image prompts", MIXED, 0, {"image_prompt_weight": [0.5]}, "image_prompt_weight",
     "one weight per image_prompt"),
    ("a weight that is not a number", MIXED, 1, {"image_prompt_weight": ["heavy"]}, "image_prompt_weight",
     "finite number"),
    ("prompt_weight on Stable Diffusion", SD, 0, {"prompt_weight": 0.5}, "prompt_weight", "leave prompt_weight out"),
    ("prompt_weight without image prompts", MIXED, 0, {"prompt_weight": 0.5}, "prompt_weight",
     "send image_prompt pictures"),
]


@pytest.mark.parametrize("model,count,fields,field,fix", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
@pytest.mark.parametrize("kind", ["multipart", "json"])
def test_refusals_name_the_field(served, kind, model, count, fields, field, fix):
    plain = {**FAST, "model": model} if model != SD else {"num_inference_steps": 2, "height": 64, "width": 64,
                                                           "model": model}
    if kind == "json":
        body = {"image": b64(picture()), "mask_image": b64(mask()), **plain, **fields}
        if count:
            body["image_prompt"] = [b64(p) for p in prompts(count)]
        answer = served.post("/v1/jobs", json=body)
    else:
        data = {**form(plain), **{name: [str(v) for v in (values if isinstance(values, list) else [values])]
                                  for name, values in fields.items()}}
        answer = served.post("/v1/jobs", files=prompt_parts(prompts(count)), data=data)
    error = refusal(answer)
    assert error["field"] == field, error
    assert fix in error["fix"] + error["message"], error


def test_a_refused_image_prompt_leaves_the_queue_working(served, engine):
    bad = served.post("/v1/inpaint", files=prompt_parts(prompts(5)), data=form(FAST))
    assert refusal(bad)["field"] == "image_prompt"
    good = served.post("/v1/inpaint", files=prompt_parts(prompts(1)), data=form({**FAST, "seed": 4}))
    assert good.status_code == 200, good.text
    assert np.array_equal(pixels(good.content), engine_reference(engine, 4, **FAST, image_prompts=[(prompts(1)[0], 1.0)]))
