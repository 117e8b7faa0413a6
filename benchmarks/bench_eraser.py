"""The eraser engines (big-lama, MI-GAN 512) against their own torch modules, measured in one run.

    python benchmarks/bench_eraser.py                      # CPU: big-lama 512² and 1024², MI-GAN 512 (~7 min here)
    python benchmarks/bench_eraser.py --cases lama-512 --rounds 1       # one case, quicker
    python benchmarks/bench_eraser.py --gpu                # a CUDA machine: torch CUDA against ort-cuda, same cases

The models are the real architectures with random weights (time is what is measured): big-lama's generator
(export/eraser_lama.py `LamaGenerator()`: ngf 64, 3 downsamplings, 18 FFC blocks, ratio 0.75) and MI-GAN's
official 512 generator (export/eraser_migan.py `MiganGenerator(512)`). Their state dicts are saved with
torch.save and exported with export_eraser (`inpaint-export --model X --output DIR --kind lama|migan` does the
same) into --work, once: a later run reuses what is there (--gpu exports its own `--fp16` copies beside them).

Each measurement is one fresh process (so its peak RSS, /proc/self/status VmHWM, is its own): load, one
warm-up call, then --reps timed calls; --rounds processes per side, the sides alternating, so whatever else
runs on the machine falls on each alike. The median and the minimum over all of a side's timed calls are
reported, with the busiest 1-minute load average its processes saw. Sides on the CPU:
  torch            LamaGraph / MiganGraph(generator)(image, mask) under torch.no_grad (LaMa: torch's own FFT)
  ort-fp32         Engine.load(dir, backend="ort-cpu").inpaint(image, mask, hd_strategy="original")
  openvino-fp32    the same with backend="openvino"
  openvino-bf16    backend="openvino", precision="bf16": only where the CPU has native bf16 (avx512_bf16 / amx_bf16)
with the same number of threads (--threads, default every core: torch.set_num_threads, INPAINTRT_THREADS for
ONNX Runtime and OpenVINO). The picture is the quick-start sample (inpaintrt.sample) at the case's size, the
mask an ellipse over 15 % of it. The engine's call is the whole public call (PIL in, output_type="np" out:
padding, the forward pass, the composite); torch's is the forward pass alone. `engine / torch` divides their
medians (below 1: the engine is faster). `max_abs_vs_torch` compares each composited output with torch's.

One eraser call against one SD 1.5 image: the SD figures are not measured here; they are the ones
docs/benchmarks.md reports for this machine (SD_IMAGE below, each with its section), divided into.

--gpu: torch on CUDA in fp32 and fp16 (autocast) against ort-cuda on the fp16 graphs and (precision="fp32")
the fp32 ones; device memory instead of RSS (ort-cuda: the device memory in use after the calls less what the
process held before loading, cupy's memGetInfo; torch: max_memory_allocated, which leaves out its cache).
On the lent GPU machine, after `bash benchmarks/gpu_machine.sh install`:
`PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/bench_eraser.py --gpu` (the CUDA and cuDNN
libraries of the NVIDIA pip packages are put on LD_LIBRARY_PATH for the children, as gpu_machine.sh does).
Without a CUDA device it says so and measures nothing (exit status 0).

Prints a markdown table and writes --json (default WORK/bench-eraser-cpu.json or -gpu.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

# case -> (model, side of the square picture)
CASES = {"lama-512": ("lama", 512), "lama-1024": ("lama", 1024), "migan-512": ("migan", 512)}
CPU_SIDES = ("torch", "ort-fp32", "openvino-fp32", "openvino-bf16")
GPU_SIDES = ("torch-cuda", "torch-cuda-fp16", "ort-cuda-fp16", "ort-cuda-fp32")
REFERENCE = {"cpu": "torch", "gpu": "torch-cuda"}
TITLES = {"lama": "big-lama", "migan": "MI-GAN"}
HOLE = 0.15  # the mask's share of the picture
# One SD 1.5 image as docs/benchmarks.md measured it (not measured here): the precision's figure on that machine
SD_IMAGE = {
    "cpu": {
        "fp32": (65.1, "docs/benchmarks.md, 'CPU, SD 1.5 size': inpaintrt fp32 (ONNX Runtime), end to end, one "
                       "512x512 image, 4 steps (PNDM: 5 UNet calls), guidance 7.5, this 2-core AMD EPYC machine"),
        "bf16": (32.1, "docs/benchmarks.md, 'CPU bf16 (OpenVINO)': inpaintrt bf16 (OpenVINO), end to end, the same "
                       "image and settings"),
    },
    "gpu": {
        "fp16": (0.634, "docs/benchmarks.md, 'GPU (ONNX Runtime CUDA) on an H100': inpaintrt ort-cuda fp16 without "
                        "CUDA graph, end to end, one 512x512 image, 50 steps, guidance 7.5, H100 80GB HBM3"),
        "fp32": (0.634, "the same fp16 figure (no fp32 SD 1.5 image was timed on the GPU)"),
    },
}


def side_precision(side: str) -> str:
    return "bf16" if side.endswith("bf16") else "fp16" if side.endswith("fp16") else "fp32"


# --- building -------------------------------------------------------------------------------------------------

def prepare(work: Path, models: set[str], fp16: bool, tiny: bool = False, log=print) -> dict:
    """{model: (generator state dict file, engine directory)} under `work`, each made where missing (`tiny`:
    narrow copies of the same layouts, a smoke run)."""
    import torch

    from inpaintrt.export.eraser import export_eraser
    from inpaintrt.export.eraser_lama import LamaGenerator
    from inpaintrt.export.eraser_migan import MiganGenerator

    work.mkdir(parents=True, exist_ok=True)
    made, found = {}, {}
    for model in sorted(models):
        stem = f"tiny-{model}" if tiny else model
        weights = work / f"{stem}-generator.pt"
        engine = work / f"{stem}-engine{'-fp16' if fp16 else ''}"
        if not weights.exists():
            torch.manual_seed(0)
            if tiny:
                generator = (LamaGenerator(ngf=8, n_blocks=2) if model == "lama"
                             else MiganGenerator(512, {2 ** i: 8 for i in range(2, 10)}))
            else:
                generator = LamaGenerator() if model == "lama" else MiganGenerator(512)
            torch.save(generator.eval().state_dict(), weights)
            made[f"{model}_parameters"] = sum(p.numel() for p in generator.parameters())
        if not (engine / "manifest.json").exists():
            started = time.perf_counter()
            export_eraser(weights, engine, kind=model, fp16=fp16, log=lambda line: log(f"  {line}"))
            made[f"{model}_export_s"] = round(time.perf_counter() - started, 1)
            log(f"exported {engine} in {made[f'{model}_export_s']} s")
        found[model] = (weights, engine)
    return {"paths": found, "made": made}


def picture(side: int):
    """(PIL picture, PIL mask, float HxWx3 pixels in [0, 1], bool HxW hole): the quick-start sample, an ellipse
    over HOLE of it."""
    import numpy as np
    from PIL import Image, ImageDraw

    from inpaintrt.sample import sample_picture

    image, _ = sample_picture(side, side)
    radius = (HOLE / np.pi) ** 0.5 * side
    cx, cy = 0.58 * side, 0.60 * side
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    return image, mask, np.asarray(image, np.float32) / 255.0, np.asarray(mask) >= 128


# --- one process ------------------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(job: dict) -> dict:
    """One fresh process: load, a warm-up call, `reps` timed calls; its output saved for the comparison."""
    import numpy as np

    side, model, size = job["side"], job["model"], job["size"]
    load_before = os.getloadavg()[0]  # other jobs on the machine show here
    image, mask, pixels, hole = picture(size)
    gpu = side in GPU_SIDES
    start = time.perf_counter()
    if side.startswith("torch"):
        call, sync, host, memory = _torch(job, pixels, hole, gpu)
    else:
        call, sync, host, memory = _engine(job, image, mask, gpu)
    loaded = time.perf_counter() - start

    def timed():
        begin = time.perf_counter()
        out = call()
        sync()
        return time.perf_counter() - begin, out

    first, out = timed()
    times = [timed()[0] for _ in range(job["reps"])]
    np.save(job["output"], np.asarray(host(out), np.float32))
    result = {"load_s": loaded, "first_call_s": first, "median_s": statistics.median(times), "times_s": times,
              "hole_fraction": float(hole.mean()),
              "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    result.update(memory())
    return result


def _torch(job: dict, pixels, hole, gpu: bool):
    import contextlib

    import numpy as np
    import torch

    from inpaintrt.export.eraser import load_eraser
    from inpaintrt.export.eraser_lama import LamaGraph
    from inpaintrt.export.eraser_migan import MiganGraph

    torch.set_grad_enabled(False)
    if not gpu:
        torch.set_num_threads(job["threads"])
    device = "cuda" if gpu else "cpu"
    _, generator = load_eraser(job["weights"], job["model"])
    graph = (LamaGraph if job["model"] == "lama" else MiganGraph)(generator).eval().to(device)
    image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])).to(device)
    mask = torch.from_numpy(hole[None, None].astype(np.float32)).to(device)
    cast = (lambda: torch.autocast("cuda", torch.float16)) if job["side"].endswith("fp16") else contextlib.nullcontext

    def call():  # the forward pass alone
        with cast():
            return graph(image, mask)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def host(fill):  # composited as the engine does: the clamped fill where the mask is, the picture elsewhere
        return torch.where(mask.bool(), fill.float().clamp(0, 1), image)[0].permute(1, 2, 0).cpu().numpy()

    def memory():
        found = {"peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}
        if gpu:
            found["device_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return found

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    return call, sync, host, memory


def _engine(job: dict, image, mask, gpu: bool):
    from inpaintrt import Engine

    side = job["side"]
    baseline = _device_used_mb() if gpu else None
    if gpu:
        engine = Engine.load(job["engine"], backend="ort-cuda", precision=side_precision(side))
    else:
        backend = "ort-cpu" if side.startswith("ort") else "openvino"
        engine = Engine.load(job["engine"], backend=backend, precision="bf16" if side.endswith("bf16") else None)
    assert engine.precision == side_precision(side), (side, engine.backend, engine.precision)

    def call():
        return engine.inpaint(image, mask, hd_strategy="original", output_type="np", progress=False).images[0]

    def memory():
        found = {"peak_rss_mb": peak_rss_mb(), "backend": engine.backend, "precision": engine.precision}
        if gpu:
            found["device_used_mb"] = _device_used_mb() - baseline
        return found

    # the call returns host arrays: it has waited for the device
    return call, lambda: None, lambda out: out, memory


def _device_used_mb() -> float:
    import cupy

    cupy.cuda.runtime.setDevice(0)
    free, total = cupy.cuda.runtime.memGetInfo()
    return (total - free) / 2**20


# --- the run ------------------------------------------------------------------------------------------------------

def cpu_bf16() -> tuple[bool, str]:
    """(whether OpenVINO bf16 can be measured here, why not)."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False, "not measured: no bf16 on this CPU (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False, "not measured: OpenVINO is not installed (pip install 'inpaintrt[openvino]')"
    return True, ""


def gpu_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    try:
        from inpaintrt.engine.backends import BackendError
        from inpaintrt.engine.ort_cuda import load_ort_cuda

        load_ort_cuda()
    except BackendError as e:
        return f"ort-cuda cannot start ({e})"
    return None


def child_env(gpu: bool, threads: int) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not gpu:
        env["INPAINTRT_THREADS"] = str(threads)
        return env
    # onnxruntime-gpu finds CUDA and cuDNN through LD_LIBRARY_PATH: the NVIDIA pip packages' (gpu_machine.sh's way)
    nvidia = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    libs = sorted({str(p.parent) for p in nvidia.rglob("lib*.so*")}) if nvidia.is_dir() else []
    env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
    return env


def versions() -> dict:
    found = {}
    for name in ("onnxruntime", "onnxruntime-gpu", "openvino", "torch", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    found = {"cpu": cpu, "cores": os.cpu_count()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        if smi.returncode == 0 and smi.stdout.strip():
            found["gpu"] = smi.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def merged(case: str, side: str, processes: list[dict]) -> dict:
    """One table row from a side's processes: the median and minimum over all their timed calls, the largest
    peak memory."""
    failed = [p for p in processes if "error" in p]
    if failed:
        return {"case": case, "side": side, "error": failed[0]["error"], "processes": processes}
    times = [t for p in processes for t in p["times_s"]]
    row = {"case": case, "side": side, "median_s": statistics.median(times), "min_s": min(times), "calls": len(times),
           "peak_rss_mb": max(p["peak_rss_mb"] for p in processes), "processes": processes}
    for key in ("device_used_mb", "device_peak_allocated_mb"):
        if key in processes[0]:
            row[key] = max(p[key] for p in processes)
    return row


def compare(work: Path, rows: list[dict], where: str, stem: str = "") -> None:
    """max |engine - torch| of each composited output (the same case's reference side)."""
    import numpy as np

    for row in rows:
        if "error" in row or row["side"] == REFERENCE[where]:
            continue
        reference = work / f"out-{stem}{row['case']}-{REFERENCE[where]}.npy"
        if reference.exists():
            row["max_abs_vs_torch"] = float(np.abs(np.load(work / f"out-{stem}{row['case']}-{row['side']}.npy")
                                                   - np.load(reference)).max())


def table(rows: list[dict], where: str, calls: int) -> str:
    """Medians over every timed call (`calls` per side), minima beside them, the ratios of both; the busiest
    1-minute load average any of the side's processes saw (2 cores: above ~2 someone else was running)."""
    sd = SD_IMAGE[where]
    memory = "peak RSS, MB" if where == "cpu" else "device memory, MB"
    lines = [f"| case | side | median s ({calls} calls) | min s | engine / torch (medians) | engine / torch (minima) | "
             f"one call / one SD 1.5 image | {memory} | max abs vs torch | load average |", "|---" * 10 + "|"]
    reference = {r["case"]: r for r in rows if r["side"] == REFERENCE[where] and "error" not in r}
    for row in rows:
        model, size = CASES[row["case"]]
        label = f"{TITLES[model]} {size}²"
        if "error" in row:
            lines.append(f"| {label} | {row['side']} | {row['error']} |" + " |" * 7)
            continue
        ref = reference.get(row["case"])
        engine = row["side"] not in (REFERENCE[where], "torch-cuda-fp16")
        ratios = [f"{row[m] / ref[m]:.2f}" if engine and ref else "ref" if row is ref else ""
                  for m in ("median_s", "min_s")]
        figure = sd.get(side_precision(row["side"]))
        per_image = f"{row['median_s'] / figure[0]:.3f}" if engine and figure else ""
        used = row.get("peak_rss_mb") if where == "cpu" else row.get("device_used_mb",
                                                                      row.get("device_peak_allocated_mb"))
        error = row.get("max_abs_vs_torch")
        load = max(max(p["load_average"]) for p in row["processes"])
        error = "" if error is None else f"{error:.1e}"
        lines.append(f"| {label} | {row['side']} | {row['median_s']:.3f} | {row['min_s']:.3f} | {ratios[0]} | "
                     f"{ratios[1]} | {per_image} | {used:.0f} | {error} | {load:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-out/eraser"),
                        help="folder for the generators' weights, the engines and the outputs (reused when present)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--sides", help="comma-separated (default: all that can run here): "
                        f"CPU {', '.join(CPU_SIDES)}; --gpu {', '.join(GPU_SIDES)}")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per process after one warm-up (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per side, alternating the sides (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of every side (default: all)")
    parser.add_argument("--gpu", action="store_true", help="torch CUDA against ort-cuda (a CUDA machine)")
    parser.add_argument("--build-only", action="store_true", help="make what --work lacks, measure nothing")
    parser.add_argument("--tiny", action="store_true", help="narrow models of the same layouts: a smoke run of seconds")
    parser.add_argument("--json", type=Path, help="the report (default WORK/bench-eraser-cpu.json or -gpu.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    where = "gpu" if args.gpu else "cpu"
    cases = args.cases.split(",")
    sides = args.sides.split(",") if args.sides else list(GPU_SIDES if args.gpu else CPU_SIDES)
    allowed = GPU_SIDES if args.gpu else CPU_SIDES
    if set(cases) - set(CASES) or set(sides) - set(allowed):
        parser.error(f"--cases: of {', '.join(CASES)}; --sides: of {', '.join(allowed)}")
    notes = {}
    if args.gpu:
        missing = gpu_missing()
        if missing:
            print(f"bench_eraser.py --gpu: skipped, nothing measured: no CUDA here ({missing}). Run it on a machine "
                  "with an NVIDIA GPU, torch with CUDA, onnxruntime-gpu and cupy; the CPU benchmark is the "
                  "same command without --gpu.", file=sys.stderr)
            return 0
    elif "openvino-bf16" in sides:
        ok, why = cpu_bf16()
        if not ok:
            sides.remove("openvino-bf16")
            notes["openvino-bf16"] = why
            print(f"openvino-bf16: {why}", file=sys.stderr)
    started = time.perf_counter()
    built = prepare(args.work, {CASES[c][0] for c in cases}, fp16=args.gpu, tiny=args.tiny)
    if args.build_only:
        print(json.dumps(built["made"]))
        return 0
    load_before = os.getloadavg()  # other jobs on the machine show here
    env = child_env(args.gpu, args.threads)
    rows, stem = [], "tiny-" if args.tiny else ""
    for case in cases:
        model, size = CASES[case]
        weights, engine = built["paths"][model]
        runs = {side: [] for side in sides}
        for round_ in range(args.rounds):  # alternate: what else runs on the machine falls on every side alike
            for side in sides:
                if runs[side] and "error" in runs[side][-1]:
                    continue
                job = {"side": side, "model": model, "size": size, "weights": str(weights), "engine": str(engine),
                       "reps": args.reps, "threads": args.threads,
                       "output": str(args.work / f"out-{stem}{case}-{side}.npy")}
                result = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True,
                                        text=True, env=env)
                if result.returncode:
                    tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
                    runs[side].append({"error": f"failed: {tail[:200]}"})
                    print(f"{case} {side} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
                    continue
                runs[side].append(json.loads(result.stdout.strip().splitlines()[-1]))
                calls = ", ".join(f"{t:.3f}" for t in runs[side][-1]["times_s"])
                print(f"{case} {side} process {round_ + 1}: calls {calls} s, load average "
                      f"{runs[side][-1]['load_average']}", file=sys.stderr)
        rows += [merged(case, side, processes) for side, processes in runs.items()]
    compare(args.work, rows, where, stem)
    report = {"where": where, "tiny": args.tiny, "cases": cases, "reps": args.reps, "rounds": args.rounds,
              "threads": args.threads, "hole_fraction": HOLE,
              "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
              "machine": machine(), "versions": versions(), "built": built["made"], "notes": notes,
              "sd15_image_s": {p: {"seconds": s, "source": source} for p, (s, source) in SD_IMAGE[where].items()},
              "total_s": round(time.perf_counter() - started, 1), "rows": rows}
    path = args.json or args.work / f"bench-eraser-{stem}{where}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{machine()['cpu']}, {args.threads} threads; {where}; mask {HOLE:.0%} of the picture, "
          "hd_strategy='original'; "
          f"1-min load average before/after {report['load_average_before_after']}")
    print(table(rows, where, args.reps * args.rounds))
    for side, why in notes.items():
        print(f"{side}: {why}")
    print("SD 1.5 image (not measured here): " + "; ".join(f"{p} {s} s ({source})"
                                                           for p, (s, source) in SD_IMAGE[where].items()))
    print(f"\nJSON: {path} (total {report['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
