"""Cross-request batching in the server (docs/batching.md): jobs that agree share UNet calls, each keeps its
own picture, seed, progress, cancel and errors, and gets the picture it gets alone."""
from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from parity import record
from serve_helpers import FAST, files, form, mask, picture, running_server
from inpaintrt.serve.batching import Batching
from inpaintrt.serve.jobs import CANCELLED, DONE, FAILED, JobManager

httpx = pytest.importorskip("httpx")
STEPS = dict(num_inference_steps=4, height=64, width=64, scheduler="euler_a")  # ancestral: a draw every step


def _arguments(index: int, **extra) -> dict:
    return {"image": picture(seed=index), "mask_image": mask(), "prompt": f"a bench, take {index}", **STEPS, **extra}


def _alone(engine, arguments: dict, seed: int) -> np.ndarray:
    result = engine.inpaint(**arguments, generator=seed, progress=False, output_type="pil").images[0]
    return np.asarray(result.convert("RGB"))


def _pixels(job) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(job.png)).convert("RGB"))


class GatedUnet:
    """Wraps an engine's UNet: counts the rows of each call, and the call after `hold_after` calls waits
    until `release` is set (so a test can act mid-loop without racing the tiny model)."""

    def __init__(self, engine, hold_after: int | None = None):
        self.unet, self.rows, self.hold_after = engine._models.unet, [], hold_after
        self.held, self.release = threading.Event(), threading.Event()
        engine._models.unet = self

    def __call__(self, sample, timestep, feeds):
        if self.hold_after is not None and len(self.rows) == self.hold_after:
            self.held.set()
            self.release.wait(60)
        self.rows.append(len(sample))
        return self.unet(sample, timestep, feeds)


@pytest.fixture
def engine(engine_dir):
    from inpaintrt import Engine

    return Engine.load(engine_dir, backend="ort-cpu")


def _manager(engine, max_batch: int, window_ms: float = 1000) -> JobManager:
    manager = JobManager(lambda: engine, workers=1, queue_size=16, batching=Batching(max_batch, window_ms))
    manager.start(None)
    return manager


def test_interleaved_jobs_are_batched_and_each_gets_its_single_request_picture(engine):
    """Jobs with their own pictures, prompts and seeds, interleaved with jobs another loop must run (other
    steps), and one job with bad input: the first four that agree are gathered (the bad one fails in its own
    set-up with the engine's message; the other three share UNet calls of 6 rows, guided), each picture equals
    the one it gets alone (measured: identical bytes), and the rest run in their own loops."""
    expected = {seed: _alone(engine, _arguments(seed), seed) for seed in (11, 12, 13, 14)}
    other = _alone(engine, _arguments(20, num_inference_steps=3), 20)
    unet = GatedUnet(engine)
    manager = _manager(engine, max_batch=4)
    try:
        bad = dict(_arguments(15), mask_image=mask(32, 32))  # the server checks it too; the engine refuses it
        jobs = {11: manager.submit(_arguments(11), 11, 4), 20: manager.submit(dict(_arguments(20),
                                                                                    num_inference_steps=3), 20, 3),
                12: manager.submit(_arguments(12), 12, 4), 15: manager.submit(bad, 15, 4),
                13: manager.submit(_arguments(13), 13, 4), 14: manager.submit(_arguments(14), 14, 4)}
        for job in jobs.values():
            assert job.done.wait(120)
    finally:
        manager.stop()
    assert jobs[15].status == FAILED and "mask_image" in jobs[15].error and jobs[15].batch_size == 4
    for seed in (11, 12, 13):
        assert jobs[seed].status == DONE and jobs[seed].batch_size == 4 and jobs[seed].step == 4
        difference = record("served batched member vs alone, uint8 max abs", np.abs(
            _pixels(jobs[seed]).astype(int) - expected[seed]).max())
        assert difference == 0, f"seed {seed}: {difference}"
    assert jobs[14].batch_size == 1 and np.array_equal(_pixels(jobs[14]), expected[14]), "the fifth waits its turn"
    assert jobs[20].batch_size == 1 and np.array_equal(_pixels(jobs[20]), other)
    assert 6 in unet.rows, "three guided members of one row each share UNet calls"


def test_a_cancelled_member_is_dropped_and_the_others_finish(engine):
    """Cancel one member mid-loop (the UNet is held after the batch's first call): it ends cancelled at once,
    the other two finish with their single-request pictures."""
    expected = {seed: _alone(engine, _arguments(seed), seed) for seed in (31, 33)}
    unet = GatedUnet(engine, hold_after=1)
    manager = _manager(engine, max_batch=3)
    try:
        jobs = [manager.submit(_arguments(seed), seed, 4) for seed in (31, 32, 33)]
        assert unet.held.wait(60)
        manager.cancel(jobs[1].id)
        unet.release.set()
        for job in jobs:
            assert job.done.wait(120)
    finally:
        unet.release.set()
        manager.stop()
    assert jobs[1].status == CANCELLED and jobs[1].png is None and "cancelled after" in jobs[1].error
    assert jobs[1].finished <= min(jobs[0].finished, jobs[2].finished), "the cancelled member ends first"
    for job, seed in ((jobs[0], 31), (jobs[2], 33)):
        assert job.status == DONE and job.batch_size == 3
        np.testing.assert_array_equal(_pixels(job), expected[seed])
    assert unet.rows[0] == 6


def test_batching_off_runs_each_job_alone(engine):
    unet = GatedUnet(engine)
    manager = _manager(engine, max_batch=1)
    try:
        jobs = [manager.submit(_arguments(seed), seed, 4) for seed in (41, 42)]
        for job in jobs:
            assert job.done.wait(120)
    finally:
        manager.stop()
    assert [job.batch_size for job in jobs] == [1, 1] and set(unet.rows) == {2}


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "--max-batch must be an integer of at least 1"),
    (["--max-batch", "2", "--batch-window-ms", "-1"], "--batch-window-ms must be between 0 and 1000"),
    (["--max-batch", "2", "--ray"], "leave --max-batch at 1 with --ray"),
])
def test_bad_batching_flags_are_refused_naming_the_flag(engine_dir, flags, message):
    from inpaintrt.serve.cli import parser, settings_from

    with pytest.raises(ValueError, match=message):
        settings_from(parser().parse_args(["--engine", str(engine_dir), *flags]))


def test_concurrent_http_requests_share_a_batch(engine_dir, engine):
    """A real server with --max-batch 3: three concurrent requests are batched (the batch histogram sees
    three jobs of a batch of 3) and each answer is its single-request picture."""
    from test_serve_metrics import scrape, value

    fields = {**FAST, "scheduler": "euler_a"}
    expected = {seed: _alone(engine, {**_arguments(seed), **fields, "prompt": f"take {seed}"}, seed)
                for seed in (51, 52, 53)}
    answers = {}
    with running_server(engine_dir, "--max-batch", "3", "--batch-window-ms", "1000") as server:
        def post(seed):
            with httpx.Client(base_url=server.url, timeout=120) as client:
                answers[seed] = client.post("/v1/inpaint", files=files(picture(seed=seed)),
                                            data=form({**fields, "seed": seed, "prompt": f"take {seed}"}))

        threads = [threading.Thread(target=post, args=(seed,)) for seed in expected]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        found = scrape(server.url)
        info = httpx.get(f"{server.url}/v1/info", timeout=30).json()
    assert info["batching"] == {"max_batch": 3, "window_ms": 1000.0}
    for seed, answer in answers.items():
        assert answer.status_code == 200, answer.text
        got = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"))
        np.testing.assert_array_equal(got, expected[seed])
    assert value(found, "inpaintrt_job_batch_requests_count") == 3
    assert value(found, "inpaintrt_job_batch_requests_sum") == 9, "three jobs, each in a batch of three"
