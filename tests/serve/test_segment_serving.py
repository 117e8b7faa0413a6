"""The mask makers behind the HTTP API (POST /v1/segment), in the real app with real tiny engines (Segment Anything
and CLIPSeg beside a LaMa eraser, the default): the PNG answer is exactly Engine.segment's mask, JSON carries
every candidate and its score, every bad input is a 4xx naming its field while the server keeps serving, the
engine call runs off the event loop (its engines lent first come, first served), an engine's error answers what it
means, a mask maker is refused on the painting routes naming `model`, and /v1/info lists each engine's kind."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from serve_helpers import b64, mask, picture, png, refusal, wait_until  # noqa: E402

from inpaintrt.serve.app import Settings, create_app  # noqa: E402

SIZE = (70, 50)  # not square: the engines' frames are; masks come back at the picture's size
MAX_PIXELS = 90 * 60  # the server's picture limit: SIZE fits, 100 x 100 does not
POINTS, LABELS = [[20, 15], [50, 30]], [1, 0]


@pytest.fixture(scope="module")
def app(eraser_engine_dir, sam_engine_dir, clipseg_engine_dir):
    settings = Settings(engine_dir=str(eraser_engine_dir), more_engines=[str(sam_engine_dir), str(clipseg_engine_dir)],
                        max_pixels=MAX_PIXELS)
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:  # loads the engines (the app's lifespan)
        yield c


@pytest.fixture(scope="module")
def engines(sam_engine_dir, clipseg_engine_dir):
    from inpaintrt import Engine

    return {"sam": Engine.load(sam_engine_dir), "clipseg": Engine.load(clipseg_engine_dir)}


def image() -> Image.Image:
    return picture(*SIZE, seed=5)


def upload(picture_: Image.Image | None = None) -> dict:
    return {"image": ("image.png", png(picture_ or image()), "image/png")}


def mask_pixels(data: bytes) -> np.ndarray:
    found = Image.open(io.BytesIO(data))
    assert found.mode == "L" and found.size == SIZE, (found.mode, found.size)
    return np.asarray(found)


def white(segmentation, index: int = 0) -> np.ndarray:
    return np.asarray(segmentation.mask_image(index))


def test_the_png_is_the_engines_mask_pixel_for_pixel(client, engines):
    answer = client.post("/v1/segment", files=upload(), data={"points": json.dumps(POINTS), "labels": json.dumps(LABELS)})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png" and answer.headers["x-mask-index"] == "0"
    want = engines["sam"].segment(image(), points=POINTS, labels=LABELS)
    got = mask_pixels(answer.content)
    assert np.array_equal(got, white(want)) and 0 < (got == 255).mean() < 1, "white inside, at the picture's size"
    assert json.loads(answer.headers["x-scores"]) == pytest.approx(want.scores.tolist(), rel=1e-6)


def test_json_gives_every_candidate_and_a_png_the_best(client, engines):
    fields = {"image": b64(image()), "model": "sam", "points": POINTS[:1], "multimask_output": True}
    answer = client.post("/v1/segment", json={**fields, "format": "json"})
    assert answer.status_code == 200, answer.text
    body, want = answer.json(), engines["sam"].segment(image(), points=POINTS[:1], multimask_output=True)
    assert (body["width"], body["height"]) == SIZE and len(body["masks"]) == len(want.masks) == 3
    for i, text in enumerate(body["masks"]):
        assert np.array_equal(mask_pixels(base64.b64decode(text)), white(want, i))
    assert body["scores"] == pytest.approx(want.scores.tolist(), rel=1e-6)
    best = int(np.argmax(want.scores))
    assert body["best"] == best
    png_answer = client.post("/v1/segment", json=fields)  # format png (the default): the highest score's mask
    assert png_answer.headers["x-mask-index"] == str(best)
    assert np.array_equal(mask_pixels(png_answer.content), white(want, best))


def test_a_box_and_a_phrase_reach_their_engines(client, engines):
    box = [10, 5, 60, 45]
    answer = client.post("/v1/segment", json={"image": b64(image()), "box": box})
    assert answer.status_code == 200, answer.text
    assert np.array_equal(mask_pixels(answer.content), white(engines["sam"].segment(image(), box=box)))
    answer = client.post("/v1/segment", files=upload(), data={"model": "clipseg", "text": "the sky", "threshold": "0.45"})
    assert answer.status_code == 200, answer.text
    want = engines["clipseg"].segment(image(), text="the sky", threshold=0.45)
    got = mask_pixels(answer.content)
    assert np.array_equal(got, white(want)) and (got == 255).any()


BAD = [  # (the request's fields besides the picture, the field named, the status)
    ({"points": [[71, 10]]}, "points", 422),  # x from 0 to 70
    ({"points": [[10, -1]]}, "points", 422),
    ({"points": [[10, 10], [20, 20]], "labels": [1, 2]}, "labels", 422),
    ({"points": [[10, 10], [20, 20]], "labels": [1]}, "labels", 422),
    ({"labels": [1]}, "labels", 422),
    ({"points": [[10, 10, 3]]}, "points", 422),
    ({"points": [[True, 10]]}, "points", 422),
    ({"box": [40, 5, 10, 45]}, "box", 422),  # x1 < x0
    ({"box": [10, 5, 80, 45]}, "box", 422),  # outside
    ({}, "points", 422),  # no prompt at all
    ({"points": [[10, 10]], "text": "the sky"}, "text", 422),  # a phrase for Segment Anything
    ({"model": "clipseg", "text": "  "}, "text", 422),
    ({"model": "clipseg"}, "text", 422),
    ({"model": "clipseg", "text": "a dog", "points": [[10, 10]]}, "points", 422),
    ({"model": "clipseg", "text": "a dog", "threshold": 1.5}, "threshold", 422),
    ({"model": "nowhere", "points": [[10, 10]]}, "model", 422),
    ({"model": "lama-engine", "points": [[10, 10]]}, "model", 422),  # an eraser is no mask maker
    ({"points": [[10, 10]], "format": "gif"}, "format", 422),
    ({"points": [[10, 10]], "pointz": [[1, 1]]}, "pointz", 422),
    ({"points": [[10, 10]], "response_format": "json"}, "response_format", 422),  # /v1/inpaint's name for format
]


@pytest.mark.parametrize("fields, field, status", BAD, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD)])
def test_bad_inputs_are_4xx_naming_the_field(client, fields, field, status):
    answer = client.post("/v1/segment", json={"image": b64(image()), **fields})
    error = refusal(answer)
    assert (answer.status_code, error["field"]) == (status, field), error


def test_bad_pictures_and_bodies_are_4xx_and_the_server_keeps_serving(client):
    cases = [(client.post("/v1/segment", files=upload(picture(100, 100)), data={"points": "[[1, 1]]"}), 413, "image"),
             (client.post("/v1/segment", files=upload(), data={"points": "[[1, 1]"}), 422, "points"),  # not JSON
             (client.post("/v1/segment", data={"points": "[[1, 1]]"}, files={"x": ("x", b"", "text/plain")}), 422, "x"),
             (client.post("/v1/segment", json={"points": [[1, 1]]}), 422, "image"),
             (client.post("/v1/segment", json={"image": "not base64!", "points": [[1, 1]]}), 422, "image"),
             (client.post("/v1/segment", json={"image": b64(image())[:40], "points": [[1, 1]]}), 422, "image"),
             (client.post("/v1/segment", content=b"{", headers={"content-type": "application/json"}), 400, "body"),
             (client.post("/v1/segment", content=b"points", headers={"content-type": "text/plain"}), 415,
              "content-type")]
    for answer, status, field in cases:
        assert (answer.status_code, refusal(answer)["field"]) == (status, field), answer.text
    assert client.post("/v1/segment", files=upload(), data={"points": "[[1, 1]]"}).status_code == 200


def test_the_engine_runs_off_the_event_loop(app, client):
    """While a segment call holds the engine, the server answers other requests; the call then finishes."""
    engine = app.state.manager.models["sam"].manager.engines[0]
    entered, release, answers = threading.Event(), threading.Event(), []
    original = engine.segment

    def held(*args, **kwargs):
        entered.set()
        release.wait(30)
        return original(*args, **kwargs)

    engine.segment = held
    try:
        worker = threading.Thread(target=lambda: answers.append(
            client.post("/v1/segment", json={"image": b64(image()), "points": [[5, 5]]})))
        worker.start()
        assert entered.wait(30), "the call reached the engine"
        other = []
        asking = threading.Thread(target=lambda: other.append(client.get("/v1/info")))
        asking.start()
        asking.join(10)  # a loop blocked by the engine would answer only once it is released
        assert other and other[0].status_code == 200 and not answers, "the loop answers while the engine works"
        release.set()
        worker.join(30)
    finally:
        release.set()
        del engine.segment  # the class's method again
    assert answers and answers[0].status_code == 200, answers


def test_requests_beyond_the_queue_size_wait_no_more(sam_engine_dir):
    """--queue-size 1: one request holds the engine, one waits for it, the next is a 429; then both are served."""
    app = create_app(Settings(engine_dir=str(sam_engine_dir), queue_size=1))
    with TestClient(app) as client:
        engine, entered, release, answers = app.state.manager.default.manager.engines[0], threading.Event(), \
            threading.Event(), []
        original = engine.segment
        engine.segment = lambda *args, **kwargs: (entered.set(), release.wait(30), original(*args, **kwargs))[2]
        send = lambda: answers.append(client.post("/v1/segment", json={"image": b64(image()),  # noqa: E731
                                                                      "points": [[5, 5]]}))
        workers = [threading.Thread(target=send) for _ in range(3)]
        try:
            workers[0].start()
            assert entered.wait(30), "the first holds the engine"
            workers[1].start()
            workers[2].start()  # of these two, one waits for the engine and the other is refused at once
            wait_until(lambda: answers, 30)
            assert answers[0].status_code == 429 and refusal(answers[0])["field"] == "queue", answers[0].text
            assert answers[0].headers["retry-after"] and client.get("/v1/health").status_code == 200
        finally:
            release.set()
            for worker in workers:
                worker.join(30)
        assert sorted(answer.status_code for answer in answers) == [200, 200, 429]


@pytest.mark.parametrize("path", ["/v1/inpaint", "/v1/jobs", "/v1/outpaint", "/v1/outpaint/jobs"])
def test_a_mask_maker_on_a_painting_route_is_refused_naming_model(client, path):
    data = {"model": "sam", **({"right": "16"} if "outpaint" in path else {})}
    pictures = {**upload(), **({} if "outpaint" in path else {"mask_image": ("m.png", png(mask(*SIZE)), "image/png")})}
    error = refusal(client.post(path, files=pictures, data=data))
    assert error["field"] == "model" and "mask maker" in error["message"] and "/v1/segment" in error["message"]


def test_a_mask_maker_as_the_default_engine(sam_engine_dir):
    """Served alone, it is what requests without a model reach: the painting and A1111 routes refuse it."""
    with TestClient(create_app(Settings(engine_dir=str(sam_engine_dir)))) as client:
        for path in ("/v1/inpaint", "/v1/jobs"):
            error = refusal(client.post(path, files={**upload(), "mask_image": ("m.png", png(mask(*SIZE)),
                                                                                "image/png")}))
            assert error["field"] == "model" and "Segment Anything" in error["message"], error
        for path, body in (("/sdapi/v1/img2img", {"init_images": [b64(image())], "mask": b64(mask(*SIZE))}),
                           ("/sdapi/v1/txt2img", {"prompt": "a bench", "width": 64, "height": 64})):
            answer = client.post(path, json=body)  # as for an eraser: the checkpoint A1111 has selected
            assert answer.status_code == 422 and refusal(answer)["field"] == "sd_model_checkpoint", answer.text
            assert "mask maker" in refusal(answer)["message"] and "/v1/segment" in refusal(answer)["fix"]
        answer = client.post("/v1/segment", files=upload(), data={"points": json.dumps(POINTS)})
        assert answer.status_code == 200 and client.get("/v1/health").json()["status"] == "ok"


def test_ray_refuses_a_mask_maker_at_start_before_ray_starts(sam_engine_dir):
    ran = subprocess.run([sys.executable, "-m", "inpaintrt.serve.cli", "--engine", str(sam_engine_dir), "--ray"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "is a mask maker (sam)" in ran.stderr and "without --ray" in ran.stderr, ran.stderr
    assert "ray" not in ran.stdout.lower(), "refused before a Ray cluster was started"


def test_a_server_without_a_mask_maker_says_so_naming_model(eraser_engine_dir):
    with TestClient(create_app(Settings(engine_dir=str(eraser_engine_dir)))) as client:
        error = refusal(client.post("/v1/segment", files=upload(), data={"points": "[[1, 1]]"}))
        assert error["field"] == "model" and "no mask maker" in error["message"]


def test_info_lists_the_mask_makers_with_their_kind(client):
    models = {model["name"]: model for model in client.get("/v1/info").json()["models"]}
    assert {name: model["kind"] for name, model in models.items()} == {
        "lama-engine": "eraser", "sam": "segmenter", "clipseg": "segmenter"}
    assert (models["sam"]["family"], models["sam"]["clicks"], models["sam"]["phrases"]) == ("sam", True, False)
    assert (models["clipseg"]["family"], models["clipseg"]["clicks"], models["clipseg"]["phrases"]) == (
        "clipseg", False, True)


def test_the_openapi_document_describes_the_route_and_its_example_works(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]
    content = operation["requestBody"]["content"]
    fields = content["application/json"]["schema"]["properties"]
    assert {"image", "model", "points", "labels", "box", "multimask_output", "text", "threshold", "format"} == set(fields)
    assert "Segment Anything" in fields["points"]["description"] and "CLIPSeg" in fields["text"]["description"]
    assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert {"413", "415", "422", "429"} <= set(operation["responses"])
    answer = client.post("/v1/segment", json=content["application/json"]["example"])
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("raised, status, field, says", [
    (lambda: __import__("inpaintrt.runtime.errors", fromlist=["InvalidArgument"]).InvalidArgument(
        "box", "box is wrong", "send another box"), 422, "box", "box is wrong"),
    (lambda: FloatingPointError("Segment Anything returned NaN (fp16 overflow?)"), 500, "server", "precision"),
    (lambda: ValueError("a bug's plain ValueError"), 500, "server", "internal error"),  # not the picture's fault
])
def test_engine_errors_are_answered_by_what_they_mean(app, client, raised, status, field, says):
    """The engine's refusal names its field; an fp16 overflow is the server's setting; anything else a bug."""
    engine = app.state.manager.models["sam"].manager.engines[0]

    def failing(*args, **kwargs):
        raise raised()

    engine.segment = failing
    try:
        answer = client.post("/v1/segment", json={"image": b64(image()), "points": [[5, 5]]})
    finally:
        del engine.segment  # the class's method again
    error = answer.json()["error"]
    assert (answer.status_code, error["field"]) == (status, field) and says in error["message"], error
    assert client.post("/v1/segment", json={"image": b64(image()), "points": [[5, 5]]}).status_code == 200


def test_the_pool_lends_its_engine_first_come_first_served():
    """Waiting requests get the engine in the order they came, one that left is skipped, and an engine whose
    client left is lent again only once its thread has finished."""
    import asyncio

    from inpaintrt.serve.errors import ApiError
    from inpaintrt.serve.segmenting import EnginePool

    async def scenario() -> list[str]:
        pool, order, gates = EnginePool(["engine"], queue_size=4), [], {}

        def call(engine, who):
            gates[who].wait(30)
            order.append(who)
            return who

        def run(who):
            gates[who] = threading.Event()
            return asyncio.ensure_future(pool.run(lambda engine: call(engine, who)))

        first = run("first")
        await asyncio.sleep(0.05)  # first holds the engine
        waiting = {who: run(who) for who in ("a", "b", "c")}
        await asyncio.sleep(0.05)
        waiting["b"].cancel()  # b's client left while waiting
        first.cancel()  # first's client left while its thread runs: the engine stays lent until the thread ends
        await asyncio.sleep(0.05)
        assert order == [] and not any(gate.is_set() for gate in gates.values())
        for who in ("c", "a", "first"):  # the threads may be released in any order: c and a wait their turn
            gates[who].set()
        assert await waiting["a"] == "a" and await waiting["c"] == "c"
        later = [run(who) for who in "defgh"]  # d holds the engine, the other four fill the waiting places
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as full:
            await pool.run(lambda engine: None)
        assert full.value.status == 429 and full.value.field == "queue"
        for who in "hgfed":
            gates[who].set()
        assert await asyncio.gather(*later) == list("defgh")
        return order

    assert asyncio.run(scenario()) == ["first", "a", "c", "d", "e", "f", "g", "h"]


def test_the_pools_engines_share_one_embedding_cache(sam_engine_dir):
    """--workers 2: a second click on a picture finds its embedding on whichever engine takes it."""
    from inpaintrt import Engine
    from inpaintrt.serve.segmenting import EnginePool

    first, second = Engine.load(sam_engine_dir), Engine.load(sam_engine_dir)
    assert first.embedding_cache is not second.embedding_cache
    EnginePool([first, second], queue_size=4)
    cache = first.embedding_cache
    assert second.embedding_cache is cache
    picture_pixels = np.asarray(image())
    want = first.segment(picture_pixels, points=POINTS)
    got = second.segment(picture_pixels, points=POINTS)
    assert (cache.misses, cache.hits) == (1, 1) and np.array_equal(got.logits, want.logits)
