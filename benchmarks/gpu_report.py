"""What bench_gpu.py writes: the machine, the medians and ratios of one workload, its table, and the
sweep table that compares workloads of one results file (`python benchmarks/gpu_report.py FILE`)."""
from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

MEASURES = ("cold_start_s", "end_to_end_s", "unet_call_s", "device_memory_mb")
PEER = "diffusers-fp16"
STAGES = ("text_encoder", "vae_encoder", "unet", "vae_decoder", "other")  # other: outside the components


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


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


def workload_key(family: str, pixels: int, batch: int, label: str = "") -> str:
    """The results file's key: names containing `512`, `1024` and `sdxl` find their workloads."""
    return f"{'sdxl-' if family == 'sdxl' else ''}{pixels}px-batch{batch}" + (f"-{label}" if label else "")


def summarize(runs: dict, args, engine: Path, ours: tuple[str, ...]) -> dict:
    measures = {v: {m: statistics.median(r[m] for r in rs) for m in MEASURES} for v, rs in runs.items()}
    stages = {v: {s: statistics.median(r["stages_ms"][s] for r in rs) for s in STAGES}
              for v, rs in runs.items() if all("stages_ms" in r for r in rs)}
    theirs = measures.get(PEER)
    ratios = {v: {m: theirs[m] / measures[v][m] for m in MEASURES} for v in runs if v in ours} if theirs else {}
    packages = ("inpaintrt", "onnxruntime-gpu", "onnxruntime", "cupy-cuda12x", "cupy-cuda13x", "torch", "diffusers",
                "transformers")
    model = "sdxl-inpainting" if args.family == "sdxl" else "sd15-inpainting"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(), "python": platform.python_version(),
        "versions": {p: v for p in packages if (v := _version(p))},
        "model": f"{model} architecture, random weights", "engine": str(engine), "pixels": args.pixels,
        "commit": _commit(), "batch": args.batch, "steps": args.steps, "guidance_scale": 7.5,
        "cuda_options": args.cuda_options, "reps_per_process": args.reps, "processes_per_variant": args.processes,
        "median": measures, "stages_ms_per_image": stages, "ratio_diffusers_over_ours": ratios, "runs": runs,
    }


def table(report: dict) -> str:
    d = report["device"]
    ours = list(report["ratio_diffusers_over_ours"])
    rows = [f"{report['model']}, {report['pixels']}x{report['pixels']}, batch {report['batch']}, {report['steps']} "
            f"steps, guidance 7.5, cuda_options {report.get('cuda_options') or 'default'} on "
            f"{d['name']} (cc {d['compute_capability']})", "",
            "| measure | " + " | ".join(report["median"]) + " | " + " | ".join(f"diffusers / {v}" for v in ours) + " |",
            "|---" * (1 + len(report["median"]) + len(ours)) + "|"]
    for m in MEASURES:
        values = " | ".join(f"{report['median'][v][m]:.3f}" for v in report["median"])
        ratios = " | ".join(f"{report['ratio_diffusers_over_ours'][v][m]:.2f}x" for v in ours)
        rows.append(f"| {m} | {values} | {ratios} |")
    for variant, stages in report.get("stages_ms_per_image", {}).items():
        rows.append(f"\n{variant} per image, ms: " + ", ".join(f"{s} {stages[s]:.1f}" for s in STAGES))
    for name, found in report.get("accuracy", {}).items():
        rows.append(f"\n{name} vs diffusers fp32 (same noise): PSNR {found['psnr_db_vs_diffusers_fp32']:.2f} dB, "
                    f"max abs {found['max_abs_vs_diffusers_fp32']:.2e}")
    return "\n".join(rows)


def sweep_table(results: dict) -> str:
    """One row per workload and variant of a results file: what a provider-option or batch sweep compares.
    images/s is batch / end to end; the ratio is diffusers' end-to-end time over ours in the same workload."""
    rows = ["| workload | variant | end to end, s | images/s | UNet call, ms | device memory, MB | diffusers / ours |",
            "|---|---|---|---|---|---|---|"]
    for key, report in results.items():
        for variant, m in report.get("median", {}).items():
            ratio = report.get("ratio_diffusers_over_ours", {}).get(variant, {}).get("end_to_end_s")
            rows.append(f"| {key} | {variant} | {m['end_to_end_s']:.3f} | {report['batch'] / m['end_to_end_s']:.2f} | "
                        f"{1000 * m['unet_call_s']:.1f} | {m['device_memory_mb']:.0f} | "
                        + (f"{ratio:.2f}x |" if ratio else "- |"))
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/gpu_report.py benchmarks/results/gpu-<date>.json")
    print(sweep_table(json.loads(Path(sys.argv[1]).read_text())))
