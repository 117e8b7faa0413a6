"""Which attention kernel ONNX Runtime's CUDA provider runs for the UNet's fused self-attention, by size.

    python benchmarks/attention_kernels.py            # on a CUDA GPU with onnxruntime-gpu and cupy

The CUDA-fused fp16 UNet (`inpaint-export --fp16`) runs self-attention as com.microsoft MultiHeadAttention
with packed QKV. At 1024x1024 the first level has 16384 tokens; this times one such node (SD 1.5: 8 heads
of 40, batch 2 for guidance) per layout (packed QKV vs separate Q, K, V) and per ONNX Runtime kernel switch
(environment variables read when the session starts), each in a fresh process, with the device memory it
took, beside torch's scaled_dot_product_attention as the peer. Prints one JSON line per case.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

SWITCHES = ["", "ORT_DISABLE_TRT_FLASH_ATTENTION", "ORT_DISABLE_FUSED_ATTENTION", "ORT_DISABLE_FLASH_ATTENTION",
            "ORT_DISABLE_MEMORY_EFFICIENT_ATTENTION", "ORT_ENABLE_CUDNN_FLASH_ATTENTION"]


def graph(layout: str, tokens: int, heads: int, size: int, batch: int) -> bytes:
    from onnx import TensorProto, helper

    hidden = heads * size
    if layout == "packed":
        inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT16, [batch, tokens, heads, 3, size])]
        names = ["qkv"]
    else:
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [batch, tokens, hidden]) for n in "qkv"]
        names = ["q", "k", "v"]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT16, [batch, tokens, hidden])
    node = helper.make_node("MultiHeadAttention", names, ["out"], domain="com.microsoft", num_heads=heads)
    model = helper.make_model(helper.make_graph([node], "mha", inputs, [out]), ir_version=9,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def one(case: dict) -> dict:
    import cupy
    import numpy as np

    tokens, heads, size, batch = case["tokens"], 8, 40, 2
    cupy.zeros(1)
    free0 = cupy.cuda.runtime.memGetInfo()[0]
    if case["layout"] == "torch":
        import torch

        q, k, v = (torch.randn(batch, heads, tokens, size, device="cuda", dtype=torch.float16) for _ in range(3))
        call = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
        sync = torch.cuda.synchronize
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(graph(case["layout"], tokens, heads, size, batch),
                                       providers=[("CUDAExecutionProvider", {"use_tf32": "0"})])
        binding = session.io_binding()
        shape = (batch, tokens, heads, 3, size) if case["layout"] == "packed" else (batch, tokens, heads * size)
        buffers = {i.name: cupy.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float16))
                   for i in session.get_inputs()}
        out = cupy.empty((batch, tokens, heads * size), cupy.float16)
        for name, buf in buffers.items():
            binding.bind_input(name, "cuda", 0, np.float16, list(buf.shape), buf.data.ptr)
        binding.bind_output("out", "cuda", 0, np.float16, list(out.shape), out.data.ptr)
        call = lambda: session.run_with_iobinding(binding)  # noqa: E731
        sync = cupy.cuda.Device().synchronize
    for _ in range(3):
        call()
    sync()
    start = time.perf_counter()
    for _ in range(20):
        call()
    sync()
    used = (free0 - cupy.cuda.runtime.memGetInfo()[0]) / 2**20
    return {**case, "ms": (time.perf_counter() - start) / 20 * 1e3, "device_memory_mb": round(used)}


def main() -> int:
    if len(sys.argv) > 1:
        print(json.dumps(one(json.loads(sys.argv[1]))))
        return 0
    cases = [{"layout": "torch", "switch": ""}] + [{"layout": layout, "switch": switch}
                                                 for layout in ("packed", "separate") for switch in SWITCHES]
    for tokens in (4096, 16384):
        for case in cases:
            case = {**case, "tokens": tokens}
            env = dict(os.environ, **({case["switch"]: "1"} if case["switch"] else {}))
            result = subprocess.run([sys.executable, __file__, json.dumps(case)], env=env, capture_output=True, text=True)
            line = result.stdout.strip().splitlines()[-1] if result.returncode == 0 else None
            print(line or json.dumps({**case, "error": result.stderr.strip().splitlines()[-1:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
