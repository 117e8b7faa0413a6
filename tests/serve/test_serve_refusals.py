"""Refusals at the server: bad requests get a 4xx JSON error naming the field and the fix, never a 5xx.

The bad-input corpus as a table: each request gets its status and field, and the server keeps answering good
requests afterwards. Every refusal's fix is its own: each field the request model checks (its bounds from
engine/argument_specs.py) and each refusal the engine's checks make answer with the status, the field, and a fix
that says what to send for that refusal, not a generic one. Bad inputs found in use: an upload named as such (not
an object repr), the side that is too large, unknown fields with a likely meaning. The same refusals at the
engine: tests/engine/test_engine_refusals.py."""
from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import FAST, files, form, mask, picture, png, running_server  # noqa: E402

from inpaintrt.engine.argument_specs import SPECS  # noqa: E402
from inpaintrt.serve.errors import FIELD_FIXES, field_fix  # noqa: E402
from inpaintrt.serve.inputs import InpaintParameters, OutpaintParameters  # noqa: E402


# the bad-input corpus (a server started with --max-upload-mb 1) ----------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge picture (a decompression bomb), with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def upload(image: bytes | None = None, mask_bytes: bytes | None = None, **fields):
    """A multipart request: (method, path, httpx keyword arguments)."""
    parts = {"image": ("i.png", png(picture()) if image is None else image, "image/png"),
             "mask_image": ("m.png", png(mask()) if mask_bytes is None else mask_bytes, "image/png")}
    parts = {k: v for k, v in parts.items() if v[1] != b"-"}  # b"-": leave the part out
    return "POST", "/v1/inpaint", {"files": parts, "data": form({**FAST, **fields})}


def outpaint(image: bytes | None = None, path: str = "/v1/outpaint", **fields):
    """A multipart outpaint request (no mask: outpaint makes it)."""
    return "POST", path, {"files": {"image": ("i.png", png(picture()) if image is None else image, "image/png")},
                          "data": form({**FAST, **fields})}


def as_json(body, path: str = "/v1/inpaint") -> tuple:
    return "POST", path, {"content": body if isinstance(body, bytes) else None,
                                   "json": None if isinstance(body, bytes) else body,
                                   "headers": {"content-type": "application/json"}}


def json_body(**overrides) -> dict:
    return {**FAST, "image": base64.b64encode(png(picture())).decode(),
            "mask_image": base64.b64encode(png(mask())).decode(), **overrides}


def without_mask(**overrides) -> dict:
    return {k: v for k, v in json_body(**overrides).items() if k != "mask_image"}


good_png = png(picture())
tiny_png = png(picture(1, 1))
black_mask = png(mask().point(lambda _: 0))
noisy = np.random.default_rng(0).integers(0, 256, (900, 900, 3), np.uint8)  # ~2.4 MB as PNG: over a 1 MB cap
big_noisy_png = png(__import__("PIL.Image", fromlist=["Image"]).fromarray(noisy))


def chunked(data: bytes):
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]


CASES = [
    # name, (method, path, kwargs), status, field
    ("non-image bytes", upload(image=b"hello, not a picture"), 422, "image"),
    ("truncated png", upload(image=good_png[: len(good_png) // 2]), 422, "image"),
    ("empty file", upload(image=b""), 422, "image"),
    ("1x1 picture", upload(image=tiny_png, mask_bytes=tiny_png), 422, "image"),
    ("decompression bomb 20000x20000", upload(image=png_claiming(20000, 20000)), 413, "image"),
    ("picture over max_pixels 5000x5000", upload(image=png_claiming(5000, 5000)), 413, "image"),
    ("mask bomb", upload(mask_bytes=png_claiming(30000, 30000)), 413, "mask_image"),
    ("mask of another size", upload(mask_bytes=png(mask(32, 48))), 422, "mask_image"),
    ("all-black mask", upload(mask_bytes=black_mask), 422, "mask_image"),
    ("missing image", upload(image=b"-"), 422, "image"),
    ("missing mask", upload(mask_bytes=b"-"), 422, "mask_image"),
    ("image as a text field", ("POST", "/v1/inpaint", {"data": {"image": "x", **form(FAST)},
                                                      "files": {"mask_image": ("m.png", png(mask()), "image/png")}}),
     422, "image"),
    ("steps not a number", upload(num_inference_steps="many"), 422, "num_inference_steps"),
    ("steps fractional", upload(num_inference_steps="2.5"), 422, "num_inference_steps"),
    ("steps zero", upload(num_inference_steps=0), 422, "num_inference_steps"),
    ("steps over max_steps", upload(num_inference_steps=151), 422, "num_inference_steps"),
    ("guidance not a number", upload(guidance_scale="high"), 422, "guidance_scale"),
    ("guidance nan", upload(guidance_scale="nan"), 422, "guidance_scale"),
    ("guidance negative", upload(guidance_scale=-1), 422, "guidance_scale"),
    ("strength zero", upload(strength=0), 422, "strength"),
    ("strength above one", upload(strength=1.5), 422, "strength"),
    ("strength leaving no step", upload(strength=0.1, num_inference_steps=2), 422, "strength"),
    ("seed negative", upload(seed=-1), 422, "seed"),
    ("height not a multiple of 8", upload(height=65), 422, "height"),
    ("output over max_output_pixels", upload(height=2048, width=2048), 422, "height"),
    ("keep_input_size with height", upload(keep_input_size=True, height=64), 422, "keep_input_size"),
    ("blur negative", upload(blur_factor=-2), 422, "blur_factor"),
    ("keep_unmasked not a boolean", upload(keep_unmasked="maybe"), 422, "keep_unmasked"),
    ("unknown scheduler", upload(scheduler="dpm_fancy"), 422, "scheduler"),
    ("unknown scheduler option", upload(scheduler="euler", scheduler_options='{"warp": 9}'), 422, "scheduler_options"),
    ("scheduler options not JSON", upload(scheduler_options="{eta: 1"), 422, "scheduler_options"),
    ("scheduler option of the wrong type", upload(scheduler="euler", scheduler_options='{"use_karras_sigmas": "maybe"}'),
     422, "scheduler_options.use_karras_sigmas"),
    ("scheduler option not one of its values", upload(scheduler_options='{"timestep_spacing": "sideways"}'), 422,
     "scheduler_options.timestep_spacing"),
    ("unknown field", upload(num_steps=3), 422, "num_steps"),
    ("response_format unknown", upload(response_format="gif"), 422, "response_format"),
    ("malformed JSON", as_json(b'{"prompt": "a cat",'), 400, "body"),
    ("JSON not an object", as_json(b"[1, 2]"), 400, "body"),
    ("JSON bad base64", as_json(json_body(image="%%% not base64 %%%")), 422, "image"),
    ("JSON image not text", as_json(json_body(image=123)), 422, "image"),
    ("JSON prompt not text", as_json(json_body(prompt=["a", 3])), 422, "prompt"),
    ("JSON steps as boolean-ish text", as_json(json_body(num_inference_steps="ten")), 422, "num_inference_steps"),
    ("JSON missing mask", as_json({k: v for k, v in json_body().items() if k != "mask_image"}), 422, "mask_image"),
    ("wrong content type", ("POST", "/v1/inpaint", {"content": b"prompt=cat",
                                                   "headers": {"content-type": "text/plain"}}), 415, "content-type"),
    # the parser finds no complete part in a cut-off body, so the first missing part is named
    ("cut-off multipart", ("POST", "/v1/inpaint", {"content": b"--xyz\r\nContent-Disposition: form-data; na",
                                                   "headers": {"content-type": "multipart/form-data; boundary=xyz"}}),
     422, "image"),
    ("multipart without boundary", ("POST", "/v1/inpaint", {"content": b"abc",
                                                            "headers": {"content-type": "multipart/form-data"}}),
     400, "body"),
    ("oversized upload (Content-Length)", upload(image=big_noisy_png), 413, "body"),
    ("oversized upload (chunked)", ("POST", "/v1/inpaint", {"content": chunked(b"x" * (3 * 2**20)),
                                                           "headers": {"content-type": "application/json"}}),
     413, "body"),
    ("jobs endpoint: bad steps", ("POST", "/v1/jobs", upload(num_inference_steps=-3)[2]), 422, "num_inference_steps"),
    ("unknown path", ("GET", "/v1/nothing", {}), 404, "path"),
    # outpaint (POST /v1/outpaint and /v1/outpaint/jobs): the same checks and these
    ("outpaint: negative side", outpaint(left=-8), 422, "left"),
    ("outpaint: all sides zero", outpaint(), 422, "left"),
    ("outpaint: side not an integer", outpaint(right="12.5"), 422, "right"),
    ("outpaint: side as a word", outpaint(bottom="lots"), 422, "bottom"),
    ("outpaint: JSON side true", as_json(without_mask(top=True), "/v1/outpaint"), 422, "top"),
    ("outpaint: unknown fill", outpaint(right=16, fill="blur"), 422, "fill"),
    ("outpaint: overlap over 1024", outpaint(right=16, overlap=5000), 422, "overlap"),
    ("outpaint: result over max_pixels", outpaint(right=5000, bottom=5000), 422, "right"),
    ("outpaint: pass over max_output_pixels", outpaint(right=16, height=2048, width=2048), 422, "height"),
    ("outpaint: more passes than max_outpaint_passes", outpaint(right=2000, height=64, width=64), 422, "right"),
    ("outpaint: a mask sent", ("POST", "/v1/outpaint", {**upload(right=16)[2]}), 422, "mask_image"),
    ("outpaint: inpaint-only field", outpaint(right=16, mask_grow=4), 422, "mask_grow"),
    ("outpaint: JSON without image", as_json({**FAST, "right": 16}, "/v1/outpaint"), 422, "image"),
    ("outpaint job: unknown fill", outpaint(path="/v1/outpaint/jobs", left=8, fill="smear"), 422, "fill"),
]


@pytest.fixture(scope="module")
def server(engines):
    with running_server(engines[9], "--max-upload-mb", "1") as s:
        yield s


@pytest.mark.parametrize("name, request_, status, field", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_naming_the_field(server, name, request_, status, field):
    method, path, kwargs = request_
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["status"] == status
    assert error["message"] and error["fix"], "every refusal says what was wrong and what to send"


def test_the_server_still_works_after_the_corpus(server):
    """And a worker is free again before its answer is sent: /v1/health and /metrics right after each 200
    never count it busy (a loop, since the old race showed once in many runs)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for seed in range(20):
            assert client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": seed})).status_code == 200
            assert client.get("/v1/health").json() == {"status": "ok", "workers": 1, "busy": 0, "queued": 0,
                                                       "queue_size": 16, "draining": False}
            assert "\ninpaintrt_workers_busy 0.0\n" in client.get("/metrics").text
    assert "Traceback" not in "".join(server.output), "no request made the server print a traceback"


# each refusal's own fix (a server started with --max-steps 12) -----------------------------------------------

MAX_STEPS = 12


def inpaint_post(image: bytes | None = None, mask_bytes: bytes | None = None, path: str = "/v1/inpaint",
                 **fields):
    parts = {"image": ("i.png", png(picture()) if image is None else image, "image/png"),
             "mask_image": ("m.png", png(mask()) if mask_bytes is None else mask_bytes, "image/png")}
    return path, {"files": parts, "data": form({**FAST, **fields})}


def outpaint_post(**fields):
    return "/v1/outpaint", {"files": {"image": ("i.png", png(picture()), "image/png")},
                            "data": form({**FAST, **fields})}


def bad_value(name: str):
    """A value the request model refuses for this field."""
    spec = SPECS.get(name)
    if name in ("height", "width"):
        return 65
    if name in ("num_inference_steps", "prior_num_inference_steps", "seed"):
        return -1
    if spec is None or spec.kind in ("choice", "other"):
        return "no-such-choice"
    if spec.kind == "flag":
        return "maybe"
    served = spec.served()
    return served.low - 1 if served.low is not None else "a lot"


def model_refusals():
    """(field, request) for each field of the request models with a fix in the table."""
    found = {}
    for model, request in ((InpaintParameters, inpaint_post), (OutpaintParameters, outpaint_post)):
        for name in model.model_fields:
            spec = SPECS.get(name)
            if name in found or name in ("model", "prompt", "negative_prompt", "negative_prior_prompt",
                                         "scheduler_options"):
                continue  # free text, or a field checked past the model (below)
            if name in FIELD_FIXES or (spec is not None and spec.kind != "other"):
                extra = {"right": 16} if request is outpaint_post else {}
                found[name] = request(**{**extra, name: bad_value(name)})
    return sorted(found.items())


MODEL_REFUSALS = model_refusals()
BLACK = png(mask().point(lambda _: 0))

# name, request, status, field, words only this refusal's fix has
OWN_FIXES = [
    ("picture too small", inpaint_post(png(picture(1, 1)), png(mask(1, 1))), 422, "image", "at least 8x8 pixels"),
    ("not a picture", inpaint_post(b"hello, not a picture"), 422, "image", "PNG, JPEG or WebP"),
    ("truncated picture", inpaint_post(png(picture())[:300]), 422, "image", "intact"),
    ("mask of another size", inpaint_post(mask_bytes=png(mask(32, 48))), 422, "mask_image",
     "exactly the picture's size"),
    ("all-black mask", inpaint_post(mask_bytes=BLACK), 422, "mask_image", "paint white"),
    ("output too large", inpaint_post(height=2048, width=2048), 422, "height", "lower height (at most"),
    ("steps over max_steps", inpaint_post(num_inference_steps=MAX_STEPS + 1), 422, "num_inference_steps",
     f"at most {MAX_STEPS} steps"),
    ("strength leaving no step", inpaint_post(strength=0.1, num_inference_steps=2), 422, "strength",
     "raise strength to at least 0.5"),
    ("unknown scheduler option", inpaint_post(scheduler="euler", scheduler_options='{"warp": 9}'), 422,
     "scheduler_options", "use options from"),
    ("scheduler option its scheduler cannot run",
     inpaint_post(scheduler="dpmpp_2m", scheduler_options='{"solver_type": "bh1"}'), 422,
     "scheduler_options.solver_type", "solver_type midpoint or heun"),
    ("LCM steps past its original steps",
     inpaint_post(scheduler="lcm", scheduler_options='{"original_inference_steps": 1}'), 422,
     "num_inference_steps", "use at most 1 steps"),
    ("grow and shrink at once (the engine's check)", inpaint_post(mask_grow=2, mask_shrink=2), 422, "mask_shrink",
     "one of mask_grow and mask_shrink"),
    ("outpaint: nothing to add", outpaint_post(), 422, "left", "right=128"),
    ("outpaint: inpaint-only field", outpaint_post(right=16, mask_grow=4), 422, "mask_grow", "leave it out"),
]


@pytest.fixture(scope="module")
def client(engines):
    with running_server(engines[9], "--max-steps", str(MAX_STEPS)) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client


def refusal(client, request) -> tuple[int, dict]:
    path, kwargs = request
    response = client.post(path, **kwargs)
    return response.status_code, response.json()["error"]


@pytest.mark.parametrize("field, request_", MODEL_REFUSALS, ids=[name for name, _ in MODEL_REFUSALS])
def test_a_refused_field_gets_its_own_fix(client, field, request_):
    status, error = refusal(client, request_)
    assert (status, error["field"]) == (422, field), error
    assert error["fix"] == field_fix(field), error
    spec = SPECS.get(field)
    if field not in FIELD_FIXES and spec.kind in ("whole", "real"):  # the table's bounds, as the server narrows them
        assert spec.served().range_text() in error["fix"], error
    if spec is not None and spec.kind == "choice":
        assert ", ".join(spec.choices) in error["fix"], error


@pytest.mark.parametrize("name, request_, status, field, words", OWN_FIXES, ids=[case[0] for case in OWN_FIXES])
def test_a_refusal_gets_the_fix_for_its_message(client, name, request_, status, field, words):
    got, error = refusal(client, request_)
    assert (got, error["field"]) == (status, field), error
    assert words in error["fix"], error


def test_the_fixes_differ_from_refusal_to_refusal():
    """A fix written once per field would repeat here; each refusal says its own."""
    words = [case[-1] for case in OWN_FIXES]
    assert len(set(words)) == len(words)
    assert len({field_fix(name) for name, _ in MODEL_REFUSALS}) == len(MODEL_REFUSALS)


# bad inputs found in use -------------------------------------------------------------------------------------

def test_server_names_the_upload_not_an_object():
    pytest.importorskip("fastapi")
    from inpaintrt.serve.errors import ApiError
    from inpaintrt.serve.inputs import decode_picture

    with pytest.raises(ApiError) as info:
        decode_picture(b"hello, not a picture", "mask_image", 10**6)
    assert info.value.field == "mask_image" and "BytesIO" not in info.value.message
    assert "the uploaded mask_image" in info.value.message


def test_server_names_the_side_that_is_too_large():
    pytest.importorskip("fastapi")
    from inpaintrt.serve.errors import ApiError
    from PIL import Image

    from inpaintrt.serve.inputs import Limits, _preflight

    facts = {"default_height": 64, "default_width": 64, "vae_scale_factor": 8}
    limits = Limits(2**20, 4096**2, 1024 * 1024, 150)
    for fields, field in ((dict(height=64, width=20000), "width"), (dict(width=20000), "width"),
                          (dict(height=20000, width=64), "height"), (dict(height=2048, width=2048), "height")):
        with pytest.raises(ApiError) as info:
            _preflight({"image": Image.new("RGB", (64, 64)), **fields}, facts, limits)
        assert info.value.field == field and info.value.message.startswith(f"{field}=")


@pytest.mark.parametrize("given,meant", [("steps", "num_inference_steps"), ("cfg_scale", "guidance_scale"),
                                         ("generator", "seed"), ("denoising_strength", "strength"),
                                         ("guidanse_scale", "guidance_scale"), ("mask", "mask_image")])
def test_unknown_fields_get_a_did_you_mean(given, meant):
    pytest.importorskip("fastapi")
    from pydantic import ValidationError

    from inpaintrt.serve.errors import validation_error
    from inpaintrt.serve.inputs import InpaintParameters

    with pytest.raises(ValidationError) as info:
        InpaintParameters.model_validate({given: 3})
    error = validation_error(info.value.errors(), set(InpaintParameters.model_fields) | {"image", "mask_image"})
    assert error.field == given and error.message.endswith(f"did you mean {meant}?") and meant in error.fix
