"""benchmarks/bench_gpu.py without a GPU: its arguments, its refusal (before any export), its report.
The measurement itself needs a CUDA GPU and has not run here."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

BENCH = Path(__file__).parent.parent / "benchmarks" / "bench_gpu.py"


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
    for bad, message in ((["--variants", "ort-cuda,trt"], "unknown ['trt']"),
                         (["--variants", "ort-cuda"], "needs diffusers-fp16 and at least one ort-cuda variant"),
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


def test_report_and_table(monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "device_info", lambda: {"name": "NVIDIA H100", "compute_capability": "9.0"})
    run = lambda s: {"cold_start_s": 10 * s, "end_to_end_s": s, "unet_call_s": s / 100, "device_memory_mb": 1000 * s}
    runs = {"ort-cuda-graph": [run(1.0), run(1.2)], "ort-cuda": [run(1.5)], "diffusers-fp16": [run(2.0)]}
    report = bench.summarize(runs, bench.parse([]), Path("engine"))
    assert report["device"]["name"] == "NVIDIA H100"
    assert report["median"]["ort-cuda-graph"]["end_to_end_s"] == pytest.approx(1.1)
    assert report["ratio_diffusers_over_ours"]["ort-cuda"]["end_to_end_s"] == pytest.approx(2.0 / 1.5)
    text = bench.table(report)
    assert "| end_to_end_s | 1.100 | 1.500 | 2.000 | 1.82x | 1.33x |" in text and "NVIDIA H100" in text
