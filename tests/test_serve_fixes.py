"""Every refusal's fix is its own: through a real server, each field the request model checks (its
bounds from engine/argument_specs.py) and each refusal the engine's checks make answer with the
status, the field, and a fix that says what to send for that refusal, not a generic one."""
from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import FAST, form, mask, picture, png, running_server  # noqa: E402

from inpaintrt.engine.argument_specs import SPECS  # noqa: E402
from inpaintrt.serve.errors import FIELD_FIXES, field_fix  # noqa: E402
from inpaintrt.serve.inputs import InpaintParameters, OutpaintParameters  # noqa: E402

MAX_STEPS = 12


def inpaint(image: bytes | None = None, mask_bytes: bytes | None = None, path: str = "/v1/inpaint", **fields):
    parts = {"image": ("i.png", png(picture()) if image is None else image, "image/png"),
             "mask_image": ("m.png", png(mask()) if mask_bytes is None else mask_bytes, "image/png")}
    return path, {"files": parts, "data": form({**FAST, **fields})}


def outpaint(**fields):
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
    for model, request in ((InpaintParameters, inpaint), (OutpaintParameters, outpaint)):
        for name in model.model_fields:
            spec = SPECS.get(name)
            if name in found or name in ("model", "prompt", "negative_prompt", "negative_prior_prompt",
                                         "scheduler_options"):
                continue  # free text, or a field checked past the model (below)
            if name in FIELD_FIXES or (spec is not None and spec.kind != "other"):
                found[name] = request(**{**({"right": 16} if request is outpaint else {}), name: bad_value(name)})
    return sorted(found.items())


MODEL_REFUSALS = model_refusals()
BLACK = png(mask().point(lambda _: 0))

# name, request, status, field, words only this refusal's fix has
OWN_FIXES = [
    ("picture too small", inpaint(png(picture(1, 1)), png(mask(1, 1))), 422, "image", "at least 8x8 pixels"),
    ("not a picture", inpaint(b"hello, not a picture"), 422, "image", "PNG, JPEG or WebP"),
    ("truncated picture", inpaint(png(picture())[:300]), 422, "image", "intact"),
    ("mask of another size", inpaint(mask_bytes=png(mask(32, 48))), 422, "mask_image", "exactly the picture's size"),
    ("all-black mask", inpaint(mask_bytes=BLACK), 422, "mask_image", "paint white"),
    ("output too large", inpaint(height=2048, width=2048), 422, "height", "lower height (at most"),
    ("steps over max_steps", inpaint(num_inference_steps=MAX_STEPS + 1), 422, "num_inference_steps",
     f"at most {MAX_STEPS} steps"),
    ("strength leaving no step", inpaint(strength=0.1, num_inference_steps=2), 422, "strength",
     "raise strength to at least 0.5"),
    ("unknown scheduler option", inpaint(scheduler="euler", scheduler_options='{"warp": 9}'), 422,
     "scheduler_options", "use options from"),
    ("scheduler option its scheduler cannot run", inpaint(scheduler="dpmpp_2m", scheduler_options='{"solver_type": '
     '"bh1"}'), 422, "scheduler_options.solver_type", "solver_type midpoint or heun"),
    ("LCM steps past its original steps", inpaint(scheduler="lcm", scheduler_options='{"original_inference_steps": '
     '1}'), 422, "num_inference_steps", "use at most 1 steps"),
    ("grow and shrink at once (the engine's check)", inpaint(mask_grow=2, mask_shrink=2), 422, "mask_shrink",
     "one of mask_grow and mask_shrink"),
    ("outpaint: nothing to add", outpaint(), 422, "left", "right=128"),
    ("outpaint: inpaint-only field", outpaint(right=16, mask_grow=4), 422, "mask_grow", "leave it out"),
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
