"""ort-cuda's provider options (engine/cuda_options.py): one checked table, precedence defaults <
manifest < Engine.load, refused by name before anything loads. Without a GPU the session's options
are read off a recording stand-in for onnxruntime; the `gpu` test runs the real provider."""
from __future__ import annotations

import json

import numpy as np
import pytest

from inpaintrt import Engine
from inpaintrt.engine.cuda_options import (CUDA_OPTIONS, DEFAULTS, check_cuda_options, chosen_options,
                                           parse_cuda_option, provider_options)
from inpaintrt.engine.ort_cuda import CUDA_PROVIDER, BoundComponent
from test_ort_cuda import GPU_MISSING, gpu, tiny_graph  # noqa: F401 (fixture)


def test_accepted_values_become_the_strings_onnx_runtime_reads():
    found = check_cuda_options({"prefer_nhwc": True, "cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": 2**33,
                                "fuse_conv_bias": 0, "cudnn_conv_use_max_workspace": "1"})
    assert found == {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": str(2**33),
                     "fuse_conv_bias": "0", "cudnn_conv_use_max_workspace": "1"}
    assert check_cuda_options(None) == {}


@pytest.mark.parametrize("options, says", [
    ({"prefer_nhcw": "1"}, "cuda_options.prefer_nhcw is not a CUDA provider option"),
    ({"cudnn_conv_algo_search": "FAST"}, "choose one of EXHAUSTIVE, HEURISTIC, DEFAULT"),
    ({"prefer_nhwc": "yes"}, "cuda_options.prefer_nhwc='yes' is not accepted; choose one of 0, 1"),
    ({"prefer_nhwc": 2}, "choose one of 0, 1"),
    ({"gpu_mem_limit": -5}, "cuda_options.gpu_mem_limit=-5 must be a positive whole number of bytes"),
    ({"gpu_mem_limit": True}, "positive whole number"),
    ({"gpu_mem_limit": "8GB"}, "positive whole number"),
    ({"device_id": "1"}, "cuda_options.device_id is set by the engine"),
    ({"enable_cuda_graph": "1"}, "cuda_options.enable_cuda_graph is set by the engine"),
    (["prefer_nhwc"], "cuda_options must be a dict"),
])
def test_a_wrong_option_is_refused_by_name(options, says):
    with pytest.raises(ValueError, match=None) as e:
        check_cuda_options(options)
    assert says in str(e.value)


def test_every_option_in_the_table_has_a_checkable_kind():
    for name, accepted in CUDA_OPTIONS.items():
        sample = "4096" if accepted is int else accepted[0]
        assert check_cuda_options({name: sample}) == {name: sample}


def test_precedence_defaults_then_manifest_then_load():
    manifest = {"cuda": {"provider_options": {"prefer_nhwc": "1", "cudnn_conv_algo_search": "DEFAULT"}}}
    chosen = chosen_options(manifest, {"cudnn_conv_algo_search": "HEURISTIC"})
    assert chosen == {**DEFAULTS, "prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"}
    session = provider_options(1, True, 1234, chosen)
    assert session["device_id"] == "1" and session["enable_cuda_graph"] == "1"
    assert session["user_compute_stream"] == "1234" and session["use_tf32"] == "0"
    with pytest.raises(ValueError, match=r"manifest cuda.provider_options.prefer_nhwc='on'"):
        chosen_options({"cuda": {"provider_options": {"prefer_nhwc": "on"}}}, None)


def test_command_line_form():
    assert parse_cuda_option("cudnn_conv_algo_search=HEURISTIC") == ("cudnn_conv_algo_search", "HEURISTIC")
    with pytest.raises(ValueError, match="must be NAME=VALUE"):
        parse_cuda_option("prefer_nhwc")
    with pytest.raises(ValueError, match=r"--cuda-option.prefer_nhwc='2'"):
        parse_cuda_option("prefer_nhwc=2")


class _Recorded(Exception):
    pass


class _RecordingOrt:
    """Stands in for onnxruntime: keeps the providers a session was asked for, then stops the load."""

    def __init__(self):
        import onnxruntime

        self.SessionOptions, self.asked = onnxruntime.SessionOptions, []

    def InferenceSession(self, path, options, providers):  # noqa: N802 (onnxruntime's name)
        self.asked.append(providers)
        raise _Recorded


def test_the_cuda_session_is_opened_with_the_chosen_and_managed_options(tiny_graph):  # noqa: F811
    fake = _RecordingOrt()
    chosen = chosen_options({}, {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"})
    with pytest.raises(_Recorded):
        BoundComponent(tiny_graph, fake, np, CUDA_PROVIDER, device_id=0, options_for_cuda=chosen)
    [(name, options)] = fake.asked[0]
    assert name == CUDA_PROVIDER
    assert options == {"arena_extend_strategy": "kSameAsRequested", "use_tf32": "0", "prefer_nhwc": "1",
                       "cudnn_conv_algo_search": "HEURISTIC", "device_id": "0", "enable_cuda_graph": "0"}


def test_engine_load_refuses_bad_options_before_loading(engines, tmp_path):
    with pytest.raises(ValueError, match="backend 'ort-cpu' does not read them"):
        Engine.load(engines[9], backend="ort-cpu", cuda_options={"prefer_nhwc": "1"})
    # a bad option is named before the backend is even looked for (no GPU here: ort-cuda would fail later)
    with pytest.raises(ValueError, match="cuda_options.prefer_nhcw is not a CUDA provider option"):
        Engine.load(engines[9], backend="ort-cuda", cuda_options={"prefer_nhcw": "1"})
    # a manifest with a broken record is refused by name too
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(engines[9], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["cuda"] = {"provider_options": {"cudnn_conv_algo_search": "FASTEST"}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest cuda.provider_options.cudnn_conv_algo_search"):
        Engine.load(copy, backend="auto", verify_hashes=False, cuda_options={})


def test_cli_passes_options_and_refuses_bad_ones(engines, tmp_path, capsys):
    from pictures import sample_image, sample_mask
    from inpaintrt.cli import inpaint_main as main

    sample_image().save(tmp_path / "i.png")
    sample_mask().save(tmp_path / "m.png")
    args = ["--engine", str(engines[9]), "--image", str(tmp_path / "i.png"), "--mask", str(tmp_path / "m.png"),
            "--steps", "1", "--output", str(tmp_path / "o.png")]
    assert main(args + ["--cuda-option", "prefer_nhwc=maybe"]) == 2
    assert "--cuda-option.prefer_nhwc='maybe' is not accepted; choose one of 0, 1" in capsys.readouterr().err
    assert main(args + ["--backend", "ort-cpu", "--cuda-option", "prefer_nhwc=1"]) == 2
    assert "backend 'ort-cpu' does not read them" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("options", [{"prefer_nhwc": "1"}, {"cudnn_conv_algo_search": "HEURISTIC"},
                                     {"cudnn_conv_use_max_workspace": "0", "fuse_conv_bias": "1"}])
def test_options_run_on_the_gpu_and_keep_the_image(engines, options):
    from pictures import sample_image, sample_mask

    kwargs = dict(prompt="a cat", num_inference_steps=3, output_type="np", progress=False, generator=3)
    plain = Engine.load(engines[9], backend="ort-cuda", precision="fp32").inpaint(sample_image(), sample_mask(), **kwargs)
    tuned = Engine.load(engines[9], backend="ort-cuda", precision="fp32", cuda_options=options)
    assert tuned.sessions["unet"].provider_options.items() >= options.items()
    found = tuned.inpaint(sample_image(), sample_mask(), **kwargs).images
    assert np.abs(found - plain.images).max() <= 1e-3
