"""inpaintrt (ort-cuda, fp16) vs diffusers (fp16) on one CUDA GPU, same model, measured in one run.

    python benchmarks/bench_gpu.py                       # SD 1.5-inpainting-sized model, 512x512, 50 steps
    python benchmarks/bench_gpu.py --pixels 1024 --cuda-option prefer_nhwc=1 --label nhwc
    python benchmarks/bench_gpu.py --family sdxl         # SDXL-inpainting-sized model, 1024x1024, 30 steps
    python benchmarks/bench_gpu.py --variants ort-cuda-graph --batch 4 --no-accuracy   # ours only

It needs onnxruntime-gpu, cupy, torch with CUDA and, for the diffusers side and the export, diffusers +
transformers; on the lent GPU machine `benchmarks/gpu_machine.sh` installs the carried wheels and runs
it (its `sweep` mode runs the provider-option, size and batch sweeps in one call).

The model is the SD 1.5 (or SDXL) inpainting architecture with random weights (inpaintrt.export.random_models),
saved and exported with `inpaint-export --fp16` (the CUDA-optimized fp16 graphs; the SDXL VAE with
force_upcast stays fp32) unless --model / --engine name existing ones. Variants, each in a fresh
process, alternated --processes times:
  ort-cuda-graph   Engine.load(backend="ort-cuda", cuda_graph=True, cuda_options=--cuda-option ...)
  ort-cuda         Engine.load(backend="ort-cuda", cuda_options=...)
  diffusers-fp16   StableDiffusion(XL)InpaintPipeline, torch_dtype=float16, on cuda
Per process: cold start (load + first image), then --reps timed images (medians) with each stage's GPU
time (CUDA events around every text encoder, VAE and UNet call; `other` is the rest of the image's
wall time: scheduler math, copies, launch gaps), the UNet call at the guided batch (median of 10),
the device memory in use after loading and after the runs less what the process held before
(allocators keep their peak: ONNX Runtime's arena, cupy's and torch's pools); torch's own
max_memory_allocated too. Writes benchmarks/results/gpu-<date>.json naming the device, one key per
workload (gpu_report.workload_key), and prints a table with the ratios diffusers / ours.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_report import PEER, STAGES, psnr, summarize, table, workload_key  # noqa: E402

PROMPT, NEGATIVE = "a wooden bench in a sunny park", "blurry"
VARIANTS = ("ort-cuda-graph", "ort-cuda", PEER)
OURS = ("ort-cuda-graph", "ort-cuda")
RESULTS = Path(__file__).parent / "results"
FAMILY_DEFAULTS = {"sd15": dict(pixels=512, steps=50), "sdxl": dict(pixels=1024, steps=30)}


def parse(argv=None) -> argparse.Namespace:
    from inpaintrt.engine.cuda_options import parse_cuda_option

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-out", help="folder for the model and the engine (default bench-out)")
    parser.add_argument("--family", choices=tuple(FAMILY_DEFAULTS), default="sd15",
                        help="sd15 (default) or sdxl: the random-weight architecture built when --model is not given")
    parser.add_argument("--model", help="an existing diffusers folder (default: build the random-weight model)")
    parser.add_argument("--engine", help="an existing engine directory exported with --fp16 (default: export one)")
    parser.add_argument("--pixels", type=int, help="image side, a multiple of 8 (default 512; SDXL 1024)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 50; SDXL 30)")
    parser.add_argument("--batch", type=int, default=1, help="images per prompt (default 1)")
    parser.add_argument("--cuda-option", action="append", default=[], metavar="NAME=VALUE",
                        help="an ONNX Runtime CUDA provider option for ours (engine/cuda_options.py; repeatable)")
    parser.add_argument("--label", default="", help="suffix of the workload's key in the results file")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                        help="skip the accuracy run (ours fp16 / fp32 vs diffusers fp32 with the same noise)")
    parser.add_argument("--reps", type=int, default=3, help="timed images per process (default 3)")
    parser.add_argument("--processes", type=int, default=1, help="fresh processes per variant (default 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default all; ratios need {PEER})")
    parser.add_argument("--results", default=str(RESULTS), help="folder for gpu-<date>.json (default benchmarks/results)")
    parser.add_argument("--child", choices=VARIANTS + ("accuracy",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in FAMILY_DEFAULTS[args.family].items():
        setattr(args, name, value if getattr(args, name) is None else getattr(args, name))
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {unknown or 'none given'}; choose from {', '.join(VARIANTS)}")
    if args.accuracy and not any(v in OURS for v in args.variants):
        parser.error("the accuracy run compares ours with diffusers: add an ort-cuda variant or pass --no-accuracy")
    if args.pixels < 64 or args.pixels % 8:
        parser.error(f"--pixels {args.pixels}: use a multiple of 8 of at least 64")
    for name in ("steps", "batch", "reps", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        args.cuda_options = dict(parse_cuda_option(text) for text in args.cuda_option) or None
    except ValueError as e:
        parser.error(str(e))
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
    try:
        import torch

        if not torch.cuda.is_available():
            reasons.append(f"torch {torch.__version__} sees no CUDA device")
        import diffusers  # noqa: F401
    except ImportError as e:
        reasons.append(f"{e.name} is not installed (the export and the diffusers side need torch and diffusers)")
    return "; ".join(reasons) or None


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out)
    model = Path(args.model) if args.model else out / f"{args.family}-model"
    engine = Path(args.engine) if args.engine else out / f"{args.family}-engine-fp16"
    if args.child == "accuracy":
        print(json.dumps(accuracy(args, model, engine)))
        return 0
    if args.child:
        print(json.dumps(measure(args.child, args, model, engine)))
        return 0
    missing = gpu_missing(args.variants)
    if missing:
        print(f"bench_gpu.py needs a CUDA GPU with the GPU extras installed; not measuring: {missing}", file=sys.stderr)
        return 2
    prepare(args.family, model, engine, out)
    runs = {v: [] for v in args.variants}

    def child(kind: str) -> dict:
        command = [sys.executable, __file__, "--child", kind, "--out", str(out), "--model", str(model), "--engine",
                   str(engine), "--family", args.family, "--steps", str(args.steps), "--pixels", str(args.pixels),
                   "--batch", str(args.batch), "--reps", str(args.reps), "--variants", ",".join(args.variants)]
        command += [f"--cuda-option={text}" for text in args.cuda_option]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{kind} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    for _ in range(args.processes):
        for variant in args.variants:  # alternate, each in a fresh process
            runs[variant].append(child(variant))
    report = summarize(runs, args, engine, OURS)
    if args.accuracy:
        report["accuracy"] = child("accuracy")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"gpu-{datetime.date.today().isoformat()}.json"
    everything = json.loads(path.read_text()) if path.exists() else {}  # one file per day, a key per workload
    everything[workload_key(args.family, args.pixels, args.batch, args.label)] = report
    path.write_text(json.dumps(everything, indent=2) + "\n")
    print(table(report))
    print(f"\nJSON: {path}")
    return 0


def prepare(family: str, model: Path, engine: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (model / "model_index.json").exists():
        build = f"family='sd1', size='sd15'" if family == "sd15" else "family='sdxl', size='sdxl'"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from inpaintrt.export.random_models import save_pipeline; "
                        f"save_pipeline({str(model)!r}, {build}, in_channels=9, seed=0)"], check=True)
        print(f"built {model} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not (engine / "manifest.json").exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from inpaintrt.cli import export_main; "
                        "sys.exit(export_main(sys.argv[1:]))", "--model", str(model), "--output", str(engine),
                        "--fp16"], check=True)
        print(f"exported {engine} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _device_used_mb() -> float:
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return (total - free) / 2**20


def measure(variant: str, args, model: Path, engine: Path) -> dict:
    """One process: cold start (load + first image), then `reps` timed images with their stages, 10 UNet calls."""
    import cupy

    from inpaintrt.sample import sample_picture

    cupy.cuda.runtime.setDevice(0)
    cupy.zeros(1)  # the CUDA context, before the baseline
    baseline = _device_used_mb()
    image, mask = sample_picture(args.pixels, args.pixels)
    start = time.perf_counter()
    side = _ours(variant, args, engine, image, mask) if variant in OURS else _theirs(args, model, image, mask)
    loaded = _device_used_mb() - baseline
    side.run()
    side.sync()
    result = {"cold_start_s": time.perf_counter() - start, "device_memory_after_load_mb": loaded}
    side.stages.take()  # the first image's shapes, searches and captures are not a stage's steady cost
    result["end_to_end_s"] = _timed(side.run, side.sync, args.reps)
    found = side.stages.take()
    other = 1000 * result["end_to_end_s"] - sum(found.values()) / args.reps
    result["stages_ms"] = {s: found.get(s, 0.0) / args.reps for s in STAGES[:-1]} | {"other": other}
    result["unet_call_s"] = _timed(side.unet, side.sync, 10)
    result["device_memory_mb"] = _device_used_mb() - baseline
    result.update(side.extra())
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


class StageTimes:
    """GPU time per stage from CUDA events recorded around each component call (no host waits)."""

    def __init__(self, make_event, elapsed_ms):
        self.make_event, self.elapsed_ms, self.pairs = make_event, elapsed_ms, []

    def around(self, stage: str, call, record):
        def timed(*a, **k):
            begin, end = self.make_event(), self.make_event()
            record(begin)
            out = call(*a, **k)
            record(end)
            self.pairs.append((stage, begin, end))
            return out
        return timed

    def take(self) -> dict[str, float]:
        """{stage: ms} since the last take; call after a synchronize."""
        totals: dict[str, float] = {}
        for stage, begin, end in self.pairs:
            totals[stage] = totals.get(stage, 0.0) + self.elapsed_ms(begin, end)
        self.pairs = []
        return totals


def _stage(component: str) -> str:
    return "text_encoder" if component.startswith("text_encoder") else component


class _Side:
    def __init__(self, run, unet, sync, extra, stages):
        self.run, self.unet, self.sync, self.extra, self.stages = run, unet, sync, extra, stages


def _ours(variant, args, engine, image, mask) -> _Side:
    import warnings

    import cupy
    import numpy as np

    from inpaintrt import Engine

    e = Engine.load(engine, backend="ort-cuda", cuda_graph=variant == "ort-cuda-graph", cuda_options=args.cuda_options)
    stages = StageTimes(cupy.cuda.Event, cupy.cuda.get_elapsed_time)
    for name, executor in e.sessions.items():
        stream = getattr(executor, "stream", None) or getattr(getattr(executor, "fp16", None), "stream", None)
        executor.run = stages.around(_stage(name), executor.run, lambda event, s=stream: event.record(s))
    h = args.pixels // 8
    unet = {}
    for t in e.manifest["components"]["unet"]["inputs"]:
        dims = {"batch": 2 * args.batch, "latent_height": h, "latent_width": h, "text_length": 77}  # one chunk
        shape = [dims.get(d, d) for d in t["shape"]]
        unet[t["name"]] = cupy.full(shape, 500 if t["name"] == "timestep" else 0, t["dtype"])
    unet["sample"] = cupy.asarray(np.random.default_rng(0).standard_normal(unet["sample"].shape, dtype=np.float32))
    caught = []

    def run():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            e.inpaint(image, mask, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                      height=args.pixels, width=args.pixels, num_images_per_prompt=args.batch, generator=0,
                      progress=False)
        caught.extend(str(x.message) for x in w)

    extra = lambda: {"fp32_decode_fallbacks": sum("decoding again with the fp32 graph" in m for m in caught),
                     "precision": {c: v.get("cuda", v.get("fp16", {})).get("precision", "fp32")
                                   for c, v in e.manifest["components"].items()},
                     "provider_options": getattr(e.sessions["unet"], "provider_options", None),
                     "fused": e.manifest["components"]["unet"].get("cuda", {}).get("fused")}
    return _Side(run, lambda: e.sessions["unet"].run(unet), cupy.cuda.Device().synchronize, extra, stages)


def _pipeline_class(family: str):
    import diffusers

    return diffusers.StableDiffusionXLInpaintPipeline if family == "sdxl" else diffusers.StableDiffusionInpaintPipeline


def _load_theirs(family: str, model: Path, dtype):
    extra = {} if family == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    pipe = _pipeline_class(family).from_pretrained(str(model), torch_dtype=dtype, **extra).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _theirs(args, model, image, mask) -> _Side:
    import torch

    torch.set_grad_enabled(False)
    pipe = _load_theirs(args.family, model, torch.float16)
    stages = StageTimes(lambda: torch.cuda.Event(enable_timing=True), lambda a, b: a.elapsed_time(b))
    for name in ("text_encoder", "text_encoder_2", "unet"):
        if getattr(pipe, name, None) is not None:
            module = getattr(pipe, name)
            module.forward = stages.around(_stage(name), module.forward, lambda event: event.record())
    pipe.vae.encode = stages.around("vae_encoder", pipe.vae.encode, lambda event: event.record())
    pipe.vae.decode = stages.around("vae_decoder", pipe.vae.decode, lambda event: event.record())
    h, n = args.pixels // 8, 2 * args.batch
    x = torch.randn(n, pipe.unet.config.in_channels, h, h, device="cuda", dtype=torch.float16)
    emb = torch.zeros(n, 77, pipe.unet.config.cross_attention_dim, device="cuda", dtype=torch.float16)
    added = None
    if args.family == "sdxl":
        pooled = pipe.text_encoder_2.config.projection_dim
        added = {"text_embeds": torch.zeros(n, pooled, device="cuda", dtype=torch.float16),
                 "time_ids": torch.zeros(n, 6, device="cuda", dtype=torch.float16)}
    t = torch.full((n,), 500, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    run = lambda: pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, height=args.pixels,
                       width=args.pixels, num_images_per_prompt=args.batch, num_inference_steps=args.steps,
                       generator=torch.Generator("cuda").manual_seed(0))
    extra = lambda: {"torch_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                     "attention": type(next(iter(pipe.unet.attn_processors.values()))).__name__}
    unet = lambda: pipe.unet(x, t, encoder_hidden_states=emb, added_cond_kwargs=added)
    return _Side(run, unet, torch.cuda.synchronize, extra, stages)


def accuracy(args, model: Path, engine: Path) -> dict:
    """Ours (fp16 and fp32 graphs on ort-cuda) and diffusers fp16 against diffusers fp32, all on the GPU with
    the same numpy-replayed noise (inpaintrt.export.replay): PSNR of the np images, and max abs error."""
    import numpy as np
    import torch

    from inpaintrt import Engine
    from inpaintrt.export.replay import numpy_randn
    from inpaintrt.sample import sample_picture

    image, mask = sample_picture(args.pixels, args.pixels)
    call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask, height=args.pixels,
                width=args.pixels, num_inference_steps=args.steps, num_images_per_prompt=args.batch, output_type="np")
    images = {}
    for dtype in (torch.float32, torch.float16):
        pipe = _load_theirs(args.family, model, dtype)
        with numpy_randn(0), torch.inference_mode():
            images[f"diffusers-{str(dtype)[-7:]}"] = pipe(**call).images
        del pipe
        torch.cuda.empty_cache()
    rest = {k: v for k, v in call.items() if k not in ("image", "mask_image")}
    for precision in ("fp16", "fp32"):
        e = Engine.load(engine, backend="ort-cuda", precision=precision, cuda_options=args.cuda_options)
        images[f"ours-{precision}"] = e.inpaint(image, mask, generator=0, progress=False, **rest).images
        del e
    reference = images.pop("diffusers-float32")
    return {name: {"psnr_db_vs_diffusers_fp32": psnr(found, reference),
                   "max_abs_vs_diffusers_fp32": float(np.abs(found - reference).max())}
            for name, found in images.items()}


if __name__ == "__main__":
    sys.exit(main())
