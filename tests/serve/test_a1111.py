"""AUTOMATIC1111's /sdapi/v1 routes against a real `inpaint-serve` on 127.0.0.1, driven by the real
`webuiapi` client: each image equals Engine.inpaint with the mapped arguments and seed + i, the model
and sampler listings, progress and interrupt, and every refusal naming the A1111 field."""
from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import pytest

webuiapi = pytest.importorskip("webuiapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import mask, picture, png, running_server, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def server(engine_dir):
    with running_server(engine_dir, "--workers", "1", "--queue-size", "8", "--max-steps", "200") as s:
        yield s


@pytest.fixture(scope="module")
def api(server):
    host, port = server.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=2)


def rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def expected(engine, seed: int, image=None, mask_image=None, **arguments) -> np.ndarray:
    found = engine.inpaint(picture() if image is None else image, mask() if mask_image is None else mask_image,
                           generator=seed, progress=False, **arguments).images[0]
    return rgb(found)


# what webuiapi's img2img defaults become (docs/a1111.md's table): strength 0.75, cfg 7, blur 4, fill,
# only-masked (padding_mask_crop 0) at width x height
WEBUIAPI_IMG2IMG = dict(strength=0.75, guidance_scale=7.0, blur_factor=4, masked_content="fill", padding_mask_crop=0,
                        height=64, width=64, scheduler="euler_a", num_inference_steps=2)


def test_img2img_with_a_mask_is_engine_inpaint_for_seed_and_seed_plus_one(api, engine):
    result = api.img2img(images=[picture()], mask_image=mask(), prompt="a red bench", seed=41, width=64, height=64,
                         batch_size=2)
    assert result.info["all_seeds"] == [41, 42] and result.info["sampler_name"] == "Euler a"
    assert len(result.images) == 2
    for image, seed in zip(result.images, (41, 42)):
        assert np.array_equal(rgb(image), expected(engine, seed, prompt="a red bench", **WEBUIAPI_IMG2IMG))
    assert not np.array_equal(rgb(result.images[0]), rgb(result.images[1]))
    assert result.parameters["seed"] == 41 and "init_images" not in result.parameters


def test_whole_picture_mode_pastes_the_input_back_and_maps_every_field(api, engine):
    result = api.img2img(images=[picture()], mask_image=mask(), prompt="a bench", negative_prompt="blurry", seed=7,
                         width=64, height=64, steps=3, cfg_scale=5.5, denoising_strength=0.6, sampler_name="DPM++ 2M",
                         scheduler="Karras", mask_blur=2, inpainting_fill=1, inpaint_full_res=False, n_iter=1)
    want = expected(engine, 7, prompt="a bench", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.5,
                    strength=0.6, scheduler="dpmpp_2m_karras", blur_factor=2, masked_content="original",
                    keep_unmasked=True, height=64, width=64)
    found = rgb(result.image)
    assert np.array_equal(found, want)
    far = slice(0, 8)  # rows the blurred mask does not reach: A1111 pastes the input back there
    assert np.array_equal(found[far], rgb(picture())[far]) and not np.array_equal(found, rgb(picture()))


def test_txt2img_repaints_a_blank_canvas(api, engine):
    from PIL import Image

    result = api.txt2img(prompt="a cat", seed=3, width=64, height=64, steps=2, cfg_scale=6.0, sampler_name="Euler")
    canvas, full = Image.new("RGB", (64, 64)), Image.new("L", (64, 64), 255)
    assert np.array_equal(rgb(result.image), expected(engine, 3, canvas, full, prompt="a cat", num_inference_steps=2,
                                                       guidance_scale=6.0, strength=1.0, scheduler="euler",
                                                       height=64, width=64))


def test_listings_and_options(api, server):
    assert set(api.util_get_sampler_names()) >= {"Euler", "Euler a", "DPM++ 2M", "DDIM", "PLMS", "UniPC", "LCM"}
    assert api.util_get_scheduler_names() == ["automatic", "karras"]
    [title] = api.util_get_model_names()
    assert title.startswith("engine9 [")
    api.util_set_model("engine9")  # webuiapi finds the closest title and posts it: accepted
    assert api.util_get_current_model() == title
    refused = httpx.post(f"{server.url}/sdapi/v1/options", json={"samples_format": "jpg"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "samples_format"
    assert api.get_progress()["state"]["job_count"] == 0


def test_progress_then_interrupt_answers_with_what_finished(api, server):
    answer = {}

    def long_request():
        answer["result"] = api.img2img(images=[picture()], mask_image=mask(), seed=1, width=64, height=64, steps=150,
                                       batch_size=2)

    thread = threading.Thread(target=long_request)
    thread.start()
    seen = wait_until(lambda: (p := api.get_progress())["progress"] > 0 and p, seconds=60, every=0.05)
    assert seen["state"]["job_count"] == 2 and 0 < seen["state"]["sampling_step"] <= seen["state"]["sampling_steps"]
    started = time.monotonic()
    assert api.interrupt() == {}
    thread.join(60)
    assert not thread.is_alive() and time.monotonic() - started < 30
    result = answer["result"]
    assert result.info["interrupted"] is True and len(result.images) < 2
    assert api.get_progress()["state"]["job_count"] == 0


def _b64(image) -> str:
    return base64.b64encode(png(image)).decode()


@pytest.mark.parametrize("change, field, says", [
    ({"init_images": ["not base64!"]}, "init_images", "not valid base64"),
    ({"mask": _b64(mask(32, 32))}, "mask", "mask is 32x32 but init_images is 64x64"),
    ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
    ({"batch_size": 9}, "batch_size", "over this server's 8 queue slots"),
    ({"steps": 201}, "steps", "steps=201 is above this server's max_steps=200"),
    ({"denoising_strength": 2}, "denoising_strength", "outside (0, 1]"),
    ({"sampler_name": "Euler b"}, "sampler_name", "is not one of Euler, Euler a, Heun"),
    ({"scheduler": "Exponential"}, "scheduler", "is not one of automatic, karras"),
    ({"restore_faces": True}, "restore_faces", "asks for face restoration"),
    ({"alwayson_scripts": {"ADetailer": {}}}, "alwayson_scripts", "asks for extensions"),
    ({"resize_mode": 2}, "resize_mode", "asks for resize modes other than 0"),
    ({"mask_blur_x": 2, "mask_blur_y": 6}, "mask_blur_x", "differ"),
    ({"cfg_sacle": 7}, "cfg_sacle", "did you mean cfg_scale"),
])
def test_bad_requests_are_refused_naming_the_a1111_field(server, change, field, says):
    body = {"init_images": [_b64(picture())], "mask": _b64(mask()), "steps": 2, "width": 64, "height": 64, **change}
    answer = httpx.post(f"{server.url}/sdapi/v1/img2img", json=body, timeout=60)
    assert answer.status_code in (400, 413, 422), answer.text
    error = answer.json()["error"]
    assert error["field"] == field and says in error["message"], error


def test_server_still_serves_after_bad_requests_and_routes_can_be_turned_off(server, engine_dir):
    body = {"init_images": [_b64(picture())], "mask": _b64(mask()), "steps": 2, "width": 64, "height": 64, "seed": 2}
    assert httpx.post(f"{server.url}/sdapi/v1/img2img", json=body, timeout=60).status_code == 200
    with running_server(engine_dir, "--no-a1111") as plain:
        answer = httpx.post(f"{plain.url}/sdapi/v1/img2img", json=body, timeout=60)
        assert answer.status_code == 404 and json.loads(answer.text)["error"]["field"] == "path"
