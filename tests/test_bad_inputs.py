"""Bad input gets a ValueError that names the parameter and the fix, never a deep traceback.

The documented exception for every bad input is ValueError (EngineDirectoryError is one)."""
import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest

from conftest import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.manifest import EngineDirectoryError

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
