"""Bad inputs found in use: an output too large to generate, the CLI's picture messages, PIL's object reprs,
a cancelled job's message, unknown HTTP fields with a likely meaning, and warnings that must reach the client."""
import time

import pytest

from conftest import sample_image, sample_mask
from inpaintrt.cli import inpaint_main
from inpaintrt.engine import arguments
from inpaintrt.runtime import images, notices

ARGS = dict(prompt="a cat", num_inference_steps=1, progress=False)


@pytest.mark.parametrize("height,width,named", [(128, 100000, "width"), (100000, 128, "height"), (4096, 4096, "height")])
def test_an_output_too_large_is_refused_up_front(engine, height, width, named):
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"^{named}={max(height, width)} with .* more than the {2048 * 2048} one call"):
        engine.inpaint(sample_image(96, 64), sample_mask(96, 64), height=height, width=width, **ARGS)
    assert time.monotonic() - start < 5, "refused before any model runs"


def test_the_largest_allowed_output_passes_the_check():
    assert arguments.check_size(2048, 2048, 8) == (2048, 2048)
    assert arguments.check_size(128, 32768, 8) == (128, 32768)


@pytest.fixture
def files(tmp_path):
    sample_image(96, 64).save(tmp_path / "image.png")
    sample_mask(96, 64).save(tmp_path / "mask.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    return tmp_path


@pytest.mark.parametrize("flags,message", [
    (["--image", "missing.png"], "error: image: no such file 'missing.png'"),
    (["--image", "notes.txt"], "error: image is not a picture PIL can read"),
    (["--mask", "notes.txt"], "error: mask_image is not a picture PIL can read"),
    (["--height", "128", "--width", "100000"], "error: --width: width=100000 with height=128 is 100000x128"),
    (["--mask-grow", "5000"], "error: --mask-grow: mask_grow=5000 must be a whole number of pixels from 0 to 4096"),
    (["--strength", "0"], "error: --strength: strength=0.0 must be a number in (0, 1]"),
    (["--steps", "0"], "error: --steps: num_inference_steps=0 must be a whole number >= 1"),
])
def test_cli_messages_are_the_engines(engines, files, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(files)
    argv = dict(zip(["--engine", "--image", "--mask", "--steps", "--output"],
                    [str(engines[9]), "image.png", "mask.png", "1", "out.png"]))
    argv.update(dict(zip(flags[::2], flags[1::2])))
    assert inpaint_main([part for pair in argv.items() for part in pair]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bytes_are_not_shown_as_an_object_repr():
    with pytest.raises(ValueError) as info:
        images.load_picture(b"hello, not a picture", "image")
    assert "BytesIO" not in str(info.value) and "the given bytes" in str(info.value)


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


class _Engine:
    """A stand-in engine: warns as a truncated prompt does, or waits to be cancelled."""

    def inpaint(self, callback_on_step_end=None, **_):
        notices.warn("prompt 'a cat ...'... is 90 tokens; CLIP reads 77, so the last 13 were dropped")
        for step in range(3):
            callback_on_step_end(step, None, None)
        return type("Result", (), {"images": [sample_image(8, 8)]})()


def test_job_messages_and_warnings():
    pytest.importorskip("fastapi")
    from inpaintrt.serve.app import _result
    from inpaintrt.serve.errors import ApiError
    from inpaintrt.serve.jobs import CANCELLED, DONE, JobManager

    manager = JobManager(_Engine, workers=1, queue_size=4)
    queued = manager.submit({}, seed=1, total=3)
    manager.cancel(queued.id)
    with pytest.raises(ApiError) as info:
        _result(queued, "png")
    assert queued.status == CANCELLED and "None" not in info.value.message
    assert info.value.message.endswith("was cancelled while queued, before it ran")

    job = manager.submit({}, seed=1, total=3)
    job.started = time.monotonic()  # as a worker sets it
    manager.run_job(job, _Engine())
    assert job.status == DONE and job.snapshot()["warnings"] == [
        "prompt 'a cat ...'... is 90 tokens; CLIP reads 77, so the last 13 were dropped"]
    assert "last 13 were dropped" in _result(job, "png").headers["X-Warnings"]


def test_truncation_reaches_the_collected_notices(engines):
    from inpaintrt.runtime.tokenizer import PromptTokenizer

    import json

    manifest = json.loads((engines[9] / "manifest.json").read_text())
    info = manifest["tokenizer"]
    info = info if "file" in info else next(iter(info.values()))
    tokenizer = PromptTokenizer(engines[9] / info["file"], info["max_length"], info["pad_id"])
    with pytest.warns(UserWarning, match="were dropped"), notices.collect() as found:
        tokenizer([" ".join(["cat"] * 100)])
    assert len(found) == 1 and "were dropped" in found[0]
