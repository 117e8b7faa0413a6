"""Where a UNet step spends its time in ONNX Runtime on the CPU, by operator type.

    python benchmarks/profile_unet.py bench-out/sd15-engine      # after bench_cpu.py built the engine
"""
from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(engine: str, latent: int = 64) -> None:
    manifest = json.loads((Path(engine) / "manifest.json").read_text())
    unet = manifest["components"]["unet"]
    hidden = unet["inputs"][2]["shape"][2]
    channels = unet["inputs"][0]["shape"][1]
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "unet")
    session = ort.InferenceSession(str(Path(engine) / unet["file"]), options, providers=["CPUExecutionProvider"])
    feeds = {"sample": np.random.default_rng(0).standard_normal((2, channels, latent, latent), dtype=np.float32),
             "timestep": np.full(2, 500, np.float32), "encoder_hidden_states": np.zeros((2, 77, hidden), np.float32)}
    session.run(None, feeds)  # warm-up, then the profiled run
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    last_start = runs[-1]["ts"]
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_start:
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    print(f"UNet step, batch 2, {latent}x{latent} latents: {runs[-1]['dur'] / 1e6:.2f} s")
    print("| operator | share of kernel time |\n|---|---|")
    for op, dur in by_op.most_common(8):
        print(f"| {op} | {100 * dur / total:.1f}% |")


if __name__ == "__main__":
    main(*sys.argv[1:2])
