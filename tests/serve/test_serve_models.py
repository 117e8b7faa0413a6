"""Several engines in one `inpaint-serve` (--engine A --engine B): a request's `model` picks the engine
and gets exactly that engine's result; the default, an unknown name, /v1/info, jobs found whichever
engine holds them, A1111's checkpoint choice, and the page's model selector."""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import FAST, engine_reference, files, form, pixels, picture, png, mask, running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(engines):
    with running_server(engines[9], "--engine", str(engines[4]), "--max-steps", "1000") as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def engine4(engines):
    from inpaintrt import Engine

    return Engine.load(engines[4])


def test_model_picks_the_engine_and_the_default_is_the_first(client, engines, engine, engine4):
    name4, name9 = engines[4].name, engines[9].name
    picked = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 3, "model": name4}))
    assert picked.status_code == 200, picked.text
    assert np.array_equal(pixels(picked.content), engine_reference(engine4, 3))
    default = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 3}))
    assert np.array_equal(pixels(default.content), engine_reference(engine, 3))
    named = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 3, "model": name9}))
    assert named.content == default.content


def test_unknown_model_is_a_422_naming_model_and_the_names(client, engines):
    refused = client.post("/v1/inpaint", files=files(), data=form({**FAST, "model": "nope"}))
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["field"] == "model" and engines[4].name in error["message"] and engines[9].name in error["fix"]
    jobs = client.post("/v1/outpaint/jobs", json={"image": "", "model": "nope"})
    assert jobs.status_code == 422 and jobs.json()["error"]["field"] == "model"


def test_info_lists_every_engine_with_its_defaults(client, engines):
    info = client.get("/v1/info").json()
    assert info["model"]["unet_in_channels"] == 9, "the default engine's facts, as before"
    models = {model["name"]: model for model in info["models"]}
    assert list(models) == [engines[9].name, engines[4].name]
    assert models[engines[4].name]["unet_in_channels"] == 4 and models[engines[9].name]["unet_in_channels"] == 9
    for model in models.values():
        assert {"family", "default_steps", "default_guidance_scale", "loras", "default_width"} <= set(model)
        assert "scheduler_config" not in model
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["workers"] == 2 and set(health["models"]) == set(models)


def test_jobs_are_found_whichever_engine_holds_them(client, engines, engine, engine4):
    ids = {}
    for seed, name, reference in ((11, engines[4].name, engine4), (12, engines[9].name, engine)):
        answer = client.post("/v1/jobs", files=files(), data=form({**FAST, "seed": seed, "model": name}))
        assert answer.status_code == 202, answer.text
        ids[answer.json()["id"]] = (seed, reference)
    for job_id, (seed, reference) in ids.items():
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert any(line.startswith("event: done") for line in stream.iter_lines())
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "done"
        result = client.get(f"/v1/jobs/{job_id}/result")
        assert np.array_equal(pixels(result.content), engine_reference(reference, seed))
    long = client.post("/v1/jobs", files=files(), data=form({**FAST, "num_inference_steps": 1000, "scheduler": "euler",
                                                             "model": engines[4].name})).json()
    assert client.delete(f"/v1/jobs/{long['id']}").json()["status"] in ("cancelled", "running")
    assert client.get("/metrics").status_code == 200


def test_a1111_lists_every_engine_and_options_select_one(client, engines, engine4):
    titles = [model["title"] for model in client.get("/sdapi/v1/sd-models").json()]
    assert [title.split(" [")[0] for title in titles] == [engines[9].name, engines[4].name]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles[0]
    refused = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "sd_model_checkpoint"
    try:
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[1]}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == titles[1]
        body = {"init_images": [base64.b64encode(png(picture())).decode()],
                "mask": base64.b64encode(png(mask())).decode(),
                "prompt": "a red bench", "seed": 4, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler a",
                "denoising_strength": 1.0, "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": True,
                "inpaint_full_res_padding": 0, "cfg_scale": 7.5}
        answer = client.post("/sdapi/v1/img2img", json=body)
        assert answer.status_code == 200, answer.text
        assert '"sd_model_name": "%s"' % engines[4].name in answer.json()["info"]
    finally:
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[0]})


def test_two_engines_with_one_name_are_refused_at_start(engines, tmp_path):
    twin = tmp_path / engines[9].name
    twin.mkdir()
    ran = subprocess.run([sys.executable, "-m", "inpaintrt.serve.cli", "--engine", str(engines[9]), "--engine",
                          str(twin)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2 and "--engine" in ran.stderr and engines[9].name in ran.stderr
    from inpaintrt.serve.cli import parser, settings_from

    with pytest.raises(ValueError, match="--engine"):  # Ray Serve runs one engine deployment
        settings_from(parser().parse_args(["--engine", str(engines[9]), "--engine", str(engines[4]), "--ray"]))


@pytest.mark.skipif(CHROMIUM is None, reason="needs the system Chromium (apt-get install chromium)")
def test_page_model_selector_switches_what_is_sent(server, engines, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from browser_helpers import BLOB_AS_BASE64, RECORD_FORMS, decoded, open_page, paint, part

    from inpaintrt.sample import sample_picture

    sample_picture(96, 64)[0].save(tmp_path / "p.png")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = open_page(browser, server, 1280, 800)
            page.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
            assert page.locator("#model-row").is_visible(), "two engines: the selector shows"
            page.set_input_files("#image-file", str(tmp_path / "p.png"))
            page.wait_for_selector("body[data-ready='1']")
            paint(page, [(20, 30), (70, 30)])
            page.fill("#seed", "5")
            page.fill("#num_inference_steps", "2")
            page.evaluate(RECORD_FORMS)
            results = []
            for name in (engines[9].name, engines[4].name):
                page.select_option("#model", name)
                done = page.evaluate("() => window.inpaintrt.state.results.length")
                page.click("#run")
                page.wait_for_function(f"() => window.inpaintrt.state.results.length === {done + 1}", timeout=120_000)
                page.wait_for_function("() => !window.inpaintrt.state.job")
                results.append(decoded(page.evaluate(BLOB_AS_BASE64, "result")))
                assert page.evaluate("() => window.inpaintrt.state.current.model") == name, "history keeps the model"
            assert [part(sent, "model") for sent in page.evaluate("() => window.sentForms")] == \
                [engines[9].name, engines[4].name]
            assert not np.array_equal(results[0], results[1]), "another engine, another result"
            assert page.errors == []
        finally:
            browser.close()
