"""How much faster OpenVINO bf16 runs the SD 1.5 UNet's three kinds of work than torch fp32, op by op.

    python benchmarks/op_ratios.py            # about a minute; prints a table, writes op-ratios-<date>.json

The UNet step's time (OpenVINO's per-node counters, docs/benchmarks.md) is convolutions, matmuls (the linear
layers) and the attention softmax blocks; each is timed here alone at the UNet's largest shapes
(guided batch 2, 64x64 latents: 4096 tokens, 320 channels, 8 heads of 40) in torch fp32, torch bf16
autocast and OpenVINO bf16, so the end-to-end ratio can be read from the mix.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch

B, T, C, HEADS = 2, 4096, 320, 8
CASES = {  # name -> (flops, torch module builder, OpenVINO model builder, input shapes)
    "conv3x3 640->640 @64x64": (2 * B * T * 9 * 640 * 640, lambda: torch.nn.Conv2d(640, 640, 3, padding=1),
                                 lambda x: ops.convolution(x, ops.constant(_w(640, 640, 3, 3)), [1, 1], [1, 1], [1, 1], [1, 1]),
                                 [(B, 640, 64, 64)]),
    "linear 320->2560 (GEGLU)": (2 * B * T * C * 2560, lambda: torch.nn.Linear(C, 2560),
                                 lambda x: ops.matmul(x, ops.constant(_w(2560, C)), False, True), [(B, T, C)]),
    "attention 4096 tokens, 8x40": (4 * B * T * T * C, None, None, [(B, HEADS, T, C // HEADS)] * 3),
}


def _w(*shape):
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 0.02


def _timed(call, repeats=5) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _torch(build, shapes, bf16: bool) -> float:
    xs = [torch.randn(*s) for s in shapes]
    module = build() if build else (lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    context = torch.autocast("cpu", torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)

    def run():
        with torch.no_grad(), context:
            module(*xs)
    return _timed(run)


def _openvino(core, build, shapes) -> float:
    params = [ops.parameter(list(s), np.float32) for s in shapes]
    if build is None:  # attention as the UNet's graph has it: MatMul, Softmax, MatMul
        q, k, v = params
        scores = ops.multiply(ops.matmul(q, k, False, True), ops.constant(np.float32(1 / np.sqrt(C // HEADS))))
        out = ops.matmul(ops.softmax(scores, -1), v, False, False)
    else:
        out = build(params[0])
    compiled = core.compile_model(ov.Model([out], params), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    feeds = [np.random.default_rng(1).standard_normal(s, dtype=np.float32) for s in shapes]
    return _timed(lambda: request.infer(feeds))


def main() -> int:
    core = ov.Core()
    rows = {}
    for name, (flops, torch_build, ov_build, shapes) in CASES.items():
        fp32, bf16 = _torch(torch_build, shapes, False), _torch(torch_build, shapes, True)
        ours = _openvino(core, ov_build, shapes)
        rows[name] = {"torch_fp32_s": fp32, "torch_bf16_s": bf16, "openvino_bf16_s": ours,
                      "gflops": {k: flops / v / 1e9 for k, v in (("torch_fp32", fp32), ("torch_bf16", bf16),
                                                                 ("openvino_bf16", ours))},
                      "torch_fp32_over_openvino_bf16": fp32 / ours, "torch_bf16_over_openvino_bf16": bf16 / ours}
        g = rows[name]["gflops"]
        print(f"{name:30s} GFLOP/s torch fp32 {g['torch_fp32']:6.0f}, torch bf16 {g['torch_bf16']:6.0f}, "
              f"OpenVINO bf16 {g['openvino_bf16']:6.0f};  torch fp32 / OpenVINO bf16 "
              f"{rows[name]['torch_fp32_over_openvino_bf16']:.2f}x", flush=True)
    out = Path(__file__).parent / "results" / f"op-ratios-{date.today()}.json"
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__,
                               "openvino": ov.get_version(), "ops": rows}, indent=2) + "\n")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
