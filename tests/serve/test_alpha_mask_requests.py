"""Alpha masks at the server: an inpaint request without mask_image repaints the image's transparent pixels
(the engine's own load_pair), exactly as the RGB picture with that mask sent; without alpha to read, or with
an opaque one, the 422 names mask_image."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import (AUTH, FAST, TOKEN, b64, form, mask, picture, pixels, png, refusal,  # noqa: E402
                           running_server)


def cut_out() -> Image.Image:
    """The test picture, transparent where the test mask is white."""
    alpha = 255 - np.asarray(mask())
    return Image.fromarray(np.dstack([np.asarray(picture()), alpha]).astype(np.uint8), "RGBA")


@pytest.fixture(scope="module")
def server(engine_dir):
    with running_server(engine_dir, "--token", TOKEN) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        yield c


def only_image(image: Image.Image) -> dict:
    return {"image": ("image.png", png(image), "image/png")}


def test_no_mask_repaints_the_transparent_pixels(client):
    fields = form({**FAST, "seed": 11})
    alone = client.post("/v1/inpaint", files=only_image(cut_out()), data=fields)
    assert alone.status_code == 200, alone.text
    sent = client.post("/v1/inpaint", data=fields, files={
        **only_image(cut_out().convert("RGB")), "mask_image": ("mask.png", png(mask()), "image/png")})
    assert sent.status_code == 200, sent.text
    assert np.array_equal(pixels(alone.content), pixels(sent.content))
    as_json = client.post("/v1/inpaint", json={**FAST, "seed": 11, "image": b64(cut_out())})
    assert as_json.status_code == 200, as_json.text
    assert np.array_equal(pixels(as_json.content), pixels(sent.content))


@pytest.mark.parametrize("image, words", [
    (picture(), "has no alpha channel"),
    (Image.new("RGBA", (64, 64), (40, 80, 120, 255)), "opaque everywhere"),
])
def test_nothing_to_read_a_mask_from_is_a_422_naming_mask_image(client, image, words):
    for answer in (client.post("/v1/inpaint", files=only_image(image), data=form(FAST)),
                   client.post("/v1/inpaint", json={**FAST, "image": b64(image)})):
        error = refusal(answer)
        assert answer.status_code == 422 and error["field"] == "mask_image" and words in error["message"]
        assert error["fix"].startswith(("send", "make")), error["fix"]


def test_the_schema_makes_only_the_image_required(client):
    body = client.get("/openapi.json").json()["paths"]["/v1/inpaint"]["post"]["requestBody"]["content"]
    for kind in ("multipart/form-data", "application/json"):
        schema = body[kind]["schema"]
        assert schema["required"] == ["image"] and "transparent" in schema["properties"]["mask_image"]["description"]
