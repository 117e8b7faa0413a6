"""Segment Anything clicks: the first click on a picture (image encoder + decoder) and a further click on it
(decoder only: the engine keeps the embedding), engine against the torch modules on SamPredictor's path.

    python benchmarks/bench_segment.py                          # MobileSAM and SAM ViT-B, 1024x768 picture
    python benchmarks/bench_segment.py --cases mobile_sam --reps 3

The models are the real architectures with random weights (export/segment_sam.py SAM_VARIANTS: "tiny_vit" is
MobileSAM's TinyViT, "vit_b" SAM's ViT-B), exported once into --work with export_sam (what `inpaint-export
--model sam_vit_b_01ec64.pth` runs) and reused by later runs. Each side runs in a fresh process, the sides
alternating over --rounds, each with --threads threads (torch.set_num_threads; INPAINTRT_THREADS for ONNX
Runtime):
  torch     set_image: the encoder on the preprocessed frame; a click: prompt encoder + mask decoder + SAM's
            postprocessing (segment_sam.sam_predict), under torch.no_grad
  ort-cpu   Engine.load(dir).segment(picture, points=[...]): the whole public call (the first one encodes, the
            later ones find the embedding in the cache)
A first click is timed on a picture not seen before (a fresh copy with one pixel changed), a further click on
the last one. `first / torch` and `further / torch` divide the engine's medians by torch's; below 1 the engine
is faster. Prints a markdown table and writes --json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ("mobile_sam", "vit_b")
VARIANT = {"mobile_sam": "tiny_vit", "vit_b": "vit_b"}
SIDES = ("torch", "ort-cpu")
SIZE = (768, 1024)  # height, width of the picture
CLICKS = [[[512.0, 380.0]], [[512.0, 380.0], [300.0, 200.0]], [[512.0, 380.0], [300.0, 200.0], [700.0, 600.0]]]
LABELS = [[1], [1, 0], [1, 0, 1]]


def prepare(work: Path, case: str, log=print) -> tuple[Path, Path]:
    """(state dict file, engine directory) of the case, made where missing."""
    import torch

    from inpaintrt.export.segment_sam import SAM_VARIANTS, SamModel
    from inpaintrt.export.segmenter import export_sam

    work.mkdir(parents=True, exist_ok=True)
    weights, engine = work / f"{case}.pth", work / f"{case}-engine"
    if not weights.exists():
        torch.manual_seed(0)
        model = SamModel(SAM_VARIANTS[VARIANT[case]]).eval()
        torch.save(model.state_dict(), weights)
    if not (engine / "manifest.json").exists():
        from inpaintrt.export.segmenter import read_sam

        started = time.perf_counter()
        export_sam(read_sam(weights), engine, str(weights), log=lambda line: log(f"  {line}"))
        log(f"exported {engine} in {time.perf_counter() - started:.1f} s")
    return weights, engine


def picture(seed: int):
    import numpy as np

    from inpaintrt.sample import sample_picture

    image, _ = sample_picture(SIZE[1], SIZE[0])
    pixels = np.array(image.convert("RGB"))
    pixels[0, 0, 0] = seed % 256  # another picture to the cache, the same work
    return pixels


def measure(job: dict) -> dict:
    """One process: load, a warm-up first click, then `reps` first clicks and `reps` further clicks."""
    import numpy as np

    if job["side"] == "torch":
        first, further = _torch(job)
    else:
        first, further = _engine(job)
    first(picture(0), 0)
    firsts, furthers = [], []
    for rep in range(job["reps"]):
        image = picture(rep + 1)
        begin = time.perf_counter()
        first(image, rep % len(CLICKS))
        firsts.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        logits = further(image, (rep + 1) % len(CLICKS))
        furthers.append(time.perf_counter() - begin)
    np.save(job["output"], np.asarray(logits, np.float32))
    return {"first_s": statistics.median(firsts), "further_s": statistics.median(furthers),
            "first_times_s": firsts, "further_times_s": furthers, "load_average": round(os.getloadavg()[0], 2)}


def _torch(job: dict):
    import numpy as np
    import torch
    from PIL import Image

    from inpaintrt.export.segment_sam import preprocess_size, sam_predict
    from inpaintrt.export.segmenter import SAM_PIXEL_MEAN, SAM_PIXEL_STD, read_sam

    torch.set_grad_enabled(False)
    torch.set_num_threads(job["threads"])
    model = read_sam(job["weights"])
    state = {}

    def first(image, click):  # SamPredictor.set_image, then a click
        h, w = preprocess_size(*image.shape[:2], model.img_size)
        resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        x = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
        x = (x - torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
        x = torch.nn.functional.pad(x, (0, model.img_size - w, 0, model.img_size - h))
        state.update(embeddings=model.image_encoder(x), size=image.shape[:2], scale=(w / image.shape[1],
                                                                                       h / image.shape[0]))
        return further(image, click)

    def further(image, click):
        coords = torch.tensor(CLICKS[click])[None] * torch.tensor(state["scale"])
        labels = torch.tensor(LABELS[click], dtype=torch.float32)[None]
        masks, _, _ = sam_predict(model, state["embeddings"], state["size"], coords, labels, multimask_output=False)
        return masks[0].numpy()

    return first, further


def _engine(job: dict):
    os.environ["INPAINTRT_THREADS"] = str(job["threads"])
    from inpaintrt import Engine

    engine = Engine.load(job["engine"], backend="ort-cpu")

    def call(image, click):
        return engine.segment(image, points=CLICKS[click], labels=LABELS[click]).logits

    return call, call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/inpaintrt-bench-segment"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        print(json.dumps(measure(job)))
        return 0
    import numpy as np

    rows, runs = [], {}
    for case in args.cases.split(","):
        weights, engine = prepare(args.work, case)
        for round_ in range(args.rounds):
            for side in (SIDES if round_ % 2 == 0 else SIDES[::-1]):
                output = args.work / f"{case}-{side}.npy"
                job = dict(side=side, weights=str(weights), engine=str(engine), reps=args.reps, threads=args.threads,
                           output=str(output))
                done = subprocess.run([sys.executable, __file__, "--job", json.dumps(job)], capture_output=True,
                                      text=True, check=True)
                runs.setdefault((case, side), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
        torch_out, engine_out = (np.load(args.work / f"{case}-{side}.npy") for side in SIDES)
        error = float(np.abs(engine_out - torch_out).max() / max(np.abs(torch_out).max(), 1e-12))
        median = {(side, key): statistics.median(t for run in runs[(case, side)] for t in run[f"{key}_times_s"])
                  for side in SIDES for key in ("first", "further")}
        rows.append({"case": case, "torch_first_s": median[("torch", "first")],
                     "torch_further_s": median[("torch", "further")], "engine_first_s": median[("ort-cpu", "first")],
                     "engine_further_s": median[("ort-cpu", "further")],
                     "first_vs_torch": median[("ort-cpu", "first")] / median[("torch", "first")],
                     "further_vs_torch": median[("ort-cpu", "further")] / median[("torch", "further")],
                     "further_vs_first": median[("ort-cpu", "further")] / median[("ort-cpu", "first")],
                     "logits_rel_vs_torch": error,
                     "load_average": max(run["load_average"] for side in SIDES for run in runs[(case, side)])})
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
          f"picture {SIZE[1]}x{SIZE[0]}; medians of {args.reps * args.rounds} calls per side")
    print("| model | torch first / further (s) | engine first / further (s) | first / torch | further / torch | "
          "further / first | logits rel. diff | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['torch_first_s']:.3f} / {r['torch_further_s']:.3f} | {r['engine_first_s']:.3f} / "
              f"{r['engine_further_s']:.3f} | {r['first_vs_torch']:.2f} | {r['further_vs_torch']:.2f} | "
              f"{r['further_vs_first']:.3f} | {r['logits_rel_vs_torch']:.1e} | {r['load_average']} |")
    out = args.json or args.work / "bench-segment-cpu.json"
    out.write_text(json.dumps({"rows": rows, "runs": {f"{c}/{s}": v for (c, s), v in runs.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
