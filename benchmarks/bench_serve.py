"""Throughput and latency of a real `inpaint-serve` under concurrent clients, with cross-request batching off
and on (docs/batching.md).

    python benchmarks/bench_serve.py                                  # a random-weight "small" engine, built here
    python benchmarks/bench_serve.py --engine DIR --max-batch 1,2,4 --clients 8 --requests 4 --steps 20
    python benchmarks/bench_serve.py --max-batch 1,2,4,8 --clients 8 --repeat 2 --json serve.json

For each --max-batch value it starts the server on 127.0.0.1 (a free port), sends one warm-up request, then
lets --clients clients each POST --requests inpaint requests one after another (httpx, own seeds and
prompts), and prints one JSON line: images/s over the whole run, the p50 / p95 request latency, and how
many requests shared each loop on average (the server's own /metrics, warm-up excluded). --repeat runs
the whole sweep again (rounds alternate the values, so slow spells of a shared machine spread over all).
Before the sweep it times the engine's UNet call alone at each batch's rows (guided: 2 per request), to
tell what batching saves in work from what it saves in waiting.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from lcm_path import machine, versions  # this folder (the script's own directory is on sys.path)


def build_engine(size: str, root: Path) -> Path:
    """A random-weight engine of the given architecture size (export/random_models.py SIZES), exported to `root`."""
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline
    from inpaintrt.export.random_models import save_pipeline

    folder = save_pipeline(root / "checkpoint", size=size, in_channels=9, seed=0)
    return export_engine(load_pipeline(str(folder)), root / f"engine-{size}", log=lambda *_: None)


def start_server(engine: Path, max_batch: int, window_ms: float, threads: int | None):
    command = [sys.executable, "-m", "inpaintrt.serve.cli", "--engine", str(engine), "--port", "0",
               "--queue-size", "256", "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in process.stdout:  # the announce line carries the URL
        found = re.search(r"(http://\S+?)/ ", line)
        if found:
            threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()  # a full pipe would block it
            return process, found.group(1)
    raise RuntimeError(f"inpaint-serve exited with {process.wait()} before answering")


def _drain(stream) -> None:
    for _ in stream:
        pass


def request_body(seed: int, args) -> tuple[dict, dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    mask = np.zeros((args.size, args.size), np.uint8)
    mask[args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = 255
    files = {}
    for name, image in (("image", picture), ("mask_image", Image.fromarray(mask))):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files[name] = (f"{name}.png", buffer.getvalue(), "image/png")
    fields = {"prompt": f"a garden, variant {seed}", "seed": str(seed), "num_inference_steps": str(args.steps),
              "height": str(args.size), "width": str(args.size), "scheduler": args.scheduler}
    return files, fields


def run_clients(url: str, args) -> tuple[float, list[float]]:
    import httpx

    latencies: list[float] = []
    failures: list[str] = []

    def client(index: int):
        with httpx.Client(base_url=url, timeout=600) as http:
            for number in range(args.requests):
                files, fields = request_body(1000 * index + number, args)
                began = time.perf_counter()
                answer = http.post("/v1/inpaint", files=files, data=fields)
                latencies.append(time.perf_counter() - began)
                if answer.status_code != 200:
                    failures.append(answer.text)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return time.perf_counter() - began, latencies


def measure(engine: Path, max_batch: int, args) -> dict:
    import httpx

    process, url = start_server(engine, max_batch, args.window_ms, args.threads)
    try:
        files, fields = request_body(0, args)
        httpx.post(f"{url}/v1/inpaint", files=files, data=fields, timeout=600).raise_for_status()  # warm-up
        load = os.getloadavg()[0]
        wall, latencies = run_clients(url, args)
        jobs, requests = loops_shared(httpx.get(f"{url}/metrics", timeout=60).text)
    finally:
        process.terminate()
        process.wait(60)
    images = args.clients * args.requests
    return {"max_batch": max_batch, "window_ms": args.window_ms, "clients": args.clients, "images": images,
            "steps": args.steps, "size": args.size, "images_per_s": round(images / wall, 3),
            "p50_s": round(float(np.percentile(latencies, 50)), 3),
            "p95_s": round(float(np.percentile(latencies, 95)), 3),
            "requests_per_loop": round((requests - 1) / (jobs - 1), 2), "load_avg_1min_before": round(load, 2)}


def loops_shared(metrics: str) -> tuple[float, float]:
    """(jobs, sum over jobs of the requests each shared its loop with) from the server's /metrics."""
    found = dict(re.findall(r"^inpaintrt_job_batch_requests_(count|sum) (\S+)$", metrics, re.M))
    return float(found["count"]), float(found["sum"])


def unet_scaling(engine: Path, max_batches: list[int], size: int, runs: int = 3) -> dict:
    """Best-of-`runs` seconds of one UNet call with the rows of n guided requests, for each n."""
    from inpaintrt import Engine

    loaded = Engine.load(engine, backend="ort-cpu", verify_hashes=False)
    latent = size // loaded.manifest["model"]["vae_scale_factor"]
    found = {}
    for n in max_batches:
        dims = {"batch": 2 * n, "latent_height": latent, "latent_width": latent, "text_length": 77}
        feeds = {i["name"]: np.zeros([dims.get(d, d) for d in i["shape"]], i["dtype"])
                 for i in loaded.manifest["components"]["unet"]["inputs"]}
        loaded.sessions["unet"].run(feeds)
        best = float("inf")
        for _ in range(runs):
            began = time.perf_counter()
            loaded.sessions["unet"].run(feeds)
            best = min(best, time.perf_counter() - began)
        found[n] = best
    return {str(n): {"rows": 2 * n, "unet_call_s": round(t, 4), "per_request_s": round(t / n, 4),
                     "vs_n_single_calls": round(t / (n * found[max_batches[0]] / max_batches[0]), 2)}
            for n, t in found.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine", help="engine directory (default: build a random-weight one of --model-size)")
    p.add_argument("--model-size", default="small", help="export/random_models.py size when no --engine (default small)")
    p.add_argument("--max-batch", default="1,2,4", help="comma-separated --max-batch values to compare")
    p.add_argument("--window-ms", type=float, default=5.0, help="--batch-window-ms of the server (default 5)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=3, help="requests per client, one after another")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=256, help="picture height and width (default 256)")
    p.add_argument("--scheduler", default="euler_a")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the server (default: ONNX Runtime's own)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of the whole sweep (default 1)")
    p.add_argument("--json", type=Path, help="also write every row, the UNet scaling and the machine here")
    p.add_argument("--unet-only", action="store_true", help="time the UNet calls per batch size only, no server")
    args = p.parse_args()
    max_batches = [int(value) for value in args.max_batch.split(",")]
    with tempfile.TemporaryDirectory() as temporary:
        engine = Path(args.engine) if args.engine else build_engine(args.model_size, Path(temporary))
        scaling = unet_scaling(engine, max_batches, args.size)
        print(json.dumps({"unet_scaling": scaling}), flush=True)
        rows = []
        for round_index in range(0 if args.unet_only else args.repeat):
            for max_batch in max_batches if round_index % 2 == 0 else max_batches[::-1]:
                rows.append({"round": round_index + 1, **measure(engine, max_batch, args)})
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        settings = {k: getattr(args, k) for k in ("engine", "model_size", "window_ms", "clients", "requests",
                                                  "steps", "size", "scheduler", "threads", "repeat")}
        args.json.write_text(json.dumps({"settings": settings, "machine": machine(), "versions": versions(),
                                         "unet_scaling": scaling, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
