"""8-bit weights (NNCF) for the bf16 UNet on OpenVINO: what they would buy, measured.

    python benchmarks/openvino_w8.py bench-out/sd15-engine     # after bench_cpu.py built and loaded it in bf16

Three fresh processes compile the engine's UNet on OpenVINO's CPU plugin and run one guided step
(batch 2, 64x64 latents) four times (the step time is the median of the last three): the ONNX graph in fp32 (the reference output), the bf16 load's IR
(fp16 weights, as `Engine.load(dir, precision="bf16")` compiles it), and that graph with its
convolution and matmul weights compressed to 8 bits by `nncf.compress_weights` (INT8_ASYM,
per channel), also in bf16. Reports compile time, step time, peak RSS, the IR's size on disk and
each output's error against fp32; writes benchmarks/results/openvino-w8-<date>.json. Needs nncf.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np


def child(kind: str, engine: Path, work: Path) -> dict:
    import openvino as ov

    core = ov.Core()
    graph = str(engine / "unet.onnx")
    result = {}
    if kind == "bf16":
        graph = str(next((engine / ".openvino-cache").glob("*/ir/unet.xml")))
    elif kind == "w8":
        import nncf

        start = time.perf_counter()
        model = nncf.compress_weights(core.read_model(graph), mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(model, str(work / "unet-w8.xml"), compress_to_fp16=True)
        del model
        result["compress_s"] = time.perf_counter() - start
        graph = str(work / "unet-w8.xml")
    if graph.endswith(".xml"):
        result["ir_mb"] = sum(f.stat().st_size for f in Path(graph).parent.glob("unet*.*")) / 2**20
    start = time.perf_counter()
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32" if kind == "fp32" else "bf16",
                                                 "PERFORMANCE_HINT": "LATENCY"})
    result["compile_s"] = time.perf_counter() - start
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 9, 64, 64), dtype=np.float32), "timestep": np.full(2, 500, np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, 768), dtype=np.float32)}
    times = []
    for _ in range(4):
        start = time.perf_counter()
        output = request.infer(feeds)[0].copy()
        times.append(time.perf_counter() - start)
    result.update(first_step_s=times[0], step_s=float(np.median(times[1:])),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    np.save(work / f"{kind}.npy", output)
    return result


def main(engine: Path) -> int:
    work = engine.parent / "openvino-w8"
    work.mkdir(exist_ok=True)
    report = {}
    for kind in ("fp32", "bf16", "w8"):
        done = subprocess.run([sys.executable, __file__, "--child", kind, str(engine), str(work)],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{kind} failed:\n{done.stderr[-3000:]}")
        report[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    reference = np.load(work / "fp32.npy").astype(np.float64)
    for kind in ("bf16", "w8"):
        error = np.load(work / f"{kind}.npy") - reference
        report[kind].update(rel_l2_vs_fp32=float(np.linalg.norm(error) / np.linalg.norm(reference)),
                            max_abs_vs_fp32=float(np.abs(error).max()))
    for kind, row in report.items():
        print(kind, {k: round(v, 4) for k, v in row.items()})
    out = Path(__file__).parent / "results" / f"openvino-w8-{date.today()}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
    else:
        sys.exit(main(Path(sys.argv[1])))
