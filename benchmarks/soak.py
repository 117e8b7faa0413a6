"""A long mixed load against a real `inpaint-serve` on 127.0.0.1 (started here): valid inpaint and
outpaint requests, broken inputs, cancels, event-stream subscribers that hang up, and the A1111 routes,
all at once from `--concurrency` clients.

    python benchmarks/soak.py                                    # tiny engine built here, 2000 requests, 16 clients
    python benchmarks/soak.py --engine DIR --requests 5000 --workers 2 --time-limit 1800

Counts every HTTP request and its status; reports 5xx (must be 0) and connection errors (must be 0),
pictures that differ between two answers for the same seed, p50/p99 latency (all requests, and the
picture-returning ones), the peak queue depth GET /v1/health showed, and the server's resident memory
at start, halfway and at the end. Prints one JSON line; exits 1 on any 5xx, connection error or
differing picture. The tiny engine needs the export extra (torch, diffusers); --engine needs only the runtime.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from serve_helpers import files, form, picture, png, running_server  # noqa: E402

STEPS = {"num_inference_steps": 2, "height": 64, "width": 64, "prompt": "a red bench"}
SEEDS = 8  # answers for the same seed must be the same picture
# one round of the mix; each entry is an action below, run in turn by request index
MIX = ["inpaint", "inpaint", "inpaint", "outpaint", "broken", "broken", "cancel", "events_hang_up",
       "a1111_img2img", "a1111_reads", "inpaint", "outpaint", "broken", "inpaint", "a1111_img2img", "cancel"]
BROKEN = [  # (what is wrong, request keyword arguments): each must be a 4xx naming the problem
    ("scheduler", {"files": files(), "data": form({**STEPS, "scheduler": "nope"})}),
    ("not a picture", {"files": {"image": ("a.png", b"not a png", "image/png"), "mask_image": files()["mask_image"]},
                       "data": form(STEPS)}),
    ("steps over the limit", {"files": files(), "data": form({**STEPS, "num_inference_steps": 10_000})}),
    ("unknown field", {"files": files(), "data": form({**STEPS, "stepz": 3})}),
    ("malformed JSON", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("no body", {}),
    ("wrong content type", {"content": b"x", "headers": {"content-type": "text/plain"}}),
]


class Load:
    """The counters every client thread adds to."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.latencies: list[float] = []
        self.picture_latencies: list[float] = []
        self.server_errors: list[str] = []
        self.connection_errors: list[str] = []
        self.by_seed: dict[int, set] = defaultdict(set)

    def call(self, client: httpx.Client, method: str, path: str, picture_answer: bool = False, **kwargs):
        started = time.perf_counter()
        try:
            answer = client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            with self.lock:
                self.connection_errors.append(f"{method} {path}: {type(e).__name__}: {e}")
            return None
        seconds = time.perf_counter() - started
        with self.lock:
            self.statuses[answer.status_code] += 1
            self.latencies.append(seconds)
            if picture_answer and answer.status_code == 200:
                self.picture_latencies.append(seconds)
            if answer.status_code >= 500:
                self.server_errors.append(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer

    @property
    def count(self) -> int:
        return sum(self.statuses.values()) + len(self.connection_errors)


def pixels_key(data: bytes) -> bytes:
    """The decoded pixels (PNG bytes may differ in encoding, the picture may not)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).tobytes()


def inpaint(load: Load, client: httpx.Client, index: int) -> None:
    seed = index % SEEDS
    answer = load.call(client, "POST", "/v1/inpaint", True, files=files(), data=form({**STEPS, "seed": seed}))
    if answer is not None and answer.status_code == 200:
        with load.lock:
            load.by_seed[seed].add(pixels_key(answer.content))


def outpaint(load: Load, client: httpx.Client, index: int) -> None:
    load.call(client, "POST", "/v1/outpaint", True, files={"image": files()["image"]},
              data=form({**STEPS, "left": 16, "top": 8, "seed": index}))


def broken(load: Load, client: httpx.Client, index: int) -> None:
    _, arguments = BROKEN[index % len(BROKEN)]
    load.call(client, "POST", "/v1/inpaint", **arguments)


def cancel(load: Load, client: httpx.Client, index: int) -> None:
    job = load.call(client, "POST", "/v1/jobs", files=files(), data=form({**STEPS, "num_inference_steps": 40}))
    if job is not None and job.status_code == 202:
        job_id = job.json()["id"]
        load.call(client, "DELETE", f"/v1/jobs/{job_id}")
        load.call(client, "GET", f"/v1/jobs/{job_id}/result")  # 409 (cancelled) or 200 if it finished first


def events_hang_up(load: Load, client: httpx.Client, index: int) -> None:
    """Subscribe to a job's events, read the first one, then drop the connection mid-stream."""
    job = load.call(client, "POST", "/v1/jobs", files=files(), data=form({**STEPS, "num_inference_steps": 20}))
    if job is None or job.status_code != 202:
        return
    started = time.perf_counter()
    try:
        with client.stream("GET", f"/v1/jobs/{job.json()['id']}/events?previews=1") as stream:
            status = stream.status_code
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    break  # hang up after the first event
    except httpx.HTTPError as e:
        with load.lock:
            load.connection_errors.append(f"events: {type(e).__name__}: {e}")
        return
    with load.lock:
        load.statuses[status] += 1
        load.latencies.append(time.perf_counter() - started)
        if status >= 500:
            load.server_errors.append(f"events: {status}")


def a1111_img2img(load: Load, client: httpx.Client, index: int) -> None:
    picture_b64 = base64.b64encode(png(picture())).decode()
    mask_b64 = base64.b64encode(files()["mask_image"][1]).decode()
    load.call(client, "POST", "/sdapi/v1/img2img", True,
              json={"init_images": [picture_b64], "mask": mask_b64, "steps": 2, "width": 64, "height": 64,
                    "seed": index, "denoising_strength": 0.75})


def a1111_reads(load: Load, client: httpx.Client, index: int) -> None:
    for path in ("/sdapi/v1/progress", "/sdapi/v1/samplers", "/sdapi/v1/options", "/sdapi/v1/sd-models"):
        load.call(client, "GET", path)


ACTIONS = {name: globals()[name] for name in set(MIX)}


class Watch:
    """Samples the queue (GET /v1/health) every 0.1 s while the load runs."""

    def __init__(self, url: str):
        self.url, self.peak_queued, self.peak_busy, self.samples = url, 0, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.wait(0.1):
                try:
                    health = client.get("/v1/health").json()
                except (httpx.HTTPError, ValueError):
                    continue
                self.samples += 1
                self.peak_queued = max(self.peak_queued, health.get("queued", 0))
                self.peak_busy = max(self.peak_busy, health.get("busy", 0))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def run_soak(server, requests: int, concurrency: int, time_limit: float) -> dict:
    """Drive the mix until at least `requests` HTTP requests were answered (or time_limit s passed)."""
    load, watch = Load(), Watch(server.url)
    rss = {"start": server.rss_mb()}
    started = time.monotonic()
    next_index = iter(range(10**9))
    index_lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while load.count < requests and time.monotonic() - started < time_limit:
                with index_lock:
                    index = next(next_index)
                ACTIONS[MIX[index % len(MIX)]](load, client, index)
                if "middle" not in rss and load.count >= requests // 2:
                    rss["middle"] = server.rss_mb()

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client_loop) for _ in range(concurrency)]:
            future.result()
    elapsed = time.monotonic() - started
    watch.close()
    rss["end"] = server.rss_mb()
    differing = [seed for seed, seen in load.by_seed.items() if len(seen) > 1]
    return {"requests": load.count, "concurrency": concurrency, "seconds": round(elapsed, 1),
            "requests_per_s": round(load.count / elapsed, 1), "timed_out": load.count < requests,
            "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
            "server_errors_5xx": len(load.server_errors), "connection_errors": len(load.connection_errors),
            "seeds_with_differing_pictures": differing,
            "latency_ms": _percentiles(load.latencies), "picture_latency_ms": _percentiles(load.picture_latencies),
            "peak_queued": watch.peak_queued, "peak_busy": watch.peak_busy, "health_samples": watch.samples,
            "server_rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "first_errors": (load.server_errors + load.connection_errors)[:5]}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    p50, p99 = np.percentile(np.array(values) * 1000, [50, 99])
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "n": len(values)}


def tiny_engine(folder: Path) -> Path:
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline
    from inpaintrt.export.random_models import save_pipeline

    checkpoint = save_pipeline(folder / "checkpoint", size="tiny", in_channels=9)
    return export_engine(load_pipeline(str(checkpoint)), folder / "engine", log=lambda *_: None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", help="engine directory (default: a tiny SD 1.x engine built in a temporary folder)")
    p.add_argument("--requests", type=int, default=2000, help="HTTP requests to send, at least (default 2000)")
    p.add_argument("--concurrency", type=int, default=16, help="clients sending at once (default 16)")
    p.add_argument("--workers", type=int, default=2, help="the server's --workers (default 2)")
    p.add_argument("--queue-size", type=int, default=32, help="the server's --queue-size (default 32)")
    p.add_argument("--time-limit", type=float, default=1200, help="stop sending after this many seconds")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        engine = args.engine or tiny_engine(Path(folder))
        with running_server(engine, "--workers", str(args.workers), "--queue-size", str(args.queue_size)) as server:
            result = run_soak(server, args.requests, args.concurrency, args.time_limit)
        result.update(workers=args.workers, queue_size=args.queue_size, engine="tiny" if not args.engine else engine,
                      mix=dict(Counter(MIX)))
    print(json.dumps(result), flush=True)
    failed = result["server_errors_5xx"] or result["connection_errors"] or result["seeds_with_differing_pictures"]
    return 1 if failed or result["timed_out"] else 0


if __name__ == "__main__":
    sys.exit(main())
