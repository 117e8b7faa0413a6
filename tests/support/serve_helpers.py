"""Helpers of the serve tests: a real `inpaint-serve` process on a free loopback port, pictures, requests."""
from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = {"num_inference_steps": 2, "height": 64, "width": 64, "prompt": "a red bench"}  # tiny model, milliseconds


class Server:
    def __init__(self, process: subprocess.Popen, url: str, output: list[str]):
        self.process, self.url, self.output = process, url, output

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        return kb / 1024


@contextlib.contextmanager
def running_server(engine_dir, *args: str, ready_seconds: float = 120):
    """`inpaint-serve --engine DIR --port 0 ARGS` in its own process; yields once it answers."""
    command = [sys.executable, "-m", "inpaintrt.serve.cli", "--engine", str(engine_dir), "--port", "0", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    found = threading.Event()
    url = []

    def read():  # keep draining the pipe so the server never blocks on a full one
        for line in process.stdout:
            output.append(line)
            match = re.search(r"(http://\S+?)/ ", line)
            if match and not found.is_set():
                url.append(match.group(1))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    found.wait(ready_seconds)
    if not url:
        process.kill()
        raise RuntimeError("inpaint-serve did not start:\n" + "".join(output))
    server = Server(process, url[0], output)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def free_port() -> int:
    """A loopback port nobody listens on now (Ray Serve needs a fixed port, not 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rng = np.random.default_rng(seed)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + 3 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray(((np.stack(channels, -1) * 0.5 + 0.5) * 255).astype(np.uint8))


def mask(width: int = 64, height: int = 64) -> Image.Image:
    pixels = np.zeros((height, width), np.uint8)
    pixels[height // 4: height * 3 // 4, width // 4 + 3: width * 3 // 4] = 255
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def files(image: Image.Image | None = None, mask_image: Image.Image | None = None) -> dict:
    return {"image": ("image.png", png(image or picture()), "image/png"),
            "mask_image": ("mask.png", png(mask_image or mask()), "image/png")}


def form(fields: dict) -> dict:
    """Multipart text fields: numbers and booleans as the text a browser sends."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in fields.items()}


def wait_until(condition, seconds: float = 60, every: float = 0.05):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")


def engine_reference(engine, seed: int, **fields) -> np.ndarray:
    """What Engine.inpaint gives in this process for the same request: the single-request result."""
    arguments = {**FAST, **fields}
    result = engine.inpaint(picture(), mask(), generator=seed, progress=False, **arguments).images[0]
    return np.asarray(result.convert("RGB"))


def b64(image: Image.Image) -> str:
    """A picture as a JSON request's base64 PNG field."""
    return base64.b64encode(png(image)).decode()


def refusal(answer) -> dict:
    """The error of a 4xx answer, which always carries a fix."""
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    error = answer.json()["error"]
    assert error["fix"], error
    return error


def finished_job(client, queued, seconds: float = 300) -> dict:
    """The view of a job queued by POST /v1/jobs (its 202 answer), once it is done, failed or cancelled."""
    assert queued.status_code == 202, queued.text
    job, views = queued.json()["id"], []
    wait_until(lambda: views.append(client.get(f"/v1/jobs/{job}").json())
               or views[-1]["status"] in ("done", "failed", "cancelled"), seconds)
    return views[-1]
