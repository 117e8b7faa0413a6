"""`inpaint-serve --engine DIR [--engine DIR ...]`: the HTTP API and web page under uvicorn (or on Ray
Serve with --ray)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

from ..engine.load_options import add_load_arguments, load_options_from
from . import TOKEN_VARIABLE
from .budget import DEFAULT_MAX_MEGAPIXEL_STEPS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inpaint-serve", description="Serve an inpaintrt engine over HTTP, with a web "
                                "page where you paint the mask. API docs at /docs once it runs.")
    p.add_argument("--engine", required=True, action="append", help="engine directory written by inpaint-export; "
                   "repeat it to serve several (the first is the default; requests pick one by its directory's name "
                   "in `model`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port; default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker threads, each with its own engine (default 1)")
    p.add_argument("--queue-size", type=int, default=16, help="jobs that may wait; beyond it 429 (default 16)")
    p.add_argument("--max-batch", type=int, default=1, help="inpaint requests that may share UNet calls when they "
                   "agree in size, steps, scheduler, strength, guidance... (default 1: off; docs/batching.md)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="with --max-batch > 1: how long a request waits for others to batch with (default 5)")
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' (or set {TOKEN_VARIABLE})")
    p.add_argument("--max-upload-mb", type=float, default=20, help="request body cap in MB; beyond it 413")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest uploaded picture in pixels; 413")
    p.add_argument("--max-output-pixels", type=int, default=1024 * 1024, help="largest height x width generated")
    p.add_argument("--max-steps", type=int, default=150, help="largest num_inference_steps accepted (at most 1000)")
    p.add_argument("--max-outpaint-passes", type=int, default=8,
                   help="most inpaint passes one outpaint request may need (default 8; 512 -> 1280 wide takes 3)")
    p.add_argument("--max-megapixel-steps", type=float, metavar="N",
                   help="work one request may ask for: pictures x UNet calls x height x width / 10^6, x2 with "
                   "guidance, +50%% per running ControlNet, every outpaint pass counted; beyond it 422 naming the "
                   f"field (default {DEFAULT_MAX_MEGAPIXEL_STEPS:g}: one 1024x1024 picture at 50 steps, guided; "
                   "never below the engines' own default requests)")
    p.add_argument("--max-request-memory-mb", type=float, metavar="MB",
                   help="estimated host memory one request may need (latents, pictures, the VAE decoder's peak, "
                   "the batch included); beyond it 422 before queueing (default: this machine's memory less the "
                   "workers' engine weights, divided by the workers; GET /v1/info shows it)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable); CORS is off without it")
    p.add_argument("--log-prompts", action="store_true", help="the access log (one JSON line per job on stderr) "
                   "also names each job's prompts; off by default: no user text in logs")
    p.add_argument("--no-a1111", dest="a1111", action="store_false",
                   help="do not answer AUTOMATIC1111's /sdapi/v1 routes (on by default)")
    p.add_argument("--page", choices=("inpaintrt", "iopaint"), default="inpaintrt",
                   help="the web page at /: inpaintrt's (default), or IOPaint's own page from an installed iopaint "
                   "package (pip install --no-deps iopaint) with the /api/v1 routes it calls (docs/iopaint.md)")
    add_load_arguments(p, "each worker / replica")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (ray.init(address='auto') or a local one)")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: engine replicas")
    return p


def settings_from(args):
    from .app import Settings
    from .batching import Batching
    from .engines import check_names

    for name in ("workers", "queue_size", "replicas", "max_steps", "max_outpaint_passes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    load = load_options_from(args)  # a wrong backend / precision pair or a bad file fails before any engine loads
    check_names(args.engine)
    batching = Batching(args.max_batch, args.batch_window_ms)  # a bad value names its flag
    if args.ray and batching.max_batch > 1:
        raise ValueError("--max-batch batches within one process; on Ray Serve each replica runs one request at a "
                         "time: leave --max-batch at 1 with --ray, or scale with --replicas")
    if args.ray and len(args.engine) > 1:
        raise ValueError(f"--ray serves one engine; pass a single --engine (got {len(args.engine)})")
    for name in ("max_megapixel_steps", "max_request_memory_mb"):
        value = getattr(args, name)
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value:g}")
    if args.max_steps > 1000:
        raise ValueError(f"--max-steps {args.max_steps}: schedulers have 1000 training timesteps; pass at most 1000")
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if args.page == "iopaint":
        from .iopaint import web_app_folder

        web_app_folder()  # not installed: the error names the install line (a token: Settings refuses it)
    return Settings(engine_dir=args.engine[0], more_engines=args.engine[1:], load=load, workers=args.workers,
                    queue_size=args.queue_size,
                    token=token, max_upload_mb=args.max_upload_mb,
                    max_pixels=args.max_pixels, max_output_pixels=args.max_output_pixels, max_steps=args.max_steps,
                    max_outpaint_passes=args.max_outpaint_passes, max_megapixel_steps=args.max_megapixel_steps,
                    max_request_memory_mb=args.max_request_memory_mb, cors_origins=args.cors_origin,
                    a1111=args.a1111, log_prompts=args.log_prompts, max_batch=batching.max_batch,
                    batch_window_ms=batching.window_ms, page=args.page)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        import uvicorn

        from ..engine.manifest import SEGMENTER, model_kind, read_manifest
        from .app import create_app
    except ImportError as e:
        print(f"error: serving needs its extra ({e}); install it with pip install 'inpaintrt[serve]'", file=sys.stderr)
        return 2
    try:
        settings = settings_from(args)
        for directory in args.engine:  # a wrong directory fails here, before the server starts
            manifest = read_manifest(directory, verify_hashes=False)
            if args.ray and model_kind(manifest) == SEGMENTER:  # its replicas would answer every route with a 422
                raise ValueError(f"--ray deploys inpainting and eraser engines; {directory} is a mask maker "
                                 f"({manifest['model']['family']}): serve it with inpaint-serve without --ray")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.ray:
        from .ray_app import run_on_ray

        return run_on_ray(settings, args.host, args.port, args.replicas)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port} ({e}); pick another --port", file=sys.stderr)
        return 2
    # listen now, not when uvicorn starts serving: the lifespan announces the URL before uvicorn accepts,
    # and a client that connects in between must wait in the backlog, not be refused
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    settings.announce = f"inpaint-serve: http://{shown}:{port}/  (API docs: http://{shown}:{port}/docs)"
    app = create_app(settings)
    server = _draining_server()(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=60))
    # uvicorn drains on SIGTERM, then raises the signal again under the handler it found: make that
    # handler end run() so a drained server exits with status 0
    signal.signal(signal.SIGTERM, _stopped)
    # an engine that refuses its --lora / --embedding is the user's error, not a crash: one line, no traceback
    logging.getLogger("uvicorn.error").addFilter(lambda record: settings.refused is None)
    try:
        server.run(sockets=[sock])
    except Stopped:
        pass
    except SystemExit:  # uvicorn exits 3 when the start failed
        if settings.refused is None:
            raise
    if settings.refused is not None:
        print(f"error: {settings.refused}", file=sys.stderr)
        return 2
    print("inpaint-serve: stopped", flush=True)
    return 0


class Stopped(Exception):
    """SIGTERM arrived again after uvicorn's graceful shutdown."""


def _stopped(*_):
    raise Stopped()


def _draining_server():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: queued jobs are cancelled at once and running ones finish, so waiting
        requests get their answers and event streams end before uvicorn closes."""

        def handle_exit(self, sig, frame):
            manager = getattr(getattr(self.config.app, "state", None), "manager", None)
            if manager is not None:
                manager.drain()
            super().handle_exit(sig, frame)

    return DrainingServer


if __name__ == "__main__":
    sys.exit(main())
