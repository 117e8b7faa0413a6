"""CUDA-optimized fp16 graphs (export/cuda_graphs.py), made and checked without a GPU: the fusions for
ONNX Runtime's CUDA provider are applied, the graph is fp16 after fusion with float32 inputs/outputs,
it runs on the CPU where ONNX Runtime has the kernels (the text encoder) and is checked structurally
where it has not (NhwcConv, GroupNorm, BiasSplitGelu are CUDA-only)."""
from __future__ import annotations

import warnings

import pytest

from inpaintrt.export.cuda_graphs import CudaGraphError, check_cuda_graph, optimize_for_cuda
from inpaintrt.export.half import FP16_TOLERANCE


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """{component: (plain traced fp32 graph, torch references)} of the tiny 9-channel model."""
    import torch

    from inpaintrt.export.exporter import OPSET, torch_references
    from inpaintrt.export.random_models import build_pipeline
    from inpaintrt.export.optimize import classic_attention
    from inpaintrt.export.specs import component_specs

    root = tmp_path_factory.mktemp("traced")
    pipe = build_pipeline(size="tiny", in_channels=9, seed=9)
    classic_attention(pipe)
    graphs = {}
    for spec in component_specs(pipe):
        references = torch_references(spec)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(spec.module.eval(), spec.make_inputs(*spec.check_shapes[0]), str(root / f"{spec.name}.onnx"),
                              input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                              dynamic_axes=spec.dynamic_axes, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
        graphs[spec.name] = (root / f"{spec.name}.onnx", references)
    return graphs


def test_unet_gets_the_cuda_fusions_in_fp16(traced, tmp_path):
    path, references = traced["unet"]
    record = optimize_for_cuda("unet", path, tmp_path / "cuda" / "unet.onnx", 1 << 30)
    for op in ("MultiHeadAttention", "GroupNorm", "NhwcConv", "BiasSplitGelu", "SkipLayerNormalization"):
        assert record["fused"].get(op, 0) > 0, (op, record["fused"])
        assert record["operators"][f"com.microsoft.{op}"] == record["fused"][op]
    assert {"group_norm", "nhwc_conv", "bias_splitgelu", "packed_qkv"} <= set(record["fusion_options"])
    assert record["precision"] == "fp16" and record["files"] == ["unet.onnx"]
    check = check_cuda_graph(tmp_path / "cuda" / "unet.onnx", references)
    assert check["kind"] == "structural" and "no CPU kernel for com.microsoft." in check["why_not_run"]
    assert check["fp16_weight_fraction"] > 0.9
    import onnx

    model = onnx.load(str(tmp_path / "cuda" / "unet.onnx"))
    float32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == float32 for v in list(model.graph.input)[:1] + list(model.graph.output))


def test_text_encoder_runs_on_the_cpu_within_fp16_tolerance(traced, tmp_path):
    path, references = traced["text_encoder"]
    optimize_for_cuda("text_encoder", path, tmp_path / "text_encoder.onnx", 1 << 30)
    check = check_cuda_graph(tmp_path / "text_encoder.onnx", references)
    assert check["kind"] == "onnxruntime-cpu" and check["max_rel_error"] <= FP16_TOLERANCE


@pytest.mark.parametrize("component", ["vae_encoder", "vae_decoder"])
def test_vae_graphs_in_fp16_and_fp32(traced, tmp_path, component):
    path, references = traced[component]
    half = optimize_for_cuda(component, path, tmp_path / "half.onnx", 1 << 30)
    assert half["fused"].get("GroupNorm", 0) > 0 and check_cuda_graph(tmp_path / "half.onnx", references)["kind"]
    # the SDXL VAE with force_upcast: fused for CUDA but kept fp32 (no fp16-only packed fusions)
    full = optimize_for_cuda(component, path, tmp_path / "full.onnx", 1 << 30, precision="fp32")
    assert full["precision"] == "fp32" and "packed_qkv" not in full["fusion_options"]
    assert check_cuda_graph(tmp_path / "full.onnx", references, precision="fp32")["fp16_weight_fraction"] == 0


def test_big_graphs_keep_weights_beside_them(traced, tmp_path):
    path, references = traced["vae_decoder"]
    record = optimize_for_cuda("vae_decoder", path, tmp_path / "d.onnx", external_data_bytes=1000)
    assert record["files"] == ["d.onnx", "d.onnx.data"] and (tmp_path / "d.onnx.data").stat().st_size > 1000
    check_cuda_graph(tmp_path / "d.onnx", references)


def test_a_graph_the_cuda_provider_cannot_run_is_refused(traced, tmp_path):
    import onnx
    from onnx import TensorProto

    path, references = traced["vae_decoder"]
    optimize_for_cuda("vae_decoder", path, tmp_path / "d.onnx", 1 << 30)
    model = onnx.load(str(tmp_path / "d.onnx"))
    model.graph.node[-1].domain, model.graph.node[-1].op_type = "com.microsoft", "MadeUpKernel"
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(CudaGraphError, match="MadeUpKernel"):
        check_cuda_graph(tmp_path / "bad.onnx", references)
    model = onnx.load(str(tmp_path / "d.onnx"))
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(model, str(tmp_path / "types.onnx"))
    with pytest.raises(CudaGraphError, match="changed input/output types"):
        check_cuda_graph(tmp_path / "types.onnx", references)
    model = onnx.load(str(path))  # fp32 weights where fp16 ones are expected
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    with pytest.raises(CudaGraphError, match="float weight bytes of the fp16 graph are fp16"):
        check_cuda_graph(tmp_path / "fp32.onnx", references)


def test_a_fusion_can_be_left_out_to_measure_it(traced, tmp_path):
    path, _ = traced["unet"]
    record = optimize_for_cuda("unet", path, tmp_path / "unet.onnx", 1 << 30, fusions_off=("nhwc_conv",))
    assert "NhwcConv" not in record["fused"] and "com.microsoft.NhwcConv" not in record["operators"]
    assert "nhwc_conv" not in record["fusion_options"] and record["fusions_off"] == ["nhwc_conv"]
    assert record["fused"]["GroupNorm"] > 0 and record["operators"]["Conv"] > 0  # the others still apply


def test_export_cli_names_the_fusions_it_can_leave_out(capsys):
    from inpaintrt.cli import export_main

    with pytest.raises(SystemExit) as e:
        export_main(["--model", "m", "--output", "o", "--fp16", "--cuda-fusion-off", "nhwc"])
    assert e.value.code == 2 and "invalid choice: 'nhwc'" in capsys.readouterr().err
    assert export_main(["--model", "m", "--output", "o", "--cuda-fusion-off", "nhwc_conv"]) == 2
    assert "only --fp16 writes: add --fp16" in capsys.readouterr().err


def test_export_step_writes_the_cuda_folder_and_its_record(traced, tmp_path):
    from inpaintrt.export.cuda_graphs import export_cuda_graph

    path, references = traced["unet"]
    record = export_cuda_graph("unet", path, tmp_path, references, "fp16", 1 << 30, unfused={"max_rel_error": 1e-3})
    assert record["file"] == "cuda/unet.onnx" and (tmp_path / "cuda" / "unet.onnx").is_file()
    assert record["check"]["kind"] == "structural" and record["check"]["unfused_max_rel_error"] == 1e-3
    assert (tmp_path / "cuda" / "unet.onnx").stat().st_mode & 0o777 == 0o644


def test_fp16_export_writes_cuda_graphs_and_records_them(tmp_path):
    from inpaintrt import Engine
    from inpaintrt.engine.manifest import read_manifest
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.random_models import build_pipeline

    root = export_engine(build_pipeline(size="tiny", in_channels=9, seed=9), tmp_path / "e", fp16=True,
                         log=lambda *_: None)
    manifest = read_manifest(root)
    for name, component in manifest["components"].items():
        cuda = component["cuda"]
        assert cuda["file"] == f"cuda/{name}.onnx" and all(f in manifest["files"] for f in cuda["files"])
        assert cuda["precision"] == component["fp16"]["precision"] == "fp16"
        assert cuda["check"]["unfused_max_rel_error"] == component["fp16"]["max_rel_error"]
        assert component["optimization"]["target"] == "cpu"  # the CPU-fused graph stays what ort-cpu runs
    assert manifest["components"]["unet"]["cuda"]["fused"]["NhwcConv"] > 0
    assert manifest["components"]["text_encoder"]["cuda"]["check"]["kind"] == "onnxruntime-cpu"
    assert Engine.load(root, backend="auto").backend == "ort-cpu"  # here: no GPU, nothing changes for the CPU
