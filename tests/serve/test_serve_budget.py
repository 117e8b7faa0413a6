"""Bounded work per request: pictures x UNet calls x pixels (x2 guided, ControlNets, outpaint passes)
and an estimate of host memory are checked before a job is queued, by one rule (serve/budget.py) on every
route, with a 422 naming the field that pushes the request over; number fields refuse JSON booleans."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from PIL import Image  # noqa: E402
from serve_helpers import FAST, b64, mask, picture, running_server  # noqa: E402

from inpaintrt.engine.preflight import Preflight  # noqa: E402
from inpaintrt.runtime.errors import InvalidArgument  # noqa: E402
from inpaintrt.serve import budget  # noqa: E402
from inpaintrt.serve.inputs import Limits  # noqa: E402

# Stable Diffusion 1.5's facts as the server reads them (PNDM: 51 UNet calls for 50 steps; SD's VAE decoder)
SD15 = {"default_height": 512, "default_width": 512, "default_steps": 50, "default_guidance_scale": 7.5,
        "latent_channels": 4, "controlnets": [],
        "sizes": budget.engine_sizes({"components": {"vae_decoder": {"files": ["vae_decoder.onnx"]}},
                                      "files": {"vae_decoder.onnx": {"bytes": int(49.49e6 * 4)}}})}


def sd15_work(height=1024, width=1024, steps=50, pictures=None, guidance=7.0, arguments=None, facts=SD15):
    params = SimpleNamespace(task="inpaint", height=height, width=width, num_inference_steps=steps,
                             guidance_scale=guidance, keep_input_size=False)
    planned = Preflight(height, width, 1.0, steps, steps + 1)  # PNDM's warm-up call
    return budget.request_work(params, {"image": Image.new("RGB", (64, 64)), **(arguments or {})}, facts, planned, 1,
                               Limits(2**20, 4096**2, 2048**2, 1000), pictures)


def refusal_of(work, limits=None, facts=SD15) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        budget.check_request(work, limits or Limits(2**20, 4096**2, 2048**2, 1000), facts)
    assert info.value.fix, info.value
    return info.value


def test_the_default_budget_is_a1111s_default_request_at_1024_and_refuses_eight_pictures_at_512():
    limits = Limits(2**20, 4096**2, 2048**2, 1000)
    assert limits.max_megapixel_steps == budget.DEFAULT_MAX_MEGAPIXEL_STEPS == 107
    within = sd15_work()  # batch_size 1, 50 steps, cfg 7 at 1024x1024
    assert 106.9 < within.megapixel_steps() <= 107
    budget.check_request(within, limits, SD15)
    error = refusal_of(sd15_work(512, 512, pictures=(8, "n_iter", 8)))  # txt2img {"n_iter": 8}
    assert error.field == "n_iter" and "214 megapixel-steps" in str(error) and "limit of 107" in str(error)
    assert "at most 4 pictures" in error.fix
    assert refusal_of(sd15_work(steps=150)).field == "num_inference_steps"
    assert refusal_of(sd15_work(1024, 2048)).field == "width"


def test_guidance_doubles_and_each_controlnet_adds_half_for_its_share_of_the_steps():
    nets = {**SD15, "controlnets": [{"kind": "plain"}, {"kind": "inpaint"}]}
    plain = sd15_work(512, 512).megapixel_steps()
    assert sd15_work(512, 512, guidance=1.0).megapixel_steps() == pytest.approx(plain / 2)
    # the inpaint ControlNet runs by default, the plain one only with a control picture (here for half the steps)
    assert sd15_work(512, 512, facts=nets).megapixel_steps() == pytest.approx(plain * 1.5)
    sent = {"control_image": [Image.new("RGB", (64, 64)), None], "control_guidance_end": [0.5, 1.0]}
    work = sd15_work(facts=nets, arguments=sent)
    assert work.megapixel_steps() == pytest.approx(sd15_work().megapixel_steps() * 1.75)
    small = Limits(2**20, 4096**2, 2048**2, 1000, max_megapixel_steps=30)
    assert refusal_of(sd15_work(512, 512, facts=nets, arguments=sent), small, nets).field == "control_image"


def test_memory_is_estimated_from_the_manifest_and_refused_naming_the_side():
    assert SD15["sizes"]["vae_width"] == 128
    needed = budget.request_memory(sd15_work(), SD15)
    assert 3.5e9 < needed < 4.5e9  # the VAE decoder's peak at 1024x1024 dominates
    limits = Limits(2**20, 4096**2, 2048**2, 1000, max_request_memory=2 * 2**30)
    error = refusal_of(sd15_work(1024, 768), limits)
    assert error.field == "height" and "MB of host memory" in str(error) and "--max-request-memory-mb" in str(error)
    side = int(error.fix.split("at most ")[1].split()[0])
    assert budget.request_memory(sd15_work(side, 768), SD15) <= limits.max_request_memory
    assert budget.request_memory(sd15_work(side + 8, 768), SD15) > limits.max_request_memory


def _error(answer, field: str) -> dict:
    assert answer.status_code == 422, (answer.status_code, answer.text[:300])
    error = answer.json()["error"]
    assert error["field"] == field and error["fix"], error
    return error


def _inpaint(**fields) -> dict:
    return {**FAST, "image": b64(picture()), "mask_image": b64(mask()), **fields}


def _outpaint(**fields) -> dict:
    return {**FAST, "image": b64(picture()), **fields}


def _img2img(**fields) -> dict:
    return {"init_images": [b64(picture())], "mask": b64(mask()), "steps": 2, "width": 64, "height": 64, **fields}


@pytest.fixture(scope="module")
def server(engine_dir):
    with running_server(engine_dir, "--workers", "1") as s:
        yield s


def test_eight_pictures_over_the_default_budget_each_a1111_route_names_n_iter(server):
    img2img = _img2img(n_iter=8, steps=50, width=512, height=512)  # denoising_strength 0.75: 38 UNet calls
    for path, body, most in (("/sdapi/v1/txt2img", {"n_iter": 8}, 4), ("/sdapi/v1/img2img", img2img, 5)):
        error = _error(httpx.post(f"{server.url}{path}", json=body, timeout=60), "n_iter")
        assert "limit of 107" in error["message"] and f"at most {most} pictures" in error["fix"], error
        assert "cfg_scale 1" in error["fix"] and "guidance_scale" not in error["fix"], error
    error = _error(httpx.post(f"{server.url}/v1/inpaint", json=_inpaint(num_inference_steps=150, height=1024,
                                                                         width=1024), timeout=60),
                   "num_inference_steps")
    assert "--max-megapixel-steps" in error["message"] and "at most 50" in error["fix"]
    limits = httpx.get(f"{server.url}/v1/info").json()["limits"]
    assert limits["max_megapixel_steps"] == 107 and limits["max_request_memory_bytes"] > 2**28


def test_number_fields_refuse_booleans_on_the_a1111_and_native_routes(server):
    for path, body, field in (("/sdapi/v1/txt2img", {"hr_resize_y": False}, "hr_resize_y"),
                              ("/sdapi/v1/img2img", _img2img(image_cfg_scale=False), "image_cfg_scale"),
                              ("/sdapi/v1/txt2img", {"steps": True}, "steps"),
                              ("/sdapi/v1/txt2img", {"cfg_scale": "7"}, "cfg_scale"),
                              ("/v1/inpaint", _inpaint(num_inference_steps=True), "num_inference_steps"),
                              ("/v1/inpaint", _inpaint(controlnet_conditioning_scale=[True]),
                               "controlnet_conditioning_scale"),
                              ("/v1/outpaint", _outpaint(left=True), "left")):
        error = _error(httpx.post(f"{server.url}{path}", json=body, timeout=60), field)
        assert "a number is needed" in error["message"], error


def test_webuiapi_still_works_within_the_budget(server):
    webuiapi = pytest.importorskip("webuiapi")
    host, port = server.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=2)
    result = api.img2img(images=[picture()], mask_image=mask(), prompt="a red bench", seed=5, width=64, height=64,
                         batch_size=2)  # webuiapi's defaults: image_cfg_scale 1.5, initial_noise_multiplier 1, ...
    assert len(result.images) == 2 and result.info["all_seeds"] == [5, 6]


def test_the_flags_change_the_limits_and_every_route_refuses_naming_the_field(engine_dir):
    with running_server(engine_dir, "--max-megapixel-steps", "0.1", "--max-request-memory-mb", "8") as s:
        limits = httpx.get(f"{s.url}/v1/info").json()["limits"]
        assert limits["max_megapixel_steps"] == 0.1 and limits["max_request_memory_bytes"] == 8 * 2**20
        post = lambda path, body: httpx.post(f"{s.url}{path}", json=body, timeout=120)  # noqa: E731
        assert post("/v1/inpaint", _inpaint()).status_code == 200  # 3 UNet calls x 64x64 x 2: 0.025
        for path in ("/v1/inpaint", "/v1/jobs"):
            error = _error(post(path, _inpaint(num_inference_steps=30)), "num_inference_steps")
            assert "limit of 0.1 " in error["message"] and "at most 11" in error["fix"], error
        assert post("/v1/outpaint", _outpaint(right=128)).status_code == 200  # 4 passes: 0.098
        for path in ("/v1/outpaint", "/v1/outpaint/jobs"):
            assert "6 passes" in _error(post(path, _outpaint(right=192)), "right")["message"]
        _error(post("/sdapi/v1/txt2img", {"width": 64, "height": 64, "steps": 2, "n_iter": 5}), "n_iter")
        _error(post("/sdapi/v1/img2img", _img2img(batch_size=2, steps=8)), "batch_size")
        assert post("/sdapi/v1/img2img", _img2img(batch_size=2)).status_code == 200
        error = _error(post("/v1/inpaint", _inpaint(height=512, width=256)), "height")  # memory comes first
        assert "MB of host memory" in error["message"] and "lower height to at most" in error["fix"]
        _error(post("/sdapi/v1/txt2img", {"width": 64, "height": 512, "steps": 2}), "height")


def test_a_server_at_the_default_budget_takes_its_engines_own_default_request():
    """An SDXL engine with an inpaint ControlNet (it runs on every request, control picture or not) asks
    1 x 51 x 1024^2 x 2 x 1.5 megapixel-steps by default: more than 107, so the default budget rises to it."""
    facts = {**SD15, "default_height": 1024, "default_width": 1024, "default_guidance_scale": 5.0,
             "controlnets": [{"kind": "inpaint"}]}
    assert budget.default_request_work(facts) == pytest.approx(51 * 1.048576 * 2 * 1.5)
    assert budget.default_request_work(SD15) <= budget.DEFAULT_MAX_MEGAPIXEL_STEPS


def test_the_default_memory_limit_takes_an_engines_own_default_request_even_where_weights_fill_the_machine():
    facts = {**SD15, "sizes": {**SD15["sizes"], "weights_bytes": 10**15}}  # more than any machine holds
    models = [SimpleNamespace(manager=SimpleNamespace(worker_count=2), facts=facts)]
    floor = budget.request_memory(budget.default_request(facts), facts)
    assert floor > 0 and budget.default_request_memory(models) == floor
