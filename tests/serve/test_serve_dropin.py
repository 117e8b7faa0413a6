"""Found in use, at the server: a cancelled job's message says so (not None), and the warnings an engine gives
(a truncated prompt) reach the client in the job's snapshot and the X-Warnings header. The refusals found in use:
tests/engine/test_engine_refusals.py and tests/serve/test_serve_refusals.py."""
import time

import pytest

from pictures import sample_image
from inpaintrt.runtime import notices


class _Engine:
    """A stand-in engine: warns as a truncated prompt does, or waits to be cancelled."""

    def inpaint(self, callback_on_step_end=None, **_):
        notices.warn("prompt 'a cat ...'... is 90 tokens; CLIP reads 77, so the last 13 were dropped")
        for step in range(3):
            callback_on_step_end(step, None, None)
        return type("Result", (), {"images": [sample_image(8, 8)]})()


def test_job_messages_and_warnings():
    pytest.importorskip("fastapi")
    from inpaintrt.serve.app import result_response
    from inpaintrt.serve.errors import ApiError
    from inpaintrt.serve.jobs import CANCELLED, DONE, JobManager

    manager = JobManager(_Engine, workers=1, queue_size=4)
    queued = manager.submit({}, seed=1, total=3)
    manager.cancel(queued.id)
    with pytest.raises(ApiError) as info:
        result_response(queued, "png")
    assert queued.status == CANCELLED and "None" not in info.value.message
    assert info.value.message.endswith("was cancelled while queued, before it ran")

    job = manager.submit({}, seed=1, total=3)
    job.started = time.monotonic()  # as a worker sets it
    manager.run_job(job, _Engine())
    assert job.status == DONE and job.snapshot()["warnings"] == [
        "prompt 'a cat ...'... is 90 tokens; CLIP reads 77, so the last 13 were dropped"]
    assert "last 13 were dropped" in result_response(job, "png").headers["X-Warnings"]
