"""Which GPU kernels one ort-cuda UNet call spends its time in, per size and provider options.

    python benchmarks/profile_gpu.py --engine bench-out/sd15-engine-fp16 --pixels 1024
    python benchmarks/profile_gpu.py --engine E --pixels 1024 --cuda-option prefer_nhwc=1 --top 30

ONNX Runtime's own profiler times the host side of asynchronous CUDA kernels; CUPTI sees the kernels
themselves, in the whole process, whoever launched them. torch's profiler is a CUPTI client, so it is
used here around ONNX Runtime's calls (the runtime never imports torch; this benchmark does). Kernels
are grouped by name (cuDNN convolution, GEMM, attention, normalisation, element-wise, copies) and the
top ones printed with their share of the call; `--json FILE` keeps the whole list. Written without a
GPU: it has not run yet.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# kernel-name patterns -> the family a reader looks for (first match wins)
FAMILIES = (("normalization", r"norm"),  # before convolution: GroupNorm kernels say NHWC too
            ("attention", r"flash|fmha|attention|mha|softmax"),
            ("convolution", r"conv|cudnn|implicit_gemm|fprop|nhwc|winograd|fft"),
            ("gemm", r"gemm|cutlass|cublas|sm90_|ampere_|matmul"),
            ("copy / layout", r"copy|transpose|memcpy|memset|permute|concat|slice"),
            ("element-wise", r"elementwise|binary|unary|add|mul|gelu|silu|sigmoid|cast"))


def family(kernel: str) -> str:
    name = kernel.lower()
    return next((label for label, pattern in FAMILIES if re.search(pattern, name)), "other")


def group(kernels: list[tuple[str, float, int]]) -> dict[str, float]:
    """{family: total microseconds} of (name, total us, calls) rows."""
    totals: dict[str, float] = {}
    for name, us, _ in kernels:
        totals[family(name)] = totals.get(family(name), 0.0) + us
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def profile(engine: Path, pixels: int, batch: int, calls: int, cuda_options: dict | None) -> dict:
    import cupy
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from inpaintrt import Engine

    e = Engine.load(engine, backend="ort-cuda", cuda_options=cuda_options)
    h = pixels // 8
    feeds = {}
    for t in e.manifest["components"]["unet"]["inputs"]:
        dims = {"batch": 2 * batch, "latent_height": h, "latent_width": h}
        feeds[t["name"]] = cupy.full([dims.get(d, d) for d in t["shape"]], 500 if t["name"] == "timestep" else 0,
                                     t["dtype"])
    feeds["sample"] = cupy.asarray(np.random.default_rng(0).standard_normal(feeds["sample"].shape, dtype=np.float32))
    unet = e.sessions["unet"]
    for _ in range(3):  # first shape, algorithm searches, warm arena
        unet.run(feeds)
    cupy.cuda.Device().synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            unet.run(feeds)
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()
    rows = [(ev.key, ev.device_time_total / calls, ev.count // calls) for ev in prof.key_averages()
            if ev.device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    total = sum(us for _, us, _ in rows)
    return {"pixels": pixels, "batch": batch, "cuda_options": cuda_options, "calls": calls,
            "kernel_us_per_call": total, "families_us": group(rows),
            "kernels": [{"name": n, "us_per_call": us, "launches_per_call": c} for n, us, c in rows]}


def main(argv=None) -> int:
    from inpaintrt.engine.cuda_options import parse_cuda_option

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", required=True, help="engine directory exported with --fp16")
    parser.add_argument("--pixels", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1, help="images (the UNet runs 2x for guidance)")
    parser.add_argument("--calls", type=int, default=5, help="profiled UNet calls (default 5)")
    parser.add_argument("--cuda-option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--top", type=int, default=20, help="kernels printed (default 20)")
    parser.add_argument("--json", help="write the whole profile here")
    args = parser.parse_args(argv)
    try:
        options = dict(parse_cuda_option(text) for text in args.cuda_option) or None
    except ValueError as e:
        parser.error(str(e))
    found = profile(Path(args.engine), args.pixels, args.batch, args.calls, options)
    total = found["kernel_us_per_call"]
    print(f"UNet {args.pixels}x{args.pixels} batch {args.batch}, options {options or 'default'}: "
          f"{total / 1000:.1f} ms of kernels per call")
    for name, us in found["families_us"].items():
        print(f"  {name:15s} {us / 1000:8.2f} ms  {100 * us / total:5.1f}%")
    for k in found["kernels"][:args.top]:
        print(f"  {k['us_per_call'] / 1000:8.3f} ms  x{k['launches_per_call']:<4d} {k['name'][:110]}")
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
