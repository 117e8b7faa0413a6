"""What the engine's one Segment Anything decoder graph costs a click over a graph that answers one mask.

    python benchmarks/bench_sam_decoder.py                      # 1024x768 and 2048x1536 pictures
    python benchmarks/bench_sam_decoder.py --sizes 768x1024 --reps 20

The engine exports one decoder graph that upsamples every mask token to the picture's size, so the same graph
answers multimask_output=False (token 0) and True (tokens 1..3). A click with multimask_output=False then pays
for three masks it drops. This times that graph ("all tokens") against one exported to answer token 0 alone
("one token") on ONNX Runtime's CPU provider, both as torch.onnx exports them (before the engine's fusion
pass, which folds the decoder's LayerNorms into fused operators). The prompt encoder and the mask decoder are
the same for every SAM variant (ViT-B/L/H and MobileSAM), so random weights of MobileSAM's size stand for them
all. Both graphs get the same feeds (two clicks and the padding point, no mask input), --threads intra-op
threads, medians of --reps runs after one warm-up. `one / all` below 1 is the share of the click the single-mask graph would keep;
the last column checks that both give the same token-0 logits (relative to their largest).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def sessions(folder: Path, threads: int) -> dict:
    """{"all tokens": session, "one token": session} of the decoder graph, random MobileSAM weights."""
    import onnxruntime as ort
    import torch

    from inpaintrt.export.segment_sam import SAM_VARIANTS, SamModel, export_sam_decoder_onnx

    torch.manual_seed(0)
    model = SamModel(SAM_VARIANTS["tiny_vit"]).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    found = {}
    for name, multimask in (("all tokens", None), ("one token", False)):
        path = export_sam_decoder_onnx(model, folder / f"{name.replace(' ', '-')}.onnx", multimask_output=multimask)
        found[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return found


def feeds(height: int, width: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    return {"image_embeddings": rng.standard_normal((1, 256, 64, 64), dtype=np.float32),
            "point_coords": np.array([[[512.0, 380.0], [300.0, 200.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1.0, 0.0, -1.0]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([height, width], np.float32)}


def median_seconds(session, inputs: dict, reps: int) -> float:
    session.run(None, inputs)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def token_zero_difference(graphs: dict, inputs: dict) -> float:
    """Max abs difference / max abs of the two graphs' token-0 logits: the same mask, or the timing is moot."""
    import numpy as np

    every = graphs["all tokens"].run(["masks"], inputs)[0][:, 0]
    one = graphs["one token"].run(["masks"], inputs)[0][:, 0]
    return float(np.abs(every - one).max() / np.abs(one).max())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["768x1024", "1536x2048"], help="HEIGHTxWIDTH pictures")
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        graphs = sessions(Path(folder), args.threads)
        print(f"{args.threads} threads, medians of {args.reps} runs")
        print("| picture | all tokens | one token | one / all | token 0 differs by |")
        print("|---|---|---|---|---|")
        for size in args.sizes:
            height, width = (int(side) for side in size.split("x"))
            inputs = feeds(height, width)
            found = {name: median_seconds(session, inputs, args.reps) for name, session in graphs.items()}
            every, one = found["all tokens"], found["one token"]
            print(f"| {width}x{height} | {every * 1e3:.1f} ms | {one * 1e3:.1f} ms | {one / every:.2f} | "
                  f"{token_zero_difference(graphs, inputs):.1e} |")


if __name__ == "__main__":
    main()
