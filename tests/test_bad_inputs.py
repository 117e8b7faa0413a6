"""Bad input gets a ValueError that names the parameter and the fix, never a deep traceback."""
import json
import shutil

import numpy as np
import pytest

from conftest import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.manifest import EngineDirectoryError

IMAGE, MASK = sample_image(96, 64), sample_mask(96, 64)
GOOD = dict(prompt="a cat", num_inference_steps=4, height=64, width=96, progress=False)

CALL_CASES = [  # (overrides, expected message fragment)
    (dict(mask_image=sample_mask(64, 64)), "pass a mask of the same size as the image"),
    (dict(height=60), "height=60 must be a positive multiple of 8"),
    (dict(width=100), "width=100 must be a positive multiple of 8"),
    (dict(height=0), "height=0 must be a positive multiple of 8"),
    (dict(strength=0), r"strength=0 must be in \(0, 1\]"),
    (dict(strength=1.5), r"strength=1.5 must be in \(0, 1\]"),
    (dict(strength=-0.2), r"strength=-0.2 must be in \(0, 1\]"),
    (dict(strength=0.1, num_inference_steps=5), "leaves no denoising step; raise strength"),
    (dict(scheduler="dpm++"), "scheduler 'dpm\\+\\+' is unknown; choose one of"),
    (dict(num_inference_steps=0), "num_inference_steps=0 must be an integer >= 1"),
    (dict(num_inference_steps=-3), "num_inference_steps=-3 must be an integer >= 1"),
    (dict(num_inference_steps=2.5), "num_inference_steps=2.5 must be an integer >= 1"),
    (dict(guidance_scale=float("nan")), "guidance_scale=nan must be a finite number"),
    (dict(output_type="tensor"), "output_type='tensor' is unknown"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt=0 must be an integer >= 1"),
    (dict(prompt=123), "prompt must be a string or a non-empty list of strings"),
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "negative_prompt has 3 entries but prompt has 2"),
    (dict(latents=np.zeros((1, 4, 7, 7), np.float32)), r"latents has shape \(1, 4, 7, 7\); for this call it must be"),
    (dict(generator="seed"), "generator must be an int seed or an object with standard_normal"),
    (dict(scheduler_options={"etaa": 1}), r"scheduler_options \['etaa'\] are not options of scheduler 'pndm'"),
    (dict(image=np.full((64, 96, 3), np.nan, np.float32)), "image contains NaN or infinite values"),
    (dict(image=np.zeros((64, 96, 3), np.int32)), "image array has dtype int32; pass uint8"),
    (dict(image=3.5), "image must be a PIL.Image, an HxW / HxWxC numpy array, a file path or bytes"),
]


@pytest.fixture(scope="module")
def engine(engines):
    return Engine.load(engines[9])


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


def test_unknown_and_unavailable_backends(engines):
    with pytest.raises(ValueError, match="backend 'cuda' is unknown; choose one of auto, ort-cpu"):
        Engine.load(engines[9], backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'tensorrt' is not available"):
        Engine.load(engines[9], backend="tensorrt")


def test_nan_decode_is_refused(engine, monkeypatch):
    monkeypatch.setattr(engine._models, "decode", lambda z: np.full((1, 3, 64, 96), np.nan, np.float32))
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        engine.inpaint(IMAGE, MASK, **dict(GOOD, num_inference_steps=1))
