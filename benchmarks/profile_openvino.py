"""Where a bf16 UNet step spends its time on OpenVINO's CPU plugin, by node type (its per-node counters).

    python benchmarks/profile_openvino.py bench-out/sd15-engine [LATENT]   # after a bf16 load cached its IR

LATENT: the latent side (default 64, i.e. 512x512 pictures).
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import openvino as ov


def main(engine: str, latent: int = 64) -> None:
    ir = next(Path(engine, ".openvino-cache").glob("*/ir/unet.xml"), None)
    if ir is None:
        sys.exit(f"no cached bf16 IR in {engine}: load it once with Engine.load(dir, precision='bf16')")
    compiled = ov.Core().compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                         "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
    shapes = {i.get_any_name(): i.get_partial_shape() for i in compiled.inputs}
    channels, hidden = shapes["sample"][1].get_length(), shapes["encoder_hidden_states"][2].get_length()
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, channels, latent, latent), dtype=np.float32),
             "timestep": np.full(2, 500, np.float32), "encoder_hidden_states": np.zeros((2, 77, hidden), np.float32)}
    request = compiled.create_infer_request()
    request.infer(feeds)  # the first call of a shape sets up its kernels; the second is profiled
    request.infer(feeds)
    nodes = [(p.real_time.total_seconds(), p.node_type, p.exec_type, p.node_name) for p in request.get_profiling_info()]
    total = sum(n[0] for n in nodes)
    by_type = collections.Counter()
    for seconds, node_type, exec_type, _ in nodes:
        by_type[f"{node_type} ({exec_type})"] += seconds
    print(f"UNet step, batch 2, {latent}x{latent} latents: {total:.2f} s in the nodes")
    for name, seconds in by_type.most_common(8):
        print(f"  {seconds:6.2f} s {100 * seconds / total:5.1f} %  {name}")
    print("slowest nodes:")
    for seconds, node_type, _, name in sorted(nodes, reverse=True)[:8]:
        print(f"  {1000 * seconds:7.1f} ms  {node_type:14s} {name[:80]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-out/sd15-engine", int(sys.argv[2]) if len(sys.argv) > 2 else 64)
