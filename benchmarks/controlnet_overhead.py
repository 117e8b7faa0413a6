"""What a ControlNet engine costs per denoising step on the CPU when no ControlNet runs, and when one does.

    python benchmarks/controlnet_overhead.py                 # the "small" model (64x64 latents, 512x512)
    python benchmarks/controlnet_overhead.py --size tiny     # seconds

Builds one checkpoint and a ControlNet of its architecture (random weights), exports it twice — without
and with --controlnet — and times, alternating, one guided UNet step (batch 2) of: the plain UNet; the
residual-input UNet fed zeros (what every step of a ControlNet engine costs without control: the zero
feeds plus 13 additions, for SD 1.5); and the ControlNet itself (the cost of control). Medians; JSON too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "small", "sd15"), default="small")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import torch
    from diffusers import ControlNetModel

    from inpaintrt import Engine
    from inpaintrt.export.controlnet import ControlNetSource
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline
    from inpaintrt.export.random_models import SIZES, save_pipeline
    from inpaintrt.runtime.control import ControlResiduals

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        save_pipeline(root / "model", size=args.size, in_channels=9)
        engines = {}
        for name in ("plain", "controlnet"):
            pipe = load_pipeline(str(root / "model"))
            nets = None
            if name == "controlnet":
                torch.manual_seed(1)
                config = ControlNetModel.from_unet(pipe.unet, load_weights_from_unet=False).config
                net = ControlNetModel.from_config({**config, "in_channels": 4})  # it sees the 4-channel latents
                nets = [ControlNetSource("benchmark", "plain", net.eval())]
            engines[name] = Engine.load(export_engine(pipe, root / name, log=lambda *_: None, release=True,
                                                      controlnets=nets))
        side = SIZES[args.size]["sample_size"]
        rng = np.random.default_rng(0)
        hidden = engines["plain"].manifest["components"]["unet"]["inputs"][2]["shape"]
        feeds = {"sample": rng.standard_normal((2, 9, side, side), dtype=np.float32),
                 "timestep": np.full(2, 500.0, np.float32),
                 "encoder_hidden_states": rng.standard_normal((2, 77, hidden[2]), dtype=np.float32)}  # one chunk
        control = ControlResiduals([], engines["controlnet"].manifest["controlnet_residuals"],
                                   feeds["encoder_hidden_states"], True, False)
        net_feeds = {"sample": feeds["sample"][:, :4], "timestep": feeds["timestep"],
                     "encoder_hidden_states": feeds["encoder_hidden_states"],
                     "controlnet_cond": rng.random((2, 3, side * 8, side * 8), dtype=np.float32)}
        runs = {
            "plain_unet_step_s": lambda: engines["plain"].sessions["unet"].run(feeds),
            "residual_unet_zeros_step_s": lambda: engines["controlnet"].sessions["unet"].run(
                {**feeds, **control(0, 1, feeds["sample"][:, :4], feeds["timestep"])}),
            "controlnet_step_s": lambda: engines["controlnet"].sessions["controlnet_0"].run(net_feeds),
        }
        times = {name: [] for name in runs}
        for run in runs.values():
            run()  # warm-up
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(values) for name, values in times.items()}
    result["zeros_overhead_per_step"] = result["residual_unet_zeros_step_s"] / result["plain_unet_step_s"] - 1
    result.update(size=args.size, latent=[side, side], batch=2, repeats=args.repeats)
    for name, value in result.items():
        print(f"{name:28s} {value:.4g}" if isinstance(value, float) else f"{name:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
