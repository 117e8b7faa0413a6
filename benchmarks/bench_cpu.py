"""inpaintrt vs diffusers on the CPU, on the same locally built model, measured in one run.

    python benchmarks/bench_cpu.py                  # SD 1.5-inpainting-sized model (random weights), 512x512
    python benchmarks/bench_cpu.py --family sdxl    # mid-size SDXL-architecture inpainting model, 512x512
    python benchmarks/bench_cpu.py --tiny           # tiny model: a smoke run of seconds (either family)

The model is built from the real architecture configs (SD 1.5: UNet 9->4, 320/640/1280/1280, CLIP
ViT-L/14, the SD VAE; SDXL: its block layout, two text encoders and added conditions at a width that
fits this machine, `--size sdxl` for the full 2.6 B-parameter UNet), saved, and exported with inpaint-export. Each measurement runs in a fresh process,
alternating ours and diffusers', so the two share the machine's state; medians and the ratio
diffusers / ours are printed as a table and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PROMPT, NEGATIVE = "a wooden bench in a sunny park", "blurry"
RUNTIME_ROOTS = ("inpaintrt",)  # what `pip install inpaintrt` brings
DIFFUSERS_ROOTS = ("diffusers", "torch", "transformers", "accelerate", "safetensors")
MEASURES = ("cold_start_s", "end_to_end_s", "text_encoder_s", "unet_step_s", "vae_encode_s", "vae_decode_s",
            "peak_rss_mb")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model, 128x128, 2 steps: seconds")
    parser.add_argument("--family", choices=("sd", "sdxl"), default="sd", help="model family (default sd)")
    parser.add_argument("--size", choices=("sd15", "mid", "sdxl"), help="architecture size (default: sd15 for sd, "
                        "mid for sdxl; sdxl is the full SDXL UNet)")
    parser.add_argument("--out", default="bench-out", help="folder for the model, the engine and the JSON")
    parser.add_argument("--reps", type=int, help="processes per side (default 2, tiny 1)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 4, tiny 2)")
    parser.add_argument("--child", choices=("inpaintrt", "diffusers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = "tiny" if args.tiny else args.size or ("mid" if args.family == "sdxl" else "sd15")
    if size != "tiny" and (size == "sd15") != (args.family == "sd"):
        parser.error(f"--size {size} is not a size of the {args.family} family (sd: sd15; sdxl: mid, sdxl)")
    pixels = {"tiny": 128, "sd15": 512, "mid": 512, "sdxl": 1024}[size]
    family = "sd1" if args.family == "sd" else "sdxl"
    steps = args.steps or (2 if args.tiny else 4)
    out = Path(args.out)
    name = size if args.family == "sd" else f"sdxl-{size}"
    model, engine = out / f"{name}-model", out / f"{name}-engine"
    if args.child:
        print(json.dumps(measure(args.child, model, engine, steps, pixels)))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    if not (model / "model_index.json").exists():
        subprocess.run([sys.executable, "-c", "from inpaintrt.export.models import save_pipeline; "
                        f"save_pipeline({str(model)!r}, family={family!r}, size={size!r}, in_channels=9, seed=0)"],
                       check=True)
    if not (engine / "manifest.json").exists():
        subprocess.run([sys.executable, "-c", "import sys; from inpaintrt.cli import export_main; "
                        "sys.exit(export_main(sys.argv[1:]))", "--model", str(model), "--output", str(engine)],
                       check=True)
    runs = {"inpaintrt": [], "diffusers": []}
    for _ in range(args.reps or (1 if args.tiny else 2)):
        for who in runs:  # alternate, each in a fresh process
            child = [sys.executable, __file__, "--child", who, "--out", str(out), "--steps", str(steps),
                     "--family", args.family] + (["--tiny"] if args.tiny else ["--size", size])
            result = subprocess.run(child, check=True, capture_output=True, text=True)
            runs[who].append(json.loads(result.stdout.strip().splitlines()[-1]))
    report = summarize(runs, name, pixels, steps)
    (out / f"bench-cpu-{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {out / f'bench-cpu-{name}.json'}")
    return 0


def measure(who: str, model: Path, engine: Path, steps: int, pixels: int) -> dict:
    """One process: cold start (load + first image), then warm end-to-end and per-component times."""
    import numpy as np

    from inpaintrt.sample import sample_picture

    image, mask = sample_picture(pixels, pixels)
    start = time.perf_counter()
    if who == "inpaintrt":
        run, parts = _ours(engine, steps, pixels, image, mask)
    else:
        run, parts = _theirs(model, steps, pixels, image, mask)
    run()
    result = {"cold_start_s": time.perf_counter() - start}
    result["end_to_end_s"] = _timed(run, 1)
    for name, call in parts.items():
        result[f"{name}_s"] = _timed(call, 2)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert np.isfinite(list(result.values())).all()
    return result


def _timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ours(engine, steps, pixels, image, mask):
    import numpy as np

    from inpaintrt import Engine

    e = Engine.load(engine)
    h = pixels // 8
    ids = {name: e.text.tokenizers[name]([PROMPT]) for name in e.text.encoders}
    unet = {t["name"]: _zeros(t, h) for t in e.manifest["components"]["unet"]["inputs"]}
    unet["sample"] = np.random.default_rng(0).standard_normal(unet["sample"].shape, dtype=np.float32)
    picture = np.zeros((1, 3, pixels, pixels), np.float32)
    z = np.zeros((1, 4, h, h), np.float32)
    run = lambda: e.inpaint(image, mask, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                            height=pixels, width=pixels, generator=0, progress=False)
    parts = {
        "text_encoder": lambda: [e.sessions[name].run({"input_ids": ids[name]}) for name in ids],
        "unet_step": lambda: e.sessions["unet"].run(unet),
        "vae_encode": lambda: e.sessions["vae_encoder"].run({"image": picture}),
        "vae_decode": lambda: e.sessions["vae_decoder"].run({"latent": z}),
    }
    return run, parts


def _zeros(tensor: dict, latent: int):
    """A batch-2 input of this manifest tensor (the UNet's guided batch); the timestep mid-schedule."""
    import numpy as np

    dims = {"batch": 2, "latent_height": latent, "latent_width": latent}
    shape = [dims.get(d, d) for d in tensor["shape"]]
    return np.full(shape, 500 if tensor["name"] == "timestep" else 0, tensor["dtype"])


def _theirs(model, steps, pixels, image, mask):
    import diffusers
    import torch

    torch.set_grad_enabled(False)
    index = json.loads((model / "model_index.json").read_text())
    sdxl = "XL" in index["_class_name"]
    extra = {} if sdxl else dict(safety_checker=None, requires_safety_checker=False)
    pipeline = diffusers.StableDiffusionXLInpaintPipeline if sdxl else diffusers.StableDiffusionInpaintPipeline
    pipe = pipeline.from_pretrained(str(model), **extra)
    pipe.set_progress_bar_config(disable=True)
    h = pixels // 8
    encoders = [enc for enc in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if enc is not None]
    ids = pipe.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    x = torch.randn(2, pipe.unet.config.in_channels, h, h)
    emb = torch.zeros(2, 77, pipe.unet.config.cross_attention_dim)
    added = {}
    if sdxl:
        ids_length = 5 if pipe.config.requires_aesthetics_score else 6
        added = {"added_cond_kwargs": {"text_embeds": torch.zeros(2, pipe.text_encoder_2.config.projection_dim),
                                       "time_ids": torch.zeros(2, ids_length)}}
    picture, z = torch.zeros(1, 3, pixels, pixels), torch.zeros(1, 4, h, h)
    run = lambda: pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, height=pixels,
                       width=pixels, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    parts = {
        "text_encoder": lambda: [enc(ids, output_hidden_states=sdxl) for enc in encoders],
        "unet_step": lambda: pipe.unet(x, torch.tensor([500, 500]), encoder_hidden_states=emb, **added),
        "vae_encode": lambda: pipe.vae.encode(picture),
        "vae_decode": lambda: pipe.vae.decode(z),
    }
    return run, parts


def installed_mb(roots: tuple[str, ...]) -> float:
    """Bytes on disk of these distributions and everything they require (extras not counted)."""
    seen, todo, total = set(), list(roots), 0
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop())[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        total += sum((dist.locate_file(f).stat().st_size for f in dist.files or [] if dist.locate_file(f).exists()))
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return total / 2**20


def summarize(runs: dict, size: str, pixels: int, steps: int) -> dict:
    medians = {who: {m: statistics.median(r[m] for r in rs) for m in MEASURES} for who, rs in runs.items()}
    ratios = {m: medians["diffusers"][m] / medians["inpaintrt"][m] for m in MEASURES}
    sizes = {"inpaintrt": installed_mb(RUNTIME_ROOTS), "diffusers": installed_mb(DIFFUSERS_ROOTS)}
    return {
        "model": size, "pixels": pixels, "steps": steps, "guidance_scale": 7.5, "processes_per_side": len(runs["inpaintrt"]),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "median": medians, "ratio_diffusers_over_ours": ratios, "install_mb": sizes,
        "install_ratio": sizes["diffusers"] / sizes["inpaintrt"], "runs": runs,
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(report: dict) -> str:
    rows = [f"{report['model']} model, {report['pixels']}x{report['pixels']}, {report['steps']} steps, guidance "
            f"7.5, {report['processes_per_side']} process(es) per side, {report['machine']['cores']} cores "
            f"({report['machine']['cpu']})", "",
            "| measure | inpaintrt | diffusers | diffusers / inpaintrt |", "|---|---|---|---|"]
    for m in MEASURES:
        ours, theirs = report["median"]["inpaintrt"][m], report["median"]["diffusers"][m]
        rows.append(f"| {m} | {ours:.3f} | {theirs:.3f} | {report['ratio_diffusers_over_ours'][m]:.2f}x |")
    sizes = report["install_mb"]
    rows.append(f"| installed size, MB | {sizes['inpaintrt']:.0f} | {sizes['diffusers']:.0f} | "
                f"{report['install_ratio']:.1f}x |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
