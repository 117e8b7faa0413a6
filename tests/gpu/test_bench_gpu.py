"""benchmarks/bench_gpu.py without a GPU: its arguments, its refusal (before any export), its report.
The measurement itself needs a CUDA GPU and has not run here."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)


def test_arguments():
    bench = _bench()
    args = bench.parse([])
    assert (args.pixels, args.steps, args.variants) == (512, 50, ["ort-cuda-graph", "ort-cuda", "diffusers-fp16"])
    assert bench.parse(["--variants", "ort-cuda-graph, diffusers-fp16", "--steps", "20"]).variants == [
        "ort-cuda-graph", "diffusers-fp16"]
    sdxl = bench.parse(["--family", "sdxl", "--cuda-option", "prefer_nhwc=1", "--cuda-option",
                        "cudnn_conv_algo_search=HEURISTIC", "--variants", "ort-cuda", "--no-accuracy"])
    assert (sdxl.pixels, sdxl.steps, sdxl.variants) == (1024, 30, ["ort-cuda"])  # SDXL's native size, 30 steps
    assert sdxl.cuda_options == {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"}
    assert bench.parse(["--family", "sdxl", "--pixels", "512", "--steps", "4"]).pixels == 512
    for bad, message in ((["--variants", "ort-cuda,trt"], "unknown ['trt']"),
                         (["--variants", "diffusers-fp16"], "add an ort-cuda variant or pass --no-accuracy"),
                         (["--cuda-option", "prefer_nhwc=yes"], "--cuda-option.prefer_nhwc='yes' is not accepted"),
                         (["--cuda-option", "device_id=1"], "is set by the engine"),
                         (["--family", "sd3"], "invalid choice: 'sd3'"),
                         (["--pixels", "500"], "--pixels 500: use a multiple of 8"),
                         (["--reps", "0"], "--reps must be at least 1")):
        result = _run(*bad)
        assert result.returncode == 2 and message in result.stderr, (bad, result.stderr)
    assert "ort-cuda-graph" in _run("--help").stdout


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="onnxruntime-gpu is installed: the refusal is for machines without it")
def test_refuses_without_a_gpu_before_any_work(tmp_path):
    result = _run("--out", str(tmp_path / "out"), "--results", str(tmp_path / "results"))
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "ort-cuda cannot start (the installed onnxruntime" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()  # no model built, no JSON


def _report_module():
    sys.path.insert(0, str(BENCH.parent))
    import gpu_report

    return gpu_report


def test_report_and_table(monkeypatch):
    bench, report_module = _bench(), _report_module()
    monkeypatch.setattr(report_module, "device_info", lambda: {"name": "NVIDIA H100", "compute_capability": "9.0"})
    stages = {"text_encoder": 1.0, "vae_encoder": 2.0, "unet": 30.0, "vae_decoder": 4.0, "other": 5.0}
    run = lambda s: {"cold_start_s": 10 * s, "end_to_end_s": s, "unet_call_s": s / 100, "device_memory_mb": 1000 * s,
                     "stages_ms": {k: v * s for k, v in stages.items()}}
    runs = {"ort-cuda-graph": [run(1.0), run(1.2)], "ort-cuda": [run(1.5)], "diffusers-fp16": [run(2.0)]}
    report = report_module.summarize(runs, bench.parse(["--cuda-option", "prefer_nhwc=1"]), Path("engine"), bench.OURS)
    assert report["device"]["name"] == "NVIDIA H100" and report["cuda_options"] == {"prefer_nhwc": "1"}
    assert report["median"]["ort-cuda-graph"]["end_to_end_s"] == pytest.approx(1.1)
    assert report["ratio_diffusers_over_ours"]["ort-cuda"]["end_to_end_s"] == pytest.approx(2.0 / 1.5)
    assert report["stages_ms_per_image"]["ort-cuda-graph"]["unet"] == pytest.approx(33.0)
    text = report_module.table(report)
    assert "| end_to_end_s | 1.100 | 1.500 | 2.000 | 1.82x | 1.33x |" in text and "NVIDIA H100" in text
    assert "ort-cuda per image, ms: text_encoder 1.5, vae_encoder 3.0, unet 45.0" in text
    # without the peer there are no ratios, and the sweep table says so
    alone = report_module.summarize({"ort-cuda": [run(0.5)]}, bench.parse(["--batch", "4"]), Path("e"), bench.OURS)
    assert alone["ratio_diffusers_over_ours"] == {}
    key = report_module.workload_key("sdxl", 1024, 4, "nhwc")
    assert key == "sdxl-1024px-batch4-nhwc" and report_module.workload_key("sd15", 512, 1) == "512px-batch1"
    sweep = report_module.sweep_table({"512px-batch1": report, key: alone})
    assert "| 512px-batch1 | ort-cuda | 1.500 | 0.67 | 15.0 | 1500 | 1.33x |" in sweep
    assert "| sdxl-1024px-batch4-nhwc | ort-cuda | 0.500 | 8.00 | 5.0 | 500 | - |" in sweep


def test_stage_times_sum_each_stage_between_takes():
    bench = _bench()
    clock = iter(range(100))
    stages = bench.StageTimes(lambda: {}, lambda begin, end: end["t"] - begin["t"])
    record = lambda event: event.update(t=next(clock))
    unet = stages.around("unet", lambda x: x * 2, record)
    decode = stages.around("vae_decoder", lambda: None, record)
    assert unet(3) == 6 and unet(4) == 8 and decode() is None
    assert stages.take() == {"unet": 2, "vae_decoder": 1}
    assert stages.take() == {}
    assert bench._stage("text_encoder_2") == "text_encoder"


def test_every_option_the_sweep_passes_is_one_the_engine_accepts():
    """The device time is too short to lose a run to a misspelt option: each is checked here."""
    import re

    from inpaintrt.engine.cuda_options import parse_cuda_option

    script = (BENCH.parent / "gpu_machine.sh").read_text()
    options = re.findall(r"--cuda-option (\S+)", script)
    assert len(options) >= 7
    for text in options:
        parse_cuda_option(text)
    assert set(re.findall(r"--label (\S+)", script)) >= {"nhwc", "heuristic", "default-algo"}


def test_profile_groups_kernels_by_what_they_do():
    spec = importlib.util.spec_from_file_location("profile_gpu", BENCH.parent / "profile_gpu.py")
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    rows = [("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_nhwckrsc_nhwc", 900.0, 40),
            ("flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", 300.0, 16),
            ("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_64x3_tn", 200.0, 30),
            ("void onnxruntime::cuda::GroupNormNHWCSumKernel<half>", 50.0, 20),
            ("void onnxruntime::cuda::_BinaryElementWise<half>", 25.0, 60),
            ("mystery_kernel", 5.0, 1)]
    assert profile.group(rows) == {"convolution": 900.0, "attention": 300.0, "gemm": 200.0, "normalization": 50.0,
                                   "element-wise": 25.0, "other": 5.0}
