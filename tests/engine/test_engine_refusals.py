"""Refusals at the engine: bad input to Engine.load, Engine.inpaint, the runtime's checks and the `inpaint` CLI
gets a ValueError that names the parameter and the fix, never a deep traceback. The same refusals through a real
server: tests/serve/test_serve_refusals.py.

The documented exception for every bad input is ValueError (EngineDirectoryError is one). User-input refusals
from prompts, prompt syntax, step callbacks and schedulers are InvalidArguments that name their argument (the
server and the CLI report `.field` and `.fix`); they stay ValueErrors for callers catching those. Bad inputs
found in use: an output too large to generate, the CLI's picture messages, PIL's object reprs."""
from __future__ import annotations

import io
import json
import shutil
import struct
import time
import zlib

import numpy as np
import pytest

from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.cli import inpaint_main
from inpaintrt.engine.arguments import check_size
from inpaintrt.engine.manifest import EngineDirectoryError
from inpaintrt.runtime import images
from inpaintrt.runtime.callbacks import StepCallback, check_tensor_inputs
from inpaintrt.runtime.errors import InvalidArgument
from inpaintrt.runtime.prompt_syntax import check_syntax
from inpaintrt.runtime.schedulers import make_scheduler

IMAGE, MASK = sample_image(96, 64), sample_mask(96, 64)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and that has no pixel data: decoding it would be the bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


TRUNCATED = png_bytes(sample_image(96, 64))[:400]
EMBEDS = np.zeros((1, 77, 32), np.float32)
GOOD = dict(prompt="a cat", num_inference_steps=4, height=64, width=96, progress=False)

CALL_CASES = [  # (overrides, expected message fragment)
    (dict(mask_image=sample_mask(64, 64)), "pass a mask of the same size as the image"),
    (dict(height=60), "height=60 must be a positive multiple of 8"),
    (dict(width=100), "width=100 must be a positive multiple of 8"),
    (dict(height=0), "height=0 must be a positive multiple of 8"),
    (dict(strength=0), r"strength=0 must be a number in \(0, 1\]"),
    (dict(strength=1.5), r"strength=1.5 must be a number in \(0, 1\]"),
    (dict(strength=-0.2), r"strength=-0.2 must be a number in \(0, 1\]"),
    (dict(strength=0.1, num_inference_steps=5), "leaves no denoising step; raise strength"),
    (dict(scheduler="dpm++"), "scheduler 'dpm\\+\\+' is unknown; choose one of"),
    (dict(num_inference_steps=0), "num_inference_steps=0 must be a whole number >= 1"),
    (dict(num_inference_steps=1000, scheduler="ddim"), "reach timestep 1000, past the model's 1000 training steps"),
    (dict(num_inference_steps=1000, scheduler="pndm"), "use fewer steps"),
    (dict(num_inference_steps=1000, scheduler="unipc"), r"timestep \d+ twice, and its multistep update would divide by zero"),
    (dict(num_inference_steps=1000, scheduler="dpmpp_2m"), r"use fewer steps \(e\.g\. 999\) or another scheduler"),
    (dict(num_inference_steps=-3), "num_inference_steps=-3 must be a whole number >= 1"),
    (dict(num_inference_steps=2.5), "num_inference_steps=2.5 must be a whole number >= 1"),
    (dict(guidance_scale=float("nan")), "guidance_scale=nan must be a finite number"),
    (dict(output_type="tensor"), "output_type='tensor' is unknown"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt=0 must be a whole number >= 1"),
    (dict(prompt=123), "prompt must be a string or a non-empty list of strings"),
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "negative_prompt has 3 entries but prompt has 2"),
    (dict(latents=np.zeros((1, 4, 7, 7), np.float32)), r"latents has shape \(1, 4, 7, 7\); for this call it must be"),
    (dict(generator="seed"), "generator must be an int seed or an object with standard_normal"),
    (dict(scheduler_options={"etaa": 1}), r"scheduler_options \['etaa'\] are not options of scheduler 'pndm'"),
    (dict(image=np.full((64, 96, 3), np.nan, np.float32)), "image contains NaN or infinite values"),
    (dict(image=np.zeros((64, 96, 3), np.int32)), "image array has dtype int32; pass uint8"),
    (dict(image=3.5), "image must be a PIL.Image, an HxW / HxWxC numpy array, a file path or bytes"),
    # pictures
    (dict(image=np.zeros((0, 0, 3), np.uint8)), r"image has shape \(0, 0, 3\); pass a picture of at least 8x8"),
    (dict(image=sample_image(1, 1), mask_image=sample_mask(1, 1)), "image is 1x1; pass a picture of at least 8x8"),
    (dict(image=png_header(20000, 20000)), "image is too large to decode safely"),
    (dict(image=png_header(9000, 9000)), "image is 9000x9000 = 81000000 pixels, more than the 67108864 allowed"),
    (dict(image=TRUNCATED), "image could not be decoded .*truncated or corrupt"),
    (dict(image=b"definitely not a picture"), "image is not a picture PIL can read"),
    (dict(image="/no/such/picture.png"), "image: no such file"),
    (dict(image=np.full((64, 96, 3), np.inf, np.float32)), "image contains NaN or infinite values"),
    (dict(image=np.full((64, 96, 3), 1.5, np.float32)), r"image float values must lie in \[0, 1\]"),
    (dict(image=np.zeros((64, 96, 3), bool)), "image array has dtype bool; pass uint8"),
    (dict(image=np.zeros((64, 96, 3), np.complex64)), "image array has dtype complex64; pass uint8"),
    (dict(image=np.zeros((2, 64, 96, 3), np.uint8)), "image must be an HxW or HxWxC .* got shape \\(2, 64, 96, 3\\)"),
    (dict(image=np.zeros((64, 96, 5), np.uint8)), "image must be an HxW or HxWxC .* got shape \\(64, 96, 5\\)"),
    # masks
    (dict(mask_image=np.zeros((64, 96), np.uint8)), "mask_image is all black .* nothing to repaint"),
    (dict(mask_image=np.full((64, 96), 0.3, np.float32)), "mask_image is all black .* nothing to repaint"),
    (dict(mask_image=np.full((64, 96), np.nan, np.float32)), "mask_image contains NaN or infinite values"),
    (dict(mask_image=b"\x00\x01"), "mask_image is not a picture PIL can read"),
    (dict(mask_image=sample_mask(96, 64), image=sample_image(96, 72)), "pass a mask of the same size as the image"),
    # arguments
    (dict(guidance_scale="7"), "guidance_scale='7' must be a finite number"),
    (dict(guidance_scale=float("inf")), "guidance_scale=inf must be a finite number"),
    (dict(prompt_embeds=np.zeros((1, 77, 16), np.float32), prompt=None),
     r"prompt_embeds has shape \(1, 77, 16\); this engine's text encoder gives \(batch, 77, 32\)"),
    (dict(prompt_embeds=np.zeros((1, 77, 32), np.int64), prompt=None), "prompt_embeds must be a float array"),
    (dict(prompt_embeds=EMBEDS), "pass either prompt or prompt_embeds, not both"),
    (dict(prompt_embeds=EMBEDS, prompt=None, negative_prompt_embeds=np.zeros((2, 77, 32), np.float32)),
     r"negative_prompt_embeds has shape \(2, 77, 32\); this engine's text encoder gives \(1, 77, 32\)"),
    (dict(negative_prompt="x", negative_prompt_embeds=EMBEDS), "pass either negative_prompt or negative_prompt_embeds"),
    (dict(blur_factor=-2), r"blur_factor=-2 must be a number of pixels in \[0, 10000\) \(0 = no blur\)"),
    (dict(padding_mask_crop=-1), "padding_mask_crop=-1 must be a whole number of pixels >= 0"),
    (dict(keep_unmasked=True, output_type="latent"), "keep_unmasked and padding_mask_crop paste pixels"),
    (dict(keep_input_size=True), "keep_input_size=True sets height and width from the image; do not pass them"),
    (dict(latents=np.full((1, 4, 8, 12), np.nan, np.float32)), "latents must be finite floats"),
    (dict(callback_on_step_end=lambda i, t, x: x[:, :2]), "callback_on_step_end returned latents of shape"),
    (dict(image=np.zeros((1, 4, 8, 12), np.float32), height=128), "image latents .* leave height and width unset"),
]


@pytest.mark.parametrize("overrides,message", CALL_CASES, ids=[m[:40] for _, m in CALL_CASES])
def test_bad_call_arguments(engine, overrides, message):
    args = {**GOOD, "image": IMAGE, "mask_image": MASK, **overrides}
    with pytest.raises(ValueError, match=message):
        engine.inpaint(**args)


def _corrupt_missing_file(root):
    (root / "vae_decoder.onnx").unlink()


def _corrupt_version(root):
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format_version"] = 99
    (root / "manifest.json").write_text(json.dumps(manifest))


def _corrupt_no_manifest(root):
    (root / "manifest.json").unlink()


def _corrupt_truncated_graph(root):
    data = (root / "unet.onnx").read_bytes()
    (root / "unet.onnx").write_bytes(data[: len(data) // 2])


def _corrupt_changed_bytes(root):
    data = bytearray((root / "text_encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "text_encoder.onnx").write_bytes(bytes(data))


def _corrupt_bad_json(root):
    (root / "manifest.json").write_text("{not json")


DIRECTORY_CASES = [
    (_corrupt_missing_file, "is missing vae_decoder.onnx, which the manifest lists"),
    (_corrupt_version, "manifest format version 99, but this inpaintrt reads version 1"),
    (_corrupt_no_manifest, "has no manifest.json"),
    (_corrupt_truncated_graph, "unet.onnx .* \\(truncated or replaced\\)"),
    (_corrupt_changed_bytes, "text_encoder.onnx .* does not match its hash"),
    (_corrupt_bad_json, "is not valid JSON"),
]


@pytest.mark.parametrize("corrupt,message", DIRECTORY_CASES, ids=[c.__name__[9:] for c, _ in DIRECTORY_CASES])
def test_bad_engine_directory(engines, tmp_path, corrupt, message):
    root = tmp_path / "engine"
    shutil.copytree(engines[9], root)
    corrupt(root)
    with pytest.raises(EngineDirectoryError, match=message) as info:
        Engine.load(root)
    assert "inpaint-export" in str(info.value)  # says how to rebuild
    assert isinstance(info.value, ValueError)


def test_missing_engine_directory(tmp_path):
    with pytest.raises(EngineDirectoryError, match="does not exist; create it with `inpaint-export`"):
        Engine.load(tmp_path / "nowhere")


def test_count_of_bad_input_cases():
    """docs/troubleshooting.md ("Bad input") reports this count; keep them in step."""
    assert len(CALL_CASES) + len(DIRECTORY_CASES) + 3 == 68


def test_unknown_and_unavailable_backends(engines):
    with pytest.raises(ValueError, match="backend 'cuda' is unknown; choose one of auto, ort-cpu"):
        Engine.load(engines[9], backend="cuda")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # a CPU build of onnxruntime
        with pytest.raises(RuntimeError, match=r"has no CUDA provider .*pip install 'inpaintrt\[cuda\]'"):
            Engine.load(engines[9], backend="ort-cuda")
    with pytest.raises(RuntimeError, match="has no TensorRT plans; build them with `inpaint-build-plans --engine"):
        Engine.load(engines[9], backend="tensorrt")


def test_nan_decode_is_refused(engine, monkeypatch):
    monkeypatch.setattr(engine._models, "decode", lambda z: np.full((1, 3, 64, 96), np.nan, np.float32))
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        engine.inpaint(IMAGE, MASK, **dict(GOOD, num_inference_steps=1))


# prompts, prompt syntax, step callbacks and schedulers: InvalidArguments naming their argument ---------------

def refusal(call, *args, **kwargs) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as raised:
        call(*args, **kwargs)
    assert isinstance(raised.value, ValueError) and raised.value.fix
    return raised.value


def test_prompt_syntax_and_callbacks_name_their_argument():
    assert refusal(check_syntax, "compel").field == "prompt_syntax"
    names = "callback_on_step_end_tensor_inputs"
    assert refusal(check_tensor_inputs, "latents", "sd").field == names
    error = refusal(check_tensor_inputs, ["latents", "noise"], "sd")
    assert error.field == names and "['noise']" in error.fix
    assert refusal(StepCallback, 3, None, ["latents"], "sd").field == "callback_on_step_end"
    error = refusal(StepCallback, lambda pipe, step, t, kwargs: None, None, ["mask"], "sd",
                    {"mask": "is not made for a 4-channel UNet"})
    assert error.field == names and "'mask'" in error.fix
    returns_a_list = StepCallback(lambda pipe, step, t, kwargs: [], type("Pipe", (), {})(), ["latents"], "sd")
    assert refusal(returns_a_list, 0, 999, {"latents": None}).field == "callback_on_step_end"


@pytest.mark.parametrize("scheduler, options, steps, field", [
    ("dpmpp_2m", {"solver_type": "bh1"}, 10, "scheduler_options.solver_type"),
    ("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++"}, 10, "scheduler_options.algorithm_type"),
    ("dpmpp_2m", {"solver_order": 3}, 10, "scheduler_options.solver_order"),
    ("unipc", {"solver_type": "midpoint"}, 10, "scheduler_options.solver_type"),
    ("euler_a", {"prediction_type": "sample"}, 10, "scheduler_options.prediction_type"),
    ("pndm", {"prediction_type": "sample"}, 10, "scheduler_options.prediction_type"),
    ("ddpm", {"variance_type": "fixed_large_log"}, 10, "scheduler_options.variance_type"),
    ("lcm", {"original_inference_steps": 4}, 8, "num_inference_steps"),
    ("pndm", {"skip_prk_steps": False}, 3, "num_inference_steps"),
])
def test_a_scheduler_option_it_cannot_run_is_named(scheduler, options, steps, field):
    error = refusal(make_scheduler(scheduler, {}, options).set_timesteps, steps)
    assert error.field == field
    if field.startswith("scheduler_options."):
        assert error.fix.endswith(f"or leave {field.split('.')[1]} out")


def test_the_engines_own_config_names_the_scheduler_choice():
    """A setting from the engine's scheduler config is the model's: the caller's fix is another scheduler."""
    error = refusal(make_scheduler("euler_a", {"prediction_type": "sample"}).set_timesteps, 10)
    assert error.field == "scheduler" and "config sets prediction_type='sample'" in str(error)
    assert error.fix == "choose another scheduler"


@pytest.mark.parametrize("arguments, field", [
    ({"prompt": "a", "prompt_embeds": "given"}, "prompt"),
    ({"negative_prompt": "a", "negative_prompt_embeds": "given"}, "negative_prompt"),
    ({"prompt_2": "a"}, "prompt_2"),
    ({"negative_prompt_2": "a"}, "negative_prompt_2"),
    ({"pooled_prompt_embeds": "given", "prompt_embeds": "given", "prompt": None}, "pooled_prompt_embeds"),
    ({"negative_prompt_embeds": "short", "prompt": None, "prompt_embeds": "long"}, "negative_prompt_embeds"),
])
def test_prompt_refusals_name_their_argument(engine, arguments, field):
    import numpy as np

    width = engine.encode_prompt("a")[0].shape[-1]
    shapes = {"given": (1, 77, width), "short": (1, 77, width), "long": (1, 154, width)}
    arguments = {k: np.zeros(shapes[v], np.float32) if v in shapes else v for k, v in arguments.items()}
    if "pooled_prompt_embeds" in arguments:
        arguments["pooled_prompt_embeds"] = np.zeros((1, width), np.float32)
    error = refusal(engine.inpaint, sample_image(64, 64), sample_mask(64, 64), num_inference_steps=2, height=64,
                    width=64, progress=False, **{"prompt": "a", **arguments})
    assert error.field == field, error


# bad inputs found in use -------------------------------------------------------------------------------------

ARGS = dict(prompt="a cat", num_inference_steps=1, progress=False)


@pytest.mark.parametrize("height,width,named", [(128, 100000, "width"), (100000, 128, "height"), (4096, 4096, "height")])
def test_an_output_too_large_is_refused_up_front(engine, height, width, named):
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"^{named}={max(height, width)} with .* more than the {2048 * 2048} one call"):
        engine.inpaint(sample_image(96, 64), sample_mask(96, 64), height=height, width=width, **ARGS)
    assert time.monotonic() - start < 5, "refused before any model runs"


def test_the_largest_allowed_output_passes_the_check():
    assert check_size(2048, 2048, 8) == (2048, 2048)
    assert check_size(128, 32768, 8) == (128, 32768)


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
