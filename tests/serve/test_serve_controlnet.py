"""ControlNet over HTTP: a real `inpaint-serve` with tiny ControlNet engines (two ControlNets, one, none)
answers each request with Engine.inpaint's picture for the same arguments and seed, byte for byte, from
multipart and JSON, sync and queued; every refusal names its field before a job is queued."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from controlnet_helpers import edge_picture  # noqa: E402
from serve_helpers import (  # noqa: E402
    FAST, b64, engine_reference, files, finished_job, form, picture, pixels, png, refusal,
    running_server)

TWO, ONE, NONE = "cn-9", "cn-single", "engine9"  # the engines' directory names: [inpaint, plain], [plain], none


@pytest.fixture(scope="module")
def directories(controlnet_exported, engines):
    return {TWO: controlnet_exported["engines"][9], ONE: controlnet_exported["engines"]["single"], NONE: engines[9]}


@pytest.fixture(scope="module")
def served(directories):
    with running_server(directories[TWO], "--engine", str(directories[ONE]), "--engine", str(directories[NONE]),
                        "--max-batch", "4") as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            yield client


@pytest.fixture(scope="module")
def loaded(directories):
    from inpaintrt import Engine

    return {name: Engine.load(path) for name, path in directories.items()}


def edges(seed: int = 3):
    return edge_picture(64, 64, seed)


def control_files(*pictures) -> list:
    """The image and mask parts, then control_image once per picture (None: an empty part)."""
    parts = list(files().items())
    return parts + [("control_image", ("control.png", png(p) if p is not None else b"", "image/png")) for p in pictures]


def json_body(**fields) -> dict:
    return {"image": b64(picture()), "mask_image": b64(serve_mask()), **FAST, **fields}


def serve_mask():
    from serve_helpers import mask

    return mask()


def test_info_lists_each_models_controlnets(served):
    info = served.get("/v1/info").json()
    models = {model["name"]: model for model in info["models"]}
    assert [(net["component"], net["kind"], net["conditioning_channels"]) for net in models[TWO]["controlnets"]] == [
        ("controlnet_0", "inpaint", 3), ("controlnet_1", "plain", 3)]
    assert all("tiny-controlnet" in net["source"] for net in models[TWO]["controlnets"])
    assert [net["kind"] for net in models[ONE]["controlnets"]] == ["plain"]
    assert info["model"]["controlnets"] == models[TWO]["controlnets"]  # the default engine's
    assert (models[NONE]["controlnets"], models[NONE]["default_controlnet_scale"]) == ([], None)
    assert models[TWO]["default_controlnet_scale"] == 0.5
    assert not any(model["image_prompts"] for model in models.values())
    json.dumps(info)  # plain data (it travels to Ray replicas)


def test_one_controlnet_multipart_is_engine_inpaint(served, loaded):
    """A non-default scale, window and guess mode, sent as a browser's form fields."""
    control = dict(controlnet_conditioning_scale=0.8, control_guidance_start=0.2, control_guidance_end=0.9,
                   guess_mode=True)
    answer = served.post("/v1/inpaint", files=control_files(edges()),
                         data=form({**FAST, **control, "seed": 11, "model": ONE}))
    assert answer.status_code == 200, answer.text
    expected = engine_reference(loaded[ONE], 11, control_image=edges(), **control)
    assert np.array_equal(pixels(answer.content), expected)
    assert not np.array_equal(expected, engine_reference(loaded[ONE], 11))  # the ControlNet steered


def test_two_controlnets_multipart_with_repeated_fields(served, loaded):
    """One control image part per ControlNet (an empty part: the inpaint ControlNet's masked picture), one scale
    and window per ControlNet as repeated fields."""
    fields = {**form({**FAST, "seed": 12}), "controlnet_conditioning_scale": ["0.7", "1.2"],
              "control_guidance_start": ["0.0", "0.25"], "control_guidance_end": "0.75"}
    answer = served.post("/v1/inpaint", files=control_files(None, edges()), data=fields)
    assert answer.status_code == 200, answer.text
    expected = engine_reference(loaded[TWO], 12, control_image=[None, edges()], controlnet_conditioning_scale=[0.7, 1.2],
                                control_guidance_start=[0.0, 0.25], control_guidance_end=0.75)
    assert np.array_equal(pixels(answer.content), expected)


def test_two_controlnets_json_queued_job(served, loaded):
    """JSON: a list of base64 control images and of scales; through POST /v1/jobs and its result."""
    control = dict(controlnet_conditioning_scale=[0.3, 0.9], control_guidance_end=0.6, guess_mode=True)
    body = json_body(control_image=[b64(edges(5)), b64(edges())], seed=13, **control)
    view = finished_job(served, served.post("/v1/jobs", json=body))
    assert view["status"] == "done", view
    expected = engine_reference(loaded[TWO], 13, control_image=[edges(5), edges()], **control)
    assert np.array_equal(pixels(served.get(f"/v1/jobs/{view['id']}/result").content), expected)


def test_json_single_control_image_and_null(served, loaded):
    """One ControlNet: a plain base64 string; two: null keeps the inpaint ControlNet's masked picture."""
    one = served.post("/v1/inpaint", json=json_body(model=ONE, control_image=b64(edges()), seed=14))
    assert one.status_code == 200, one.text
    assert np.array_equal(pixels(one.content), engine_reference(loaded[ONE], 14, control_image=edges()))
    two = served.post("/v1/inpaint", json=json_body(control_image=[None, b64(edges())], seed=15))
    assert two.status_code == 200, two.text
    assert np.array_equal(pixels(two.content), engine_reference(loaded[TWO], 15, control_image=[None, edges()]))


def test_concurrent_controlnet_requests_each_get_their_own_picture(served, loaded):
    """With --max-batch 4, ControlNet requests run alone: each is its own Engine.inpaint."""
    import concurrent.futures

    def post(seed):
        return served.post("/v1/inpaint", json=json_body(model=ONE, control_image=b64(edges(seed)), seed=seed))

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(post, (21, 22, 23)))
    for seed, answer in zip((21, 22, 23), answers):
        assert answer.status_code == 200, answer.text
        assert np.array_equal(pixels(answer.content), engine_reference(loaded[ONE], seed, control_image=edges(seed)))


REFUSED = [
    ("no ControlNet: a control image", NONE, dict(control_image=[edges()]), "control_image", "--controlnet"),
    ("no ControlNet: guess mode", NONE, dict(guess_mode=True), "guess_mode", "--controlnet"),
    ("no ControlNet: a scale", NONE, dict(controlnet_conditioning_scale=0.5), "controlnet_conditioning_scale",
     "--controlnet"),
    ("one image for two ControlNets", TWO, dict(control_image=[edges()]), "control_image", "one per ControlNet"),
    ("three scales for two", TWO, dict(controlnet_conditioning_scale=[1, 1, 1]), "controlnet_conditioning_scale",
     "one per ControlNet"),
    ("two ends for one", ONE, dict(control_image=[edges()], control_guidance_end=[0.5, 0.9]), "control_guidance_end",
     "one per ControlNet"),
    ("scale above the server's 2", ONE, dict(controlnet_conditioning_scale=3), "controlnet_conditioning_scale",
     "from 0 to 2"),
    ("start after end", ONE, dict(control_image=[edges()], control_guidance_start=0.7, control_guidance_end=0.3),
     "control_guidance_start", "control_guidance_start < control_guidance_end"),
    ("start above 1", ONE, dict(control_guidance_start=1.5), "control_guidance_start", "from 0 to 1"),
    ("guess mode not a boolean", ONE, dict(guess_mode="maybe"), "guess_mode", "as true or false"),
    ("control image of another size", ONE, dict(control_image=[edge_picture(96, 64)]), "control_image",
     "image's size"),
    ("control image not a picture", ONE, dict(control_image=[b"not a picture"]), "control_image", "PNG"),
]


@pytest.mark.parametrize("model,fields,field,fix", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
@pytest.mark.parametrize("kind", ["multipart", "json"])
def test_refusals_name_the_field(served, kind, model, fields, field, fix):
    fields = dict(fields, model=model)
    images = fields.pop("control_image", None)
    if kind == "json":
        if images is not None:
            fields["control_image"] = [base64.b64encode(i if isinstance(i, bytes) else png(i)).decode()
                                       for i in images]
        answer = served.post("/v1/jobs", json=json_body(**fields))
    else:
        parts = list(files().items()) + [("control_image", ("c.png", i if isinstance(i, bytes) else png(i),
                                                            "image/png")) for i in images or []]
        data = {**form({**FAST, **{k: v for k, v in fields.items() if not isinstance(v, list)}}),
                **{name: [str(v) for v in values] for name, values in fields.items() if isinstance(values, list)}}
        answer = served.post("/v1/jobs", files=parts, data=data)
    error = refusal(answer)
    assert error["field"] == field, error
    assert fix in error["fix"] + error["message"], error


def test_a_bad_control_image_leaves_the_queue_working(served, loaded):
    bad = served.post("/v1/inpaint", files=control_files(edge_picture(64, 48)), data=form({**FAST, "model": ONE}))
    assert refusal(bad)["field"] == "control_image"
    good = served.post("/v1/inpaint", files=control_files(edges()), data=form({**FAST, "model": ONE, "seed": 3}))
    assert good.status_code == 200, good.text
    assert np.array_equal(pixels(good.content), engine_reference(loaded[ONE], 3, control_image=edges()))


def test_control_image_as_text_or_on_outpaint_is_refused(served):
    text = served.post("/v1/inpaint", files=files(), data=form({**FAST, "model": ONE, "control_image": "edges.png"}))
    assert refusal(text)["field"] == "control_image" and "file part" in refusal(text)["fix"]
    outpaint = served.post("/v1/outpaint", files=[("image", files()["image"]), *control_files(edges())[2:]],
                           data=form({**FAST, "model": ONE, "right": 32}))
    error = refusal(outpaint)
    assert error["field"] == "control_image" and "not a part of outpaint" in error["message"]


def test_engine_errors_name_the_field(loaded):
    """Engine.inpaint's own ControlNet refusals are InvalidArguments naming the argument, as the server reports."""
    from inpaintrt.runtime.errors import InvalidArgument
    from serve_helpers import mask

    cases = [(dict(control_image=edges()), TWO, "control_image"),
             (dict(controlnet_conditioning_scale=[1.0]), TWO, "controlnet_conditioning_scale"),
             (dict(control_guidance_start=[0.0, 0.1, 0.2]), TWO, "control_guidance_start"),
             (dict(control_guidance_end=1.5), ONE, "control_guidance_end"),
             (dict(guess_mode=True), NONE, "guess_mode"),
             (dict(control_image=edge_picture(32, 32)), ONE, "control_image")]
    for arguments, model, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            loaded[model].inpaint(picture(), mask(), progress=False, **FAST, **arguments)
        assert caught.value.field == field and caught.value.fix, (arguments, caught.value)


def test_a1111_controlnet_units_through_webuiapi(served, loaded):
    """The ControlNet extension's units (webuiapi's ControlNetUnit) map onto the same arguments: weight, window,
    control_mode 1 = guess mode; a unit without a picture is the inpaint ControlNet's default."""
    webuiapi = pytest.importorskip("webuiapi")
    from serve_helpers import mask

    host, port = served.base_url.host, served.base_url.port
    api = webuiapi.WebUIApi(host=host, port=port, sampler="Euler", steps=2)
    units = [webuiapi.ControlNetUnit(image=None, weight=0.6, control_mode=1),
             webuiapi.ControlNetUnit(image=edges(), weight=1.3, guidance_start=0.2, guidance_end=0.8, control_mode=1)]
    # webuiapi writes the units into its default alwayson_scripts dict, which every later call in this process
    # would then send: this call gets a dict of its own
    result = api.img2img(images=[picture()], mask_image=mask(), prompt="a red bench", seed=31, width=64, height=64,
                         controlnet_units=units, alwayson_scripts={})
    want = engine_reference(loaded[TWO], 31, strength=0.75, guidance_scale=7.0, blur_factor=4, masked_content="fill",
                            padding_mask_crop=0, scheduler="euler", control_image=[None, edges()],
                            controlnet_conditioning_scale=[0.6, 1.3], control_guidance_start=[0.0, 0.2],
                            control_guidance_end=[1.0, 0.8], guess_mode=True)
    assert np.array_equal(np.asarray(result.image.convert("RGB")), want)


@pytest.mark.parametrize("unit,field", [
    (dict(module="canny"), "alwayson_scripts.controlnet.args[0].module"),
    (dict(control_mode="ControlNet is more important"), "alwayson_scripts.controlnet.args[0].control_mode"),
    (dict(mask="aGVsbG8="), "alwayson_scripts.controlnet.args[0].mask"),
    (dict(weight=5), "alwayson_scripts.controlnet.args.weight"),
])
def test_a1111_controlnet_units_it_cannot_map_are_refused_by_name(served, unit, field):
    body = {"init_images": [b64(picture())], "mask": b64(serve_mask()), "steps": 2, "width": 64, "height": 64,
            "alwayson_scripts": {"ControlNet": {"args": [dict({"image": "", "module": "none"}, **unit),
                                                         {"image": b64(edges())}]}}}
    error = refusal(served.post("/sdapi/v1/img2img", json=body))
    assert error["field"] == field, error
