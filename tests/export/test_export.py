"""inpaint-export: checkpoints in, self-describing engine directories out, nothing half-written."""
import json

import numpy as np
import pytest

from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.cli import export_main, inpaint_main
from inpaintrt.export import exporter
from ldm_format import save_single_file


@pytest.mark.parametrize("channels", [9, 4])
def test_manifest_describes_the_engine(engines, pipes, channels):
    root = engines[channels]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    model = manifest["model"]
    assert model["unet_in_channels"] == channels
    assert model["vae_scaling_factor"] == pipes[channels].vae.config.scaling_factor
    assert model["vae_scale_factor"] == 8 and model["default_height"] == 128
    assert manifest["scheduler"]["_class_name"] == "PNDMScheduler"
    assert manifest["scheduler"]["steps_offset"] == 1
    for name in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        component = manifest["components"][name]
        assert (root / component["file"]).is_file()
        assert 0 <= component["parity"]["max_rel_error"] <= 1e-4
    fused = manifest["components"]["unet"]["optimization"]["fused"]
    assert fused.get("MultiHeadAttention", 0) > 0  # cross-attention fused for ONNX Runtime's CPU kernels
    unet_sample = manifest["components"]["unet"]["inputs"][0]
    assert unet_sample["name"] == "sample" and unet_sample["shape"][1] == channels
    assert set(manifest["files"]) == {p.relative_to(root).as_posix() for p in root.rglob("*")
                                      if p.is_file() and p.name != "manifest.json"}
    assert not list(root.parent.glob(".*partial*"))


def test_single_file_checkpoint_exports_the_same_engine(pipes, checkpoints, engines, tmp_path):
    single = save_single_file(pipes[9], tmp_path / "model.safetensors")
    out = tmp_path / "engine"
    assert export_main(["--model", str(single), "--config", str(checkpoints[9]), "--output", str(out)]) == 0
    args = dict(prompt="a lamp", num_inference_steps=3, height=64, width=96, output_type="latent", progress=False)
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    from_file = Engine.load(out).inpaint(image, mask, generator=5, **args).images
    from_folder = Engine.load(engines[9]).inpaint(image, mask, generator=5, **args).images
    assert np.abs(from_file - from_folder).max() <= 1e-5 * np.abs(from_folder).max()


@pytest.mark.parametrize("model", ["/no/such/folder", "missing.safetensors", "not a hub id"])
def test_missing_model_is_a_clear_error(model, tmp_path, capsys):
    assert export_main(["--model", model, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and ("does not exist" in err or "no such file" in err)
    assert not (tmp_path / "out").exists()


def test_folder_without_pipeline_is_a_clear_error(tmp_path, capsys):
    assert export_main(["--model", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "without model_index.json" in capsys.readouterr().err


def test_failed_parity_leaves_nothing_behind(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(exporter, "FP32_TOLERANCE", 0.0)
    out = tmp_path / "engine"
    assert export_main(["--model", str(checkpoints[4]), "--output", str(out)]) == 2
    assert "differs from torch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten_silently(checkpoints, tmp_path, capsys):
    out = tmp_path / "engine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export_main(["--model", str(checkpoints[4]), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_inpaint_command_writes_pngs(engines, tmp_path, capsys):
    sample_image(96, 64).save(tmp_path / "in.png")
    sample_mask(96, 64).save(tmp_path / "mask.png")
    code = inpaint_main(["--engine", str(engines[9]), "--image", str(tmp_path / "in.png"), "--mask",
                         str(tmp_path / "mask.png"), "--prompt", "a cat", "--steps", "2", "--seed", "1",
                         "--height", "64", "--width", "96", "--num-images", "2", "--keep-unmasked", "--blur", "2",
                         "--scheduler", "dpmpp_2m", "--scheduler-option", "use_karras_sigmas=true",
                         "--output", str(tmp_path / "o.png")])
    assert code == 0
    from PIL import Image

    for name in ("o-1.png", "o-2.png"):
        assert Image.open(tmp_path / name).size == (96, 64)
    assert "denoising" in capsys.readouterr().err  # the progress bar


def test_inpaint_command_reports_bad_input(engines, tmp_path, capsys):
    sample_image(96, 64).save(tmp_path / "in.png")
    sample_mask(64, 64).save(tmp_path / "mask.png")
    code = inpaint_main(["--engine", str(engines[9]), "--image", str(tmp_path / "in.png"),
                         "--mask", str(tmp_path / "mask.png"), "--steps", "2"])
    assert code == 2
    assert "pass a mask of the same size as the image" in capsys.readouterr().err


def test_unoptimized_export_gives_the_same_images(checkpoints, engines, tmp_path):
    """The fused graphs compute what the traced ones do (the parity check guards each export too)."""
    out = tmp_path / "plain"
    assert export_main(["--model", str(checkpoints[9]), "--output", str(out), "--no-optimize"]) == 0
    assert json.loads((out / "manifest.json").read_text())["components"]["unet"]["optimization"] is None
    args = dict(prompt="a vase", num_inference_steps=2, height=64, width=96, output_type="latent", progress=False)
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    plain = Engine.load(out).inpaint(image, mask, generator=2, **args).images
    fused = Engine.load(engines[9]).inpaint(image, mask, generator=2, **args).images
    assert np.abs(plain - fused).max() <= 1e-5 * np.abs(plain).max()


def test_big_graph_path_streams_weights_and_releases_modules(checkpoints, engines, tmp_path, monkeypatch):
    """The path a full-size UNet takes (weights beside the graph, copied a tensor at a time; each torch
    module freed once exported), forced on the tiny model: same engine results, torch weights released."""
    import torch

    from inpaintrt.export.loading import load_pipeline

    monkeypatch.setattr(exporter, "EXTERNAL_DATA_BYTES", 0)
    pipe = load_pipeline(str(checkpoints[9]))
    out = exporter.export_engine(pipe, tmp_path / "engine", log=lambda *_: None, release=True)
    manifest = json.loads((out / "manifest.json").read_text())
    for name, component in manifest["components"].items():
        assert component["files"] == [f"{name}.onnx", f"{name}.onnx.data"]
        assert (out / f"{name}.onnx").stat().st_size < (out / f"{name}.onnx.data").stat().st_size
        assert component["parity"]["max_rel_error"] <= 1e-4
    assert all(p.device == torch.device("meta") for p in pipe.unet.parameters())
    assert all(p.device == torch.device("meta") for p in pipe.vae.parameters())
    args = dict(prompt="a lamp", num_inference_steps=3, height=64, width=96, output_type="latent", progress=False)
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    streamed = Engine.load(out).inpaint(image, mask, generator=5, **args).images
    inline = Engine.load(engines[9]).inpaint(image, mask, generator=5, **args).images
    assert np.abs(streamed - inline).max() <= 1e-5 * np.abs(inline).max()


def test_streaming_save_copies_weights_from_separate_files(tmp_path):
    """torch's exporter leaves each large weight in its own file (offsets absent); the streaming save
    gathers them, with tensors made in memory, into one data file that ONNX Runtime reads back exactly."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from inpaintrt.export.external_data import save_streaming, weight_bytes

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 32), dtype=np.float32), rng.standard_normal((32, 16), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("MatMul", ["h", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 16])],
        [numpy_helper.from_array(a, "a"), numpy_helper.from_array(b, "b")])
    source = tmp_path / "torch-style"
    source.mkdir()
    onnx.save_model(helper.make_model(graph), str(source / "graph.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    model = onnx.load(str(source / "graph.onnx"), load_external_data=False)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(b * 2, "b"))  # as an optimizer rewrites one
    assert weight_bytes(model, source) == a.nbytes + b.nbytes
    out = tmp_path / "out" / "unet.onnx"
    out.parent.mkdir()
    assert save_streaming(model, source, out) == ["unet.onnx", "unet.onnx.data"]
    assert (out.parent / "unet.onnx.data").stat().st_size == a.nbytes + b.nbytes
    x = rng.standard_normal((2, 64), dtype=np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got, x @ a @ (b * 2), rtol=1e-5, atol=1e-5)
