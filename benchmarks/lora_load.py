"""What a LoRA adds to Engine.load: a plain load against a load with one LoRA fused at load time, and one
UNet step with each (the fused sessions run without ONNX Runtime's NCHWc convolution layout).

    python benchmarks/lora_load.py                        # tiny SD 1.x engine and a tiny LoRA, built here
    python benchmarks/lora_load.py --engine DIR --lora FILE [--runs 3]   # e.g. a full-size engine directory

The tiny case needs the export extra (torch, diffusers, peft) to make its engine and LoRA; with --engine and
--lora only the runtime is used. Hash checks are off in both loads (they cost the same either way).
Prints one JSON line (--json also writes it with the machine and versions).
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lcm_path import machine, versions  # this folder (the script's own directory is on sys.path)


def tiny(folder: Path) -> tuple[Path, Path]:
    """A tiny exported engine and a peft-made LoRA (text encoder, attention, LoCon convolutions) for it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
    from lora_helpers import make_lora

    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline
    from inpaintrt.export.random_models import save_pipeline

    checkpoint = save_pipeline(folder / "checkpoint", size="tiny", in_channels=9)
    engine = export_engine(load_pipeline(str(checkpoint)), folder / "engine", log=lambda *_: None)
    return engine, make_lora(checkpoint, folder / "lora.safetensors", seed=1, conv=True)


def timed_load(engine_dir: Path, loras, runs: int) -> tuple[float, object]:
    """Best of `runs` loads; each earlier engine is dropped before the next load, so a full-size engine
    is measured with one copy in memory, not two."""
    from inpaintrt import Engine

    best, engine = float("inf"), None
    for _ in range(runs):
        engine = None
        gc.collect()
        start = time.perf_counter()
        engine = Engine.load(engine_dir, backend="ort-cpu", verify_hashes=False, loras=loras)
        best = min(best, time.perf_counter() - start)
    return best, engine


def unet_step(engine, runs: int) -> float:
    model = engine.manifest["model"]
    size = model["default_height"] // model["vae_scale_factor"], model["default_width"] // model["vae_scale_factor"]
    feeds = {i["name"]: np.zeros([2 if d == "batch" else 77 if d == "text_length" else
                                   size[0] if d == "latent_height" else size[1] if d == "latent_width" else d
                                   for d in i["shape"]], i["dtype"])
             for i in engine.manifest["components"]["unet"]["inputs"]}
    engine.sessions["unet"].run(feeds)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        engine.sessions["unet"].run(feeds)
        best = min(best, time.perf_counter() - start)
    return best


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (the plain phase's, then the larger of both)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, help="engine directory (default: a tiny one built here)")
    parser.add_argument("--lora", type=Path, help="LoRA .safetensors for --engine")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5, help="best of this many loads and steps")
    parser.add_argument("--json", type=Path, help="also write the figures, the machine and the versions here")
    args = parser.parse_args()
    if (args.engine is None) != (args.lora is None):
        parser.error("pass --engine and --lora together, or neither (the tiny case)")
    with tempfile.TemporaryDirectory() as folder:
        engine_dir, lora = (args.engine, args.lora) if args.engine else tiny(Path(folder))
        plain, engine = timed_load(engine_dir, None, args.runs)
        plain_step = unet_step(engine, args.runs)
        plain_peak = peak_rss_mb()
        engine = None  # one engine in memory at a time
        gc.collect()
        fused, engine = timed_load(engine_dir, [(lora, args.scale)], args.runs)
        figures = {
            "engine": str(args.engine or "tiny SD 1.x (built here)"), "lora_bytes": lora.stat().st_size,
            "load_s": round(plain, 4), "load_with_lora_s": round(fused, 4), "lora_extra_s": round(fused - plain, 4),
            "unet_step_s": round(plain_step, 4), "unet_step_with_lora_s": round(unet_step(engine, args.runs), 4),
            "peak_rss_plain_mb": plain_peak, "peak_rss_both_mb": peak_rss_mb(), "runs": args.runs}
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps({**figures, "machine": machine(), "versions": versions()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
