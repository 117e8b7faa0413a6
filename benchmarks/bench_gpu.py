"""inpaintrt (ort-cuda, fp16) vs diffusers (fp16) on one CUDA GPU, same model, measured in one run.

    python benchmarks/bench_gpu.py                       # SD 1.5-inpainting-sized model, 512x512, 50 steps
    python benchmarks/bench_gpu.py --steps 20 --reps 5
    python benchmarks/bench_gpu.py --variants ort-cuda-graph,diffusers-fp16

WRITTEN WITHOUT A GPU: this script has never run on one. It needs onnxruntime-gpu, cupy, torch with
CUDA and, for the diffusers side and the export, diffusers + transformers.

On the lent GPU machine (DESIGN.md §8: torch cu130, cupy-cuda13x, CPU onnxruntime; no onnxruntime-gpu,
no diffusers, no network): here, `../shared/tools/device-wheels onnxruntime-gpu==1.31.1 diffusers==0.42.0`
(1.31 is a CUDA 13 build if the release notes read here are right; the backend refuses a mismatch
with cupy's CUDA), carry the .devwK folders one call at a time into /tmp/devw there, run
`bash /tmp/devw/devw-install.sh && export PYTHONPATH=/tmp/site`, then this script (the export of the
SD 1.5-size model runs on the machine's CPUs first, a few minutes; --steps 20 fits one call sooner).

The model is the SD 1.5 inpainting architecture with random weights (inpaintrt.export.models), saved
and exported with `inpaint-export --fp16` (the CUDA-optimized fp16 graphs) unless --model / --engine
name existing ones. Variants, each in a fresh process, alternated --processes times:
  ort-cuda-graph   Engine.load(backend="ort-cuda", cuda_graph=True)
  ort-cuda         Engine.load(backend="ort-cuda")
  diffusers-fp16   StableDiffusionInpaintPipeline, torch_dtype=float16, on cuda
Per process: cold start (load + first image), then --reps timed images (medians), the UNet call at
the guided batch (median of 10), and the device memory in use after the runs less what the process
held before loading (allocators keep their peak: ONNX Runtime's arena, cupy's and torch's pools);
torch's own max_memory_allocated is recorded too. Writes benchmarks/results/gpu-<date>.json naming
the device, and prints a table with the ratios diffusers / ours.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PROMPT, NEGATIVE = "a wooden bench in a sunny park", "blurry"
VARIANTS = ("ort-cuda-graph", "ort-cuda", "diffusers-fp16")
OURS = ("ort-cuda-graph", "ort-cuda")
MEASURES = ("cold_start_s", "end_to_end_s", "unet_call_s", "device_memory_mb")
RESULTS = Path(__file__).parent / "results"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-out", help="folder for the model and the engine (default bench-out)")
    parser.add_argument("--model", help="an existing diffusers folder (default: build the random-weight SD 1.5 model)")
    parser.add_argument("--engine", help="an existing engine directory exported with --fp16 (default: export one)")
    parser.add_argument("--pixels", type=int, default=512, help="image side (default 512, a multiple of 8)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--batch", type=int, default=1, help="images per prompt (default 1)")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                        help="skip the accuracy run (ours fp16 / fp32 vs diffusers fp32 with the same noise)")
    parser.add_argument("--reps", type=int, default=3, help="timed images per process (default 3)")
    parser.add_argument("--processes", type=int, default=1, help="fresh processes per variant (default 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default all)")
    parser.add_argument("--results", default=str(RESULTS), help="folder for gpu-<date>.json (default benchmarks/results)")
    parser.add_argument("--child", choices=VARIANTS + ("accuracy",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {unknown or 'none given'}; choose from {', '.join(VARIANTS)}")
    if not any(v in OURS for v in args.variants) or "diffusers-fp16" not in args.variants:
        parser.error("--variants needs diffusers-fp16 and at least one ort-cuda variant: the result is their ratio")
    if args.pixels < 64 or args.pixels % 8:
        parser.error(f"--pixels {args.pixels}: use a multiple of 8 of at least 64")
    for name in ("steps", "batch", "reps", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def gpu_missing(variants) -> str | None:
    """Why this machine cannot run the benchmark (None when it can): checked before any work."""
    reasons = []
    if any(v in OURS for v in variants):
        from inpaintrt.engine.backends import BackendError
        from inpaintrt.engine.ort_cuda import load_ort_cuda

        try:
            load_ort_cuda()
        except BackendError as e:
            reasons.append(f"ort-cuda cannot start ({e})")
    if "diffusers-fp16" in variants:
        try:
            import torch

            if not torch.cuda.is_available():
                reasons.append(f"torch {torch.__version__} sees no CUDA device")
        except ImportError:
            reasons.append("torch is not installed (the diffusers side and the export need it)")
        try:
            import diffusers  # noqa: F401
        except ImportError:
            reasons.append("diffusers is not installed")
    return "; ".join(reasons) or None


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out)
    model = Path(args.model) if args.model else out / "sd15-model"
    engine = Path(args.engine) if args.engine else out / "sd15-engine-fp16"
    if args.child == "accuracy":
        print(json.dumps(accuracy(model, engine, args.steps, args.pixels, args.batch)))
        return 0
    if args.child:
        print(json.dumps(measure(args.child, model, engine, args.steps, args.pixels, args.reps, args.batch)))
        return 0
    missing = gpu_missing(args.variants)
    if missing:
        print(f"bench_gpu.py needs a CUDA GPU with the GPU extras installed; not measuring: {missing}", file=sys.stderr)
        return 2
    prepare(model, engine, out)
    runs = {v: [] for v in args.variants}

    def child(kind: str) -> dict:
        command = [sys.executable, __file__, "--child", kind, "--out", str(out), "--model", str(model),
                   "--engine", str(engine), "--steps", str(args.steps), "--pixels", str(args.pixels),
                   "--batch", str(args.batch), "--reps", str(args.reps), "--variants", ",".join(args.variants)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{kind} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    for _ in range(args.processes):
        for variant in args.variants:  # alternate, each in a fresh process
            runs[variant].append(child(variant))
    report = summarize(runs, args, engine)
    if args.accuracy:
        report["accuracy"] = child("accuracy")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"gpu-{datetime.date.today().isoformat()}.json"
    # one file per day: each workload (size, batch) under its own key
    everything = json.loads(path.read_text()) if path.exists() else {}
    everything[f"{args.pixels}px-batch{args.batch}"] = report
    path.write_text(json.dumps(everything, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {path}")
    return 0


def prepare(model: Path, engine: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (model / "model_index.json").exists():
        subprocess.run([sys.executable, "-c", "from inpaintrt.export.models import save_pipeline; "
                        f"save_pipeline({str(model)!r}, family='sd1', size='sd15', in_channels=9, seed=0)"], check=True)
    if not (engine / "manifest.json").exists():
        subprocess.run([sys.executable, "-c", "import sys; from inpaintrt.cli import export_main; "
                        "sys.exit(export_main(sys.argv[1:]))", "--model", str(model), "--output", str(engine),
                        "--fp16"], check=True)


def _device_used_mb() -> float:
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return (total - free) / 2**20


def measure(variant: str, model: Path, engine: Path, steps: int, pixels: int, reps: int, batch: int) -> dict:
    """One process: cold start (load + first image), then `reps` timed images and 10 UNet calls."""
    import cupy

    from inpaintrt.sample import sample_picture

    cupy.cuda.runtime.setDevice(0)
    cupy.zeros(1)  # the CUDA context, before the baseline
    baseline = _device_used_mb()
    image, mask = sample_picture(pixels, pixels)
    start = time.perf_counter()
    run, unet, sync, extra = (_ours if variant in OURS else _theirs)(variant, model, engine, steps, pixels, image, mask,
                                                                    batch)
    run()
    sync()
    result = {"cold_start_s": time.perf_counter() - start}
    result["end_to_end_s"] = _timed(run, sync, reps)
    result["unet_call_s"] = _timed(unet, sync, 10)
    result["device_memory_mb"] = _device_used_mb() - baseline
    result.update(extra())
    return result


def _timed(call, sync, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ours(variant, model, engine, steps, pixels, image, mask, batch):
    import cupy
    import numpy as np
    import warnings

    from inpaintrt import Engine

    e = Engine.load(engine, backend="ort-cuda", cuda_graph=variant == "ort-cuda-graph")
    h = pixels // 8
    unet = {}
    for t in e.manifest["components"]["unet"]["inputs"]:
        dims = {"batch": 2 * batch, "latent_height": h, "latent_width": h}
        shape = [dims.get(d, d) for d in t["shape"]]
        unet[t["name"]] = cupy.full(shape, 500 if t["name"] == "timestep" else 0, t["dtype"])
    unet["sample"] = cupy.asarray(np.random.default_rng(0).standard_normal(unet["sample"].shape, dtype=np.float32))
    caught = []

    def run():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            e.inpaint(image, mask, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                      height=pixels, width=pixels, num_images_per_prompt=batch, generator=0, progress=False)
        caught.extend(str(x.message) for x in w)

    sync = cupy.cuda.Device().synchronize
    extra = lambda: {"fp32_decode_fallbacks": sum("decoding again with the fp32 graph" in m for m in caught),
                     "precision": {c: v.get("cuda", v.get("fp16", {})).get("precision", "fp32")
                                   for c, v in e.manifest["components"].items()},
                     "fused": e.manifest["components"]["unet"].get("cuda", {}).get("fused")}
    return run, lambda: e.sessions["unet"].run(unet), sync, extra


def _theirs(variant, model, engine, steps, pixels, image, mask, batch):
    import diffusers
    import torch

    torch.set_grad_enabled(False)
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        str(model), torch_dtype=torch.float16, safety_checker=None, requires_safety_checker=False).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    h = pixels // 8
    x = torch.randn(2 * batch, pipe.unet.config.in_channels, h, h, device="cuda", dtype=torch.float16)
    emb = torch.zeros(2 * batch, 77, pipe.unet.config.cross_attention_dim, device="cuda", dtype=torch.float16)
    t = torch.full((2 * batch,), 500, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    run = lambda: pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, height=pixels,
                       width=pixels, num_images_per_prompt=batch, num_inference_steps=steps,
                       generator=torch.Generator("cuda").manual_seed(0))
    extra = lambda: {"torch_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                     "attention": type(next(iter(pipe.unet.attn_processors.values()))).__name__}
    return run, lambda: pipe.unet(x, t, encoder_hidden_states=emb), torch.cuda.synchronize, extra


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def accuracy(model: Path, engine: Path, steps: int, pixels: int, batch: int) -> dict:
    """Ours (fp16 and fp32 graphs on ort-cuda) and diffusers fp16 against diffusers fp32, all on the GPU with
    the same numpy-replayed noise (inpaintrt.export.replay): PSNR of the np images, and max abs error."""
    import diffusers
    import numpy as np
    import torch

    from inpaintrt import Engine
    from inpaintrt.export.replay import numpy_randn
    from inpaintrt.sample import sample_picture

    image, mask = sample_picture(pixels, pixels)
    args = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, height=pixels, width=pixels,
                num_inference_steps=steps, num_images_per_prompt=batch, output_type="np")
    images = {}
    for dtype in (torch.float32, torch.float16):
        pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
            str(model), torch_dtype=dtype, safety_checker=None, requires_safety_checker=False).to("cuda")
        pipe.set_progress_bar_config(disable=True)
        with numpy_randn(0), torch.inference_mode():
            images[f"diffusers-{str(dtype)[-7:]}"] = pipe(**args).images
        del pipe
        torch.cuda.empty_cache()
    rest = {k: v for k, v in args.items() if k not in ("image", "mask_image")}
    for precision in ("fp16", "fp32"):
        e = Engine.load(engine, backend="ort-cuda", precision=precision)
        images[f"ours-{precision}"] = e.inpaint(image, mask, generator=0, progress=False, **rest).images
        del e
    reference = images.pop("diffusers-float32")
    return {name: {"psnr_db_vs_diffusers_fp32": psnr(found, reference),
                   "max_abs_vs_diffusers_fp32": float(np.abs(found - reference).max())}
            for name, found in images.items()}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_info() -> dict:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    try:  # nvidia-smi's own line: name, driver, memory
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        smi = None
    return {"name": name, "nvidia_smi": smi, "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_gb": round(props["totalGlobalMem"] / 2**30, 1),
            "driver": cupy.cuda.runtime.driverGetVersion(), "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}


def _commit() -> str | None:
    """The commit measured: INPAINTRT_COMMIT when set (a copied tree's .git can be stale), else git's."""
    import os

    if os.environ.get("INPAINTRT_COMMIT"):
        return os.environ["INPAINTRT_COMMIT"]
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        found = ""
    return found or None


def summarize(runs: dict, args, engine: Path) -> dict:
    measures = {v: {m: statistics.median(r[m] for r in rs) for m in MEASURES} for v, rs in runs.items()}
    theirs = measures["diffusers-fp16"]
    ratios = {v: {m: theirs[m] / measures[v][m] for m in MEASURES} for v in runs if v in OURS}
    packages = ("inpaintrt", "onnxruntime-gpu", "onnxruntime", "cupy-cuda12x", "cupy-cuda13x", "torch", "diffusers",
                "transformers")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(), "python": platform.python_version(),
        "versions": {p: v for p in packages if (v := _version(p))},
        "model": "sd15-inpainting architecture, random weights", "engine": str(engine), "pixels": args.pixels,
        "commit": _commit(), "batch": args.batch, "steps": args.steps, "guidance_scale": 7.5, "reps_per_process": args.reps,
        "processes_per_variant": args.processes, "median": measures, "ratio_diffusers_over_ours": ratios, "runs": runs,
    }


def table(report: dict) -> str:
    d = report["device"]
    ours = [v for v in report["median"] if v in OURS]
    rows = [f"{report['model']}, {report['pixels']}x{report['pixels']}, batch {report['batch']}, {report['steps']} "
            "steps, guidance 7.5 on "
            f"{d['name']} (cc {d['compute_capability']})", "",
            "| measure | " + " | ".join(report["median"]) + " | " + " | ".join(f"diffusers / {v}" for v in ours) + " |",
            "|---" * (1 + len(report["median"]) + len(ours)) + "|"]
    for m in MEASURES:
        values = " | ".join(f"{report['median'][v][m]:.3f}" for v in report["median"])
        ratios = " | ".join(f"{report['ratio_diffusers_over_ours'][v][m]:.2f}x" for v in ours)
        rows.append(f"| {m} | {values} | {ratios} |")
    for name, found in report.get("accuracy", {}).items():
        rows.append(f"\n{name} vs diffusers fp32 (same noise): PSNR {found['psnr_db_vs_diffusers_fp32']:.2f} dB, "
                    f"max abs {found['max_abs_vs_diffusers_fp32']:.2e}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
