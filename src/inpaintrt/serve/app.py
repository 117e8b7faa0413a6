"""The FastAPI application: the HTTP API over a JobManager, and the web page.

`create_app(settings)` builds it; `inpaint-serve` runs it under uvicorn and the Ray ingress wraps
the same app (with engines that live in Ray replicas instead of local threads).
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..engine.load_options import LoadOptions
from ..runtime.schedulers import SCHEDULERS
from .a1111 import Server as A1111Server, a1111_router
from .budget import DEFAULT_MAX_MEGAPIXEL_STEPS, default_request_memory, default_request_work, engine_sizes
from . import TOKEN_VARIABLE
from .engines import ServedEngines
from .errors import ApiError, install_handlers
from .inputs import (InpaintParameters, Limits, OutpaintParameters, SyncOutpaintParameters, SyncParameters,
                     read_request, request_schema)
from .batching import Batching
from .job_routes import add_job_routes, job_view, result_response, unavailable_error
from .jobs import FINISHED, EngineUnavailable, JobManager, QueueFull, ShuttingDown
from .limits import BodyLimit
from .metrics import Metrics, RequestCounter
from .schema import openapi_with_errors
from .segmenting import segment_router

STATIC = Path(str(resources.files("inpaintrt.serve") / "static"))


@dataclass
class Settings:
    engine_dir: str
    load: LoadOptions = field(default_factory=LoadOptions)  # how every worker and replica opens its engines
    workers: int = 1
    queue_size: int = 16
    token: str | None = None
    max_upload_mb: float = 20
    max_pixels: int = 4096 * 4096
    max_output_pixels: int = 1024 * 1024
    max_steps: int = 150
    max_outpaint_passes: int = 8
    max_megapixel_steps: float | None = None  # work per request (budget.py); None: the default, raised to the
    # engines' own default requests
    max_request_memory_mb: float | None = None  # estimated host memory per request; None: from the machine's
    keep_finished: int = 64
    cors_origins: list[str] = field(default_factory=list)
    announce: str | None = None  # printed once the engines are loaded and requests are answered
    refused: Exception | None = None  # why the engines would not load (set at startup)
    a1111: bool = True  # also answer AUTOMATIC1111's /sdapi/v1 routes
    log_prompts: bool = False  # the access log names each job's prompts (off: no user text in logs)
    more_engines: list = field(default_factory=list)  # further engine directories; engine_dir is the default
    max_batch: int = 1  # requests that may share UNet calls (1: batching off; docs/batching.md)
    batch_window_ms: float = 5.0  # how long a batchable job waits for others
    page: str = "inpaintrt"  # the web page at /: this project's, or "iopaint": IOPaint's own (docs/iopaint.md)

    def __post_init__(self):
        if isinstance(self.load, dict):  # as dataclasses.asdict sends settings to Ray replicas
            self.load = LoadOptions(**self.load)
        if self.page == "iopaint" and self.token:  # here, not in the CLI: every create_app caller gets it
            raise ValueError("--page iopaint with a token: IOPaint's page sends no Authorization header, so it "
                             f"could not load; leave --token (and {TOKEN_VARIABLE}) out, or use --page inpaintrt")

    def engine_dirs(self) -> list[str]:
        return [self.engine_dir, *self.more_engines]

    def batching(self) -> Batching:
        return Batching(self.max_batch, self.batch_window_ms)

    def limits(self) -> Limits:
        memory = 2**62 if self.max_request_memory_mb is None else int(self.max_request_memory_mb * 2**20)
        return Limits(int(self.max_upload_mb * 2**20), self.max_pixels, self.max_output_pixels, self.max_steps,
                      self.max_outpaint_passes, self.max_megapixel_steps or DEFAULT_MAX_MEGAPIXEL_STEPS, memory,
                      self.max_batch)


def engine_facts(engine) -> dict:
    """The engine's facts (EngineBase.facts) and its memory sizes (budget.py)."""
    if hasattr(engine, "remote_facts"):  # a Ray engine replica answered already
        return engine.remote_facts
    return {**engine.facts(), "sizes": engine_sizes(engine.manifest)}


def open_engine(settings: Settings, engine_dir: str | None = None):
    """One engine as the settings ask for it (each worker and each Ray replica calls this)."""
    from .. import Engine

    return Engine.load(engine_dir or settings.engine_dir, **settings.load.as_arguments())


def local_engines(settings: Settings, engine_dir: str | None = None) -> Callable:
    return lambda: open_engine(settings, engine_dir)


def create_app(settings: Settings, load_engine: Callable | None = None, manager: JobManager | None = None) -> FastAPI:
    """The API and page. Engines are loaded at startup, one per worker, by `load_engine()`; with
    settings.more_engines, each engine directory gets its own JobManager (engines.py)."""
    if (manager is not None or load_engine is not None) and settings.more_engines:
        raise ValueError("one JobManager or engine loader serves one engine: pass a single --engine")
    models = ServedEngines([(settings.engine_dir, manager or JobManager(load_engine or local_engines(settings),
                                                                 settings.workers, settings.queue_size,
                                                                 settings.keep_finished, settings.batching()))]
                    + [(directory, JobManager(local_engines(settings, directory), settings.workers,
                                              settings.queue_size, settings.keep_finished, settings.batching()))
                       for directory in settings.more_engines])
    manager = models  # what watches every engine: health, metrics, shutdown, jobs by id
    limits = settings.limits()
    facts = models.default.facts  # the default engine's, filled at startup

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        try:
            await models.start(asyncio.get_running_loop(), engine_facts)
        except ValueError as e:  # a LoRA or embedding the engine refuses: `inpaint-serve` says so and exits 2
            settings.refused = e
            raise
        if settings.max_megapixel_steps is None:
            limits.max_megapixel_steps = max([DEFAULT_MAX_MEGAPIXEL_STEPS] + [
                default_request_work(model.facts) for model in models if "default_steps" in model.facts])
        if settings.max_request_memory_mb is None:  # the machine's memory less the loaded weights, per worker
            limits.max_request_memory = default_request_memory(models)
        if settings.announce:
            print(settings.announce, flush=True)
        yield
        await asyncio.to_thread(manager.stop)

    app = FastAPI(title="inpaintrt", version=__version__, lifespan=lifespan,
                  description="Stable Diffusion inpainting and outpainting, and erasing with LaMa / MI-GAN eraser engines "
                              "(no prompt; GET /v1/info `models[].kind`). Field names follow `Engine.inpaint` "
                              "(diffusers' `StableDiffusionInpaintPipeline`) and `Engine.outpaint`; `seed` is their "
                              "`generator`. Errors are "
                              "`{\"error\": {status, field, message, fix}}`. Each request's work (pictures x steps x "
                              "pixels, GET /v1/info `limits.max_megapixel_steps`) and estimated host memory "
                              "(`limits.max_request_memory_bytes`) are bounded: over them, a 422 names the field.")
    app.state.manager, app.state.settings = manager, settings
    install_handlers(app)
    metrics = Metrics(manager, settings.log_prompts)
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    app.add_middleware(RequestCounter, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"],
                           expose_headers=["X-Seed", "X-Timings", "X-Job-Id", "X-Replica", "X-Warnings", "X-Scores",
                                           "X-Mask-Index"])

    async def authorized(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise ApiError(401, "authorization", "missing or wrong bearer token",
                           "send the header Authorization: Bearer <the server's token>",
                           headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]

    def body(model) -> dict:
        return {"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": request_schema(model, binary=True)},
            "application/json": {"schema": request_schema(model, binary=False)}}}}

    def submit(parsed):
        model = models.pick(parsed.model)
        try:
            steps = parsed.arguments.get("num_inference_steps") or model.facts.get("default_steps") or 0
            return model.manager.submit(parsed.arguments, parsed.seed, parsed.total_steps, parsed.task, steps=steps)
        except QueueFull:
            raise ApiError(429, "queue", f"all {settings.queue_size} queue slots of {model.name} are taken",
                           "retry after the Retry-After seconds",
                           headers={"Retry-After": str(_retry_after(model.manager))})
        except ShuttingDown:
            raise ApiError(503, "server", "the server is shutting down", "retry against a running server")
        except EngineUnavailable as e:
            raise unavailable_error(str(e), e.retry_after)

    if settings.page == "iopaint":  # IOPaint's page at / and its /api/v1 routes over the same queues (iopaint.py)
        from .iopaint import PageServer, add_iopaint_page

        # `finished` is defined further down: the lambda looks it up when a request runs
        add_iopaint_page(app, PageServer(models, limits, submit, lambda job, request: finished(job, request)), guarded)
    else:
        @app.get("/", include_in_schema=False)
        async def page():
            return FileResponse(STATIC / "index.html")

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/metrics", dependencies=guarded, summary="Prometheus metrics: requests, queue, job latency, steps, "
             "batch sizes, workers, engine load time", responses={200: {"content": {"text/plain": {}}}})
    async def prometheus():
        body, kind = metrics.exposition()
        return Response(body, media_type=kind)

    @app.get("/v1/health", summary="Liveness: ok once the engines are loaded, with queue figures")
    async def health():
        if manager.unavailable and not manager.draining:  # 503: a load balancer sends traffic elsewhere
            raise unavailable_error(f"no engine can run jobs: {manager.unavailable}", 5)
        return {"status": "draining" if manager.draining else "ok", **manager.stats()}

    @app.get("/v1/info", dependencies=guarded,
             summary="Model family and kind (diffusion or eraser), channels, default size, schedulers, limits")
    async def info():
        return {"version": __version__, "model": {k: v for k, v in facts.items() if k != "scheduler_config"},
                "loras": facts.get("loras", []),  # name, sha256, scale (and baked: fused at export)
                "embeddings": facts.get("embeddings", []),  # textual inversions: name, token, vectors, sha256
                "models": [model.public_facts() for model in models],  # the first is the default
                "schedulers": sorted(SCHEDULERS), "limits": {
                    "max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                    "max_output_pixels": limits.max_output_pixels, "max_steps": limits.max_steps,
                    "max_outpaint_passes": limits.max_outpaint_passes,
                    # per request: images x UNet calls x megapixels (x2 guided, +0.5 per ControlNet); host bytes
                    "max_megapixel_steps": limits.max_megapixel_steps,
                    "max_request_memory_bytes": limits.max_request_memory,
                    "queue_size": settings.queue_size, "workers": models.default.manager.worker_count},
                # requests that may share one loop (1: each request runs its own UNet calls)
                "batching": {"max_batch": settings.max_batch, "window_ms": settings.batch_window_ms}}

    async def finished(job, request: Request) -> None:
        """Returns once the job is finished; a client that left has its job cancelled, freeing the worker."""
        while job.status not in FINISHED:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.changed.wait(), 1.0)
            job.changed.clear()
            if job.status not in FINISHED and await request.is_disconnected():
                manager.cancel(job.id)

    async def wait_for(request: Request, model) -> Response:
        """The synchronous endpoints: queue the job like POST /v1/jobs would, answer with its picture."""
        parsed = await read_request(request, model, limits, models.facts_for)
        job = submit(parsed)
        try:
            await finished(job, request)
            return result_response(job, parsed.response_format)
        finally:
            manager.forget(job.id)

    async def queue_job(request: Request, model) -> JSONResponse:
        job = submit(await read_request(request, model, limits, models.facts_for))
        return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    picture_responses = {200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "The picture (X-Seed, X-Timings headers) or JSON with base64"}}

    @app.post("/v1/inpaint", dependencies=guarded, openapi_extra=body(SyncParameters),
              summary="Inpaint and wait for the picture", responses=picture_responses)
    async def inpaint(request: Request):
        return await wait_for(request, SyncParameters)

    @app.post("/v1/jobs", dependencies=guarded, openapi_extra=body(InpaintParameters), status_code=202,
              summary="Queue an inpaint job; returns its id at once")
    async def create_job(request: Request):
        return await queue_job(request, InpaintParameters)

    @app.post("/v1/outpaint", dependencies=guarded, openapi_extra=body(SyncOutpaintParameters),
              summary="Outpaint (grow the picture by left/right/top/bottom pixels) and wait for the picture",
              responses=picture_responses)
    async def outpaint(request: Request):
        return await wait_for(request, SyncOutpaintParameters)

    @app.post("/v1/outpaint/jobs", dependencies=guarded, openapi_extra=body(OutpaintParameters), status_code=202,
              summary="Queue an outpaint job; returns its id at once (follow it under /v1/jobs/{id})")
    async def create_outpaint_job(request: Request):
        return await queue_job(request, OutpaintParameters)

    add_job_routes(app, manager, guarded)
    app.include_router(segment_router(models, limits, guarded))  # the mask makers

    maxima = {"num_inference_steps": limits.max_steps, "prior_num_inference_steps": limits.max_steps,
              "steps": limits.max_steps, "batch_size": settings.queue_size, "n_iter": settings.queue_size}
    app.openapi = lambda: openapi_with_errors(app, maxima, settings.token is not None)
    if settings.a1111:  # AUTOMATIC1111's routes over the same queue (a1111.py)
        server = A1111Server(manager, settings, limits, facts, submit, finished, lambda job: result_response(job, "png").body,
                             models)
        app.include_router(a1111_router(server, guarded))
    return app


def _retry_after(manager: JobManager) -> int:
    """Seconds until a slot is likely free: the recent run time times the queue per worker."""
    stats = manager.stats()
    per_job = manager.recent_run_seconds()
    return max(1, math.ceil(per_job * (stats["queued"] + stats["busy"]) / max(1, stats["workers"])))
