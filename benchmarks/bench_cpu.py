"""inpaintrt vs diffusers on the CPU, on the same locally built model, measured in one run.

    python benchmarks/bench_cpu.py                  # SD 1.5-inpainting-sized model (random weights), 512x512
    python benchmarks/bench_cpu.py --family sdxl    # mid-size SDXL-architecture inpainting model, 512x512
    python benchmarks/bench_cpu.py --tiny           # tiny model: a smoke run of seconds (either family)
    python benchmarks/bench_cpu.py --variants inpaintrt-bf16,diffusers-bf16   # only these (see VARIANTS)

The model is built from the real architecture configs (SD 1.5: UNet 9->4, 320/640/1280/1280, CLIP
ViT-L/14, the SD VAE; SDXL: its block layout, two text encoders and added conditions at a width that
fits this machine, `--size sdxl` for the full 2.6 B-parameter UNet), saved, and exported with inpaint-export. Each measurement runs in a fresh process,
alternating the variants, so they share the machine's state; medians and the ratios are printed as a
table and written as JSON, with a bar chart (PNG) when matplotlib is installed (`inpaintrt[bench]`).

Variants: ours in fp32 (ONNX Runtime) and in bf16 (OpenVINO, `precision="bf16"`),
diffusers in fp32 and in bf16 (`torch.autocast("cpu", torch.bfloat16)`), and optimum-intel's OpenVINO
inpainting pipeline in bf16 as a peer (its own venv, `bash benchmarks/optimum_venv.sh`; see optimum_peer.py).
Cold start is load + first image; `cold_start_first_s` is the first process's (for OpenVINO: its
model cache emptied first, so it converts and compiles), `cold_start_s` the median of the later ones
(OpenVINO imports the cached compiled models; it always gets at least two processes);
`peak_rss_first_mb` / `peak_rss_mb` likewise. No variant starts from a cold disk, but with all of
them on a 24 GB machine a variant's files can leave the page cache before its next process. Every
variant's end-to-end image is made with the same numpy noise (diffusers replays it, docs/architecture.md, "Randomness");
the PSNR of each against diffusers fp32 is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from bench_report import chart, table  # this folder (the script's own directory is on sys.path)
import optimum_peer  # the optimum-intel peer: stdlib at import; its child runs in its own venv

PROMPT, NEGATIVE = "a wooden bench in a sunny park", "blurry"
RUNTIME_ROOTS = ("inpaintrt",)  # what `pip install inpaintrt` brings
DIFFUSERS_ROOTS = ("diffusers", "torch", "transformers", "accelerate", "safetensors")
MEASURES = ("cold_start_s", "end_to_end_s", "text_encoder_s", "unet_step_s", "vae_encode_s", "vae_decode_s",
            "peak_rss_mb", "load_s")
# name -> (side, precision); ours in bf16 runs backend "openvino"; optimum-intel runs with --optimum-python
VARIANTS = {"inpaintrt": ("inpaintrt", "fp32"), "inpaintrt-bf16": ("inpaintrt", "bf16"),
            "diffusers": ("diffusers", "fp32"), "diffusers-bf16": ("diffusers", "bf16"),
            "optimum-intel-bf16": ("optimum-intel", "bf16")}
# (numerator, denominator, label) of the ratios reported: how many times faster the denominator is
RATIOS = (("diffusers", "inpaintrt", "diffusers / ours"), ("diffusers", "inpaintrt-bf16", "diffusers / ours-bf16"),
          ("diffusers-bf16", "inpaintrt-bf16", "diffusers-bf16 / ours-bf16"),
          ("optimum-intel-bf16", "inpaintrt-bf16", "optimum-intel-bf16 / ours-bf16"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model, 128x128, 2 steps: seconds")
    parser.add_argument("--family", choices=("sd", "sdxl"), default="sd", help="model family (default sd)")
    parser.add_argument("--size", choices=("sd15", "mid", "sdxl"), help="architecture size (default: sd15 for sd, "
                        "mid for sdxl; sdxl is the full SDXL UNet)")
    parser.add_argument("--out", default="bench-out", help="folder for the model, the engine and the JSON")
    parser.add_argument("--reps", type=int, help="processes per side (default 2, tiny 1)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 4, tiny 2)")
    parser.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all; the bf16 "
                        "ones only where OpenVINO is installed and the CPU runs bf16)")
    parser.add_argument("--accuracy-only", action="store_true", help="one image per variant, no timing: the PSNR "
                        "and max abs error against diffusers fp32 (for step counts too slow to time)")
    parser.add_argument("--optimum-python", default=optimum_peer.default_python(), help="python of the venv with "
                        f"optimum-intel (`{optimum_peer.SETUP}`; default: .venv-optimum/bin/python when it exists)")
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
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
    peer = out / f"{name}-optimum-intel"  # optimum-intel's OpenVINO IR of the model
    if args.child:
        artifact = peer if VARIANTS[args.child][0] == "optimum-intel" else engine
        print(json.dumps(measure(args.child, model, artifact, steps, pixels, out / f"{name}-{args.child}.npy",
                                 args.accuracy_only)))
        return 0
    variants = args.variants.split(",") if args.variants else default_variants(args.family, args.optimum_python)
    if not {"inpaintrt", "diffusers"} & set(variants) or set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}, diffusers or inpaintrt among them")
    if "optimum-intel-bf16" in variants and (args.family != "sd" or not shutil.which(args.optimum_python or "")):
        parser.error("optimum-intel-bf16: SD 1.5 family only, and it needs --optimum-python, the python of a venv "
                     f"with optimum-intel (`{optimum_peer.SETUP}` builds .venv-optimum)")

    out.mkdir(parents=True, exist_ok=True)
    if not (model / "model_index.json").exists():
        subprocess.run([sys.executable, "-c", "from inpaintrt.export.random_models import save_pipeline; "
                        f"save_pipeline({str(model)!r}, family={family!r}, size={size!r}, in_channels=9, seed=0)"],
                       check=True)
    if not (engine / "manifest.json").exists():
        subprocess.run([sys.executable, "-c", "import sys; from inpaintrt.cli import export_main; "
                        "sys.exit(export_main(sys.argv[1:]))", "--model", str(model), "--output", str(engine)],
                       check=True)
    if "optimum-intel-bf16" in variants:  # converted once, like our export; its loads compile every time
        optimum_peer.export(model, peer, args.optimum_python)
    shutil.rmtree(engine / ".openvino-cache", ignore_errors=True)  # the first OpenVINO load compiles
    for f in out.glob(f"{name}-*.npy"):
        f.unlink()
    runs = {who: [] for who in variants}
    reps = 1 if args.accuracy_only else args.reps or (1 if args.tiny else 2)
    extra = "inpaintrt-bf16" in runs and not args.accuracy_only  # OpenVINO's second (cached) load
    for rep in range(max(reps, 2) if extra else reps):
        for who in runs:  # alternate, each in a fresh process
            if rep >= reps and who != "inpaintrt-bf16":
                continue  # the extra process: OpenVINO's second (cached) load
            python = args.optimum_python if VARIANTS[who][0] == "optimum-intel" else sys.executable
            child = [python, __file__, "--child", who, "--out", str(out), "--steps", str(steps),
                     "--family", args.family] + (["--tiny"] if args.tiny else ["--size", size]) + (
                ["--accuracy-only"] if args.accuracy_only else [])
            result = subprocess.run(child, capture_output=True, text=True)
            if result.returncode:
                sys.exit(f"{who} failed:\n{result.stderr[-3000:]}")
            runs[who].append(json.loads(result.stdout.strip().splitlines()[-1]))
    stem = f"bench-cpu-{name}" + ("" if args.steps is None else f"-{steps}steps")
    if args.accuracy_only:
        report = {"model": name, "pixels": pixels, "steps": steps, "guidance_scale": 7.5, "machine": _machine(),
                  "psnr_vs_diffusers_fp32_db": accuracy(out, name, variants),
                  "max_abs_vs_diffusers_fp32": accuracy(out, name, variants, "max_abs"), "runs": runs}
        (out / f"{stem}-accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: report[k] for k in ("psnr_vs_diffusers_fp32_db", "max_abs_vs_diffusers_fp32")}, indent=1))
        print(f"\nJSON: {out / f'{stem}-accuracy.json'}")
        return 0
    report = summarize(runs, name, pixels, steps, accuracy(out, name, variants))
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {out / f'{stem}.json'}")
    print(chart(report, out / f"{stem}.png"))
    return 0


def default_variants(family: str, optimum_python: str | None) -> list[str]:
    try:
        from inpaintrt.engine.openvino_backend import cpu_has_bf16, load_openvino

        bf16 = cpu_has_bf16(load_openvino().Core())
    except Exception:
        bf16 = False
    if not bf16:
        print("the bf16 variants are left out: OpenVINO is not installed or this CPU has no bf16", file=sys.stderr)
        return ["inpaintrt", "diffusers"]
    if family == "sd" and optimum_python:
        return list(VARIANTS)
    if family == "sd":
        print(f"optimum-intel-bf16 is left out: no optimum-intel venv (`{optimum_peer.SETUP}`, or --optimum-python)",
              file=sys.stderr)
    return [v for v in VARIANTS if VARIANTS[v][0] != "optimum-intel"]


def measure(who: str, model: Path, engine: Path, steps: int, pixels: int, picture: Path,
            first_only: bool = False) -> dict:
    """One process: cold start (load + first image), then (unless `first_only`) warm end-to-end and
    per-component times; the first process of a variant saves its image (np, numpy noise of seed 0)
    for the PSNR."""
    import numpy as np

    from inpaintrt.sample import sample_picture

    image, mask = sample_picture(pixels, pixels)
    side, precision = VARIANTS[who]
    start = time.perf_counter()
    if side == "inpaintrt":
        run, parts = _ours(engine, steps, pixels, image, mask, precision)
    elif side == "optimum-intel":  # `engine` is optimum-intel's IR folder here
        run, parts = optimum_peer.pipeline_parts(engine, steps, pixels, image, mask, precision, PROMPT, NEGATIVE)
    else:
        run, parts = _theirs(model, steps, pixels, image, mask, precision)
    loaded = time.perf_counter() - start
    first = run()
    result = {"cold_start_s": time.perf_counter() - start, "load_s": loaded}
    if not picture.exists():
        np.save(picture, np.asarray(first, np.float32))
    if first_only:
        return result
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


def _ours(engine, steps, pixels, image, mask, precision):
    import numpy as np

    from inpaintrt import Engine

    e = Engine.load(engine, backend="openvino" if precision == "bf16" else "auto", precision=precision)
    assert e.precision == precision, (e.backend, e.precision)
    h = pixels // 8
    ids = {name: e.text.tokenizers[name]([PROMPT]) for name in e.text.encoders}
    unet = {t["name"]: _zeros(t, h) for t in e.manifest["components"]["unet"]["inputs"]}
    unet["sample"] = np.random.default_rng(0).standard_normal(unet["sample"].shape, dtype=np.float32)
    picture = np.zeros((1, 3, pixels, pixels), np.float32)
    z = np.zeros((1, 4, h, h), np.float32)
    run = lambda: e.inpaint(image, mask, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                            height=pixels, width=pixels, generator=0, progress=False, output_type="np").images
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

    dims = {"batch": 2, "latent_height": latent, "latent_width": latent, "text_length": 77}  # one prompt chunk
    shape = [dims.get(d, d) for d in tensor["shape"]]
    return np.full(shape, 500 if tensor["name"] == "timestep" else 0, tensor["dtype"])


def _theirs(model, steps, pixels, image, mask, precision):
    import contextlib

    import diffusers
    import torch

    from inpaintrt.export.replay import numpy_randn

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
    cast = lambda: torch.autocast("cpu", torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def run():  # numpy noise of seed 0, as ours draws it
        with numpy_randn(0), cast():
            return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, height=pixels,
                        width=pixels, num_inference_steps=steps, output_type="np").images

    def casted(call):
        def inner():
            with cast():
                return call()
        return inner

    parts = {
        "text_encoder": casted(lambda: [enc(ids, output_hidden_states=sdxl) for enc in encoders]),
        "unet_step": casted(lambda: pipe.unet(x, torch.tensor([500, 500]), encoder_hidden_states=emb, **added)),
        "vae_encode": casted(lambda: pipe.vae.encode(picture)),
        "vae_decode": casted(lambda: pipe.vae.decode(z)),
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


def accuracy(out: Path, name: str, variants: list[str], measure: str = "psnr") -> dict:
    """PSNR (dB, images in [0, 1]; or the max abs difference) of each variant's image against diffusers
    fp32's, same numpy noise."""
    import numpy as np

    reference = out / f"{name}-diffusers.npy"
    if not reference.exists():
        return {}
    expected = np.load(reference).astype(np.float64)
    found = {}
    for who in variants:
        if who != "diffusers":
            error = np.load(out / f"{name}-{who}.npy").astype(np.float64) - expected
            if measure == "max_abs":
                found[who] = float(np.abs(error).max())
                continue
            mse = float(np.mean(error ** 2))
            found[who] = 10 * np.log10(1 / mse) if mse > 0 else float("inf")
    return found


def summarize(runs: dict, size: str, pixels: int, steps: int, psnr: dict | None = None) -> dict:
    medians = {}
    for who, rs in runs.items():
        medians[who] = {m: statistics.median(r[m] for r in rs) for m in MEASURES}
        # the first process loads without OpenVINO's model cache; the later ones load the second time
        for m, first in (("cold_start_s", "cold_start_first_s"), ("peak_rss_mb", "peak_rss_first_mb")):
            medians[who][first] = rs[0][m]  # the first load compiles (OpenVINO: converts, too)
            medians[who][m] = statistics.median(r[m] for r in rs[1:] or rs)
    measures = MEASURES + ("cold_start_first_s", "peak_rss_first_mb")
    ratios = {label: {m: medians[a][m] / medians[b][m] for m in measures}
              for a, b, label in RATIOS if a in medians and b in medians}
    sizes = {"inpaintrt": installed_mb(RUNTIME_ROOTS), "diffusers": installed_mb(DIFFUSERS_ROOTS)}
    report = {
        "model": size, "pixels": pixels, "steps": steps, "guidance_scale": 7.5,
        "processes_per_side": min(len(rs) for rs in runs.values()),
        "processes": {who: len(rs) for who, rs in runs.items()},
        "machine": _machine(),
        "median": medians, "ratios": ratios, "psnr_vs_diffusers_fp32_db": psnr or {},
        "install_mb": sizes, "install_ratio": sizes["diffusers"] / sizes["inpaintrt"], "runs": runs,
    }
    if "diffusers / ours" in ratios:  # the name earlier results files used
        report["ratio_diffusers_over_ours"] = ratios["diffusers / ours"]
    return report


def _machine() -> dict:
    return {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
