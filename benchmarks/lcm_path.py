"""The 4-step LCM-LoRA path against diffusers' 50-step default, end to end on the CPU (fp32).

    python benchmarks/lcm_path.py --folder /tmp/fullsize          # SD 1.5-inpainting-sized, 512x512 (long)
    python benchmarks/lcm_path.py --folder DIR --tiny             # tiny model and LoRA: a smoke run of seconds
    python benchmarks/lcm_path.py --folder DIR --build-only       # make the checkpoint, engine and LoRA only

Builds what --folder lacks: a random-weight checkpoint (export/random_models.py save_pipeline), its engine
(inpaint-export, fp32) and a LoRA in LCM-LoRA's layout (UNet only, rank 64, attention, feed-forward,
proj_in/out, resnet and sampler convolutions, time embedding projections: the real lcm-lora-sdv1-5's
targets), made with peft and saved with diffusers' save_lora_weights. Then, each in a fresh process:

- ours: Engine.load(engine, loras=[(lora, 1.0)]).inpaint(scheduler="lcm", 4 steps, guidance 1.0)
- diffusers: StableDiffusionInpaintPipeline with its defaults (50 steps, guidance 7.5, its scheduler)
- diffusers-lcm: the same pipeline with the LoRA (load_lora_weights + fuse_lora), LCMScheduler, 4 steps,
  guidance 1.0: the same work as ours

Each process times its load, then one end-to-end image (text encoding, denoising, VAE; load excluded).
Random weights: the pictures are noise; time is what is measured. Writes one JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PROMPT = "a wooden bench in a sunny park"
# the real LCM-LoRA's targets (diffusers' LCM-LoRA distillation script, its default target modules)
LCM_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
VARIANTS = ("ours", "diffusers", "diffusers-lcm")
# the 4-step variants also time a second image: a first call after load pays one-time costs (memory
# arenas, kernel choices) that weigh on 4 steps, and little on diffusers' 50
SECOND_IMAGE = ("ours", "diffusers-lcm")


def make_lcm_lora(checkpoint: Path, path: Path, rank: int, seed: int = 1) -> int:
    """A UNet-only diffusers-format LoRA with LCM-LoRA's targets and random non-zero up weights (peft
    initialises them to zero, which would make the LoRA do nothing); returns its parameter count."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    unet = UNet2DConditionModel.from_pretrained(str(checkpoint), subfolder="unet")
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LCM_TARGETS)
    inject_adapter_in_model(config, unet)
    state = {}
    with torch.no_grad():
        for key, weight in unet.named_parameters():
            if ".lora_" in key:
                if ".lora_B." in key:
                    weight.copy_(torch.randn_like(weight) * 0.01)
                state[key.replace(".default.", ".")] = weight.detach().clone()
    StableDiffusionInpaintPipeline.save_lora_weights(path.parent, weight_name=path.name, unet_lora_layers=state,
                                                     unet_lora_adapter_metadata=config.to_dict())
    return sum(t.numel() for t in state.values())


def build(folder: Path, tiny: bool) -> dict:
    """The checkpoint, engine and LoRA under `folder`, made where missing; returns their paths and facts."""
    size, rank = ("tiny", 4) if tiny else ("sd15", 64)
    checkpoint, engine = folder / f"{size}-checkpoint", folder / f"{size}-engine"
    lora = folder / f"{size}-lcm-lora.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    if not (checkpoint / "model_index.json").exists():
        subprocess.run([sys.executable, "-c", "from inpaintrt.export.random_models import save_pipeline; "
                        f"save_pipeline({str(checkpoint)!r}, size={size!r}, in_channels=9, seed=0)"], check=True)
    if not (engine / "manifest.json").exists():
        subprocess.run([sys.executable, "-c", "import sys; from inpaintrt.cli import export_main; "
                        "sys.exit(export_main(sys.argv[1:]))", "--model", str(checkpoint), "--output", str(engine)],
                       check=True)
    facts = folder / f"{size}-lcm-lora.json"
    if not lora.exists() or not facts.exists():
        facts.write_text(json.dumps({"parameters": make_lcm_lora(checkpoint, lora, rank), "rank": rank}))
    return {"size": size, "checkpoint": checkpoint, "engine": engine, "lora": lora,
            "lora_parameters": json.loads(facts.read_text())["parameters"], "lora_rank": rank,
            "lora_bytes": lora.stat().st_size}


def measure(who: str, built: dict, pixels: int, picture: Path) -> dict:
    """One process: the load (with the LoRA where the variant has one), then one end-to-end image (two for
    SECOND_IMAGE); the image (numpy noise of seed 0 in both engines) is saved so ours can be compared with
    diffusers-lcm's. end_to_end_s is the last image's time."""
    import resource

    import numpy as np

    from inpaintrt.sample import sample_picture

    image, mask = sample_picture(pixels, pixels)
    start = time.perf_counter()
    run = _ours(built, pixels, image, mask) if who == "ours" else _theirs(who, built, pixels, image, mask)
    loaded = time.perf_counter() - start
    times = []
    for _ in range(2 if who in SECOND_IMAGE else 1):
        start = time.perf_counter()
        result = run()
        times.append(round(time.perf_counter() - start, 3))
    np.save(picture, np.asarray(result, np.float32))
    return {"load_s": round(loaded, 3), "first_image_s": times[0], "end_to_end_s": times[-1],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _ours(built: dict, pixels: int, image, mask):
    from inpaintrt import Engine

    engine = Engine.load(built["engine"], backend="ort-cpu", loras=[(built["lora"], 1.0)])
    return lambda: engine.inpaint(image, mask, prompt=PROMPT, scheduler="lcm", num_inference_steps=4,
                                  guidance_scale=1.0, height=pixels, width=pixels, generator=0, progress=False,
                                  output_type="np").images


def _theirs(who: str, built: dict, pixels: int, image, mask):
    import torch
    from diffusers import LCMScheduler, StableDiffusionInpaintPipeline

    from inpaintrt.export.replay import numpy_randn

    torch.set_grad_enabled(False)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(built["checkpoint"]), safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    settings = {}  # diffusers' defaults: 50 steps, guidance 7.5, the checkpoint's own scheduler
    if who == "diffusers-lcm":
        pipe.load_lora_weights(str(built["lora"].parent), weight_name=built["lora"].name)
        pipe.fuse_lora()
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        settings = dict(num_inference_steps=4, guidance_scale=1.0)

    def run():
        with numpy_randn(0):  # the same numpy noise ours draws
            return pipe(prompt=PROMPT, image=image, mask_image=mask, height=pixels, width=pixels, output_type="np",
                        **settings).images
    return run


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in ("inpaintrt", "onnxruntime", "numpy", "torch", "diffusers", "transformers", "peft"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory / 2**20, 1), "os": platform.platform()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="where the checkpoint, engine and LoRA are (made "
                        "there when missing)")
    parser.add_argument("--tiny", action="store_true", help="tiny model and rank-4 LoRA, 128x128: seconds")
    parser.add_argument("--build-only", action="store_true", help="make what --folder lacks, measure nothing")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="the report (default: FOLDER/lcm-path-SIZE.json)")
    parser.add_argument("--update", action="store_true", help="keep the runs of the variants not in --variants "
                        "from the report already at --json (measure one variant again without the others)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants = args.variants.split(",")
    if set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    built = build(args.folder, args.tiny)
    pixels = 128 if args.tiny else 512
    if args.child:
        print(json.dumps(measure(args.child, built, pixels, args.folder / f"{built['size']}-{args.child}.npy")))
        return 0
    if args.build_only:
        return 0
    out = args.json or args.folder / f"lcm-path-{built['size']}.json"
    runs = json.loads(out.read_text())["runs"] if args.update and out.exists() else {}
    for who in variants:  # each in a fresh process, one after another
        child = [sys.executable, __file__, "--folder", str(args.folder), "--child", who] + (["--tiny"] * args.tiny)
        result = subprocess.run(child, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{who} failed:\n{result.stderr[-3000:]}")
        runs[who] = json.loads(result.stdout.strip().splitlines()[-1])
        print(who, runs[who], flush=True)
    report = {"model": f"{built['size']} inpainting, random weights", "pixels": pixels, "machine": machine(),
              "versions": versions(), "lora": {k: built[k] for k in ("lora_parameters", "lora_rank", "lora_bytes")},
              "settings": {"ours": "LCM-LoRA fused at load, scheduler lcm, 4 steps, guidance 1.0",
                           "diffusers": "StableDiffusionInpaintPipeline defaults: 50 steps, guidance 7.5, PNDM",
                           "diffusers-lcm": "load_lora_weights + fuse_lora, LCMScheduler, 4 steps, guidance 1.0"},
              "runs": runs, "ratios": {}}
    for other in ("diffusers", "diffusers-lcm"):
        if "ours" in runs and other in runs:
            for figure in ("end_to_end_s", "first_image_s", "load_s"):
                if figure not in runs[other] or figure not in runs["ours"]:  # a run from before the figure existed
                    continue
                report["ratios"][f"{other} / ours {figure}"] = round(runs[other][figure] / runs["ours"][figure], 2)
    if {"ours", "diffusers-lcm"} <= set(runs):  # same LoRA, scheduler and noise: the same picture
        import numpy as np

        size = built["size"]
        ours, theirs = (np.load(args.folder / f"{size}-{who}.npy") for who in ("ours", "diffusers-lcm"))
        report["max_abs_ours_vs_diffusers_lcm"] = float(np.abs(ours - theirs).max())
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"]), f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
