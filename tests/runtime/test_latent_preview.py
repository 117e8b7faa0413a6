"""The latents' cheap RGB preview (runtime/latent_preview.py) and the jobs that carry it when asked."""
from __future__ import annotations

import base64
import io
import threading
import types

import numpy as np
from PIL import Image

from inpaintrt.runtime.latent_preview import (SD_COEFFICIENTS, SDXL_COEFFICIENTS, coefficients, preview_data_url,
                                              preview_rgb)
from inpaintrt.engine.families import FAMILIES
from inpaintrt.serve.jobs import DONE, JobManager


def test_the_projection_is_a1111s_approx_cheap():
    assert SD_COEFFICIENTS.shape == SDXL_COEFFICIENTS.shape == (4, 3)
    assert coefficients("sd") is SD_COEFFICIENTS and coefficients("sdxl") is SDXL_COEFFICIENTS
    assert coefficients(FAMILIES["kandinsky22"].preview) is None
    assert [FAMILIES[name].preview for name in ("sd1", "sd2", "sdxl")] == ["sd", "sd", "sdxl"]
    latents = np.zeros((1, 4, 2, 3), np.float32)
    latents[0, 0, 0, 0] = 1.0  # channel 0 alone: the matrix's first row
    latents[0, 3, 1, 2] = 2.0  # far out: clipped
    rgb = preview_rgb(latents, "sd")
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == np.round((SD_COEFFICIENTS[0] + 1) / 2 * 255).astype(int).tolist()
    assert rgb[0, 1].tolist() == [128, 128, 128], "zero latents: mid grey"
    assert rgb[1, 2].tolist() == np.round(np.clip((2 * SD_COEFFICIENTS[3] + 1) / 2, 0, 1) * 255).astype(int).tolist()
    assert not np.array_equal(preview_rgb(latents, "sdxl"), rgb), "SDXL has its own matrix"
    assert preview_rgb(latents, None) is None
    assert preview_rgb(np.zeros((1, 9, 2, 2)), "sd") is None, "not 4 latent channels: no preview"


def test_data_url_and_device_arrays():
    latents = np.random.default_rng(0).normal(size=(4, 8, 12)).astype(np.float32)
    on_device = types.SimpleNamespace(get=lambda: latents)  # cupy's way to the host
    url = preview_data_url(on_device, "sd")
    assert url.startswith("data:image/png;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert picture.size == (12, 8)
    assert np.array_equal(np.asarray(picture.convert("RGB")), preview_rgb(latents, "sd"))


class SteppingEngine:
    """Stands in for an Engine: three steps over known latents once `go` is set."""
    family, record = "sd1", FAMILIES["sd1"]

    def __init__(self):
        self.go = threading.Event()

    def inpaint(self, callback_on_step_end=None, **_):
        self.go.wait(10)
        for i in range(3):
            callback_on_step_end(i, 999 - i, np.full((1, 4, 4, 4), i / 2, np.float32))
        return types.SimpleNamespace(images=[Image.new("RGB", (32, 32))])


def run_job(previews: bool):
    engine = SteppingEngine()
    manager = JobManager(lambda: engine)
    manager.start(None)
    try:
        job = manager.submit({}, seed=1, total=3, steps=3)
        job.previews = previews
        engine.go.set()
        assert job.done.wait(10) and job.status == DONE
        return job
    finally:
        manager.stop()


def test_jobs_make_previews_only_when_asked():
    assert run_job(previews=False).preview is None
    job = run_job(previews=True)
    last = Image.open(io.BytesIO(base64.b64decode(job.preview.split(",", 1)[1])))
    assert last.size == (4, 4)
    assert np.array_equal(np.asarray(last.convert("RGB")), preview_rgb(np.full((1, 4, 4, 4), 1.0, np.float32), "sd"))
    view = job.snapshot()
    assert "preview" not in view and view["steps"] == view["steps_done"] == 3
