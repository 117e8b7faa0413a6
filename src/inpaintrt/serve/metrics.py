"""What an operator watches: Prometheus metrics (GET /metrics) and one structured access-log line per job.

Counters and histograms are fed as things happen (each HTTP answer, each finished job); the queue,
worker and load figures are read from the JobManager when Prometheus scrapes. Each app has its own
registry, so several apps in one process (tests, Ray's ingress) never share numbers. The access log
holds no picture data and no prompt unless `--log-prompts` asks for it.
"""
from __future__ import annotations

import json
import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

ACCESS = logging.getLogger("inpaintrt.access")
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    def __init__(self, manager, log_prompts: bool = False):
        self.manager, self.log_prompts = manager, log_prompts
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("inpaintrt_http_requests", "HTTP answers by method, route template and status",
                                ["method", "route", "status"], registry=registry)
        self.run_seconds = Histogram("inpaintrt_job_run_seconds", "Time a job ran on a worker", ["task", "status"],
                                     buckets=RUN_BUCKETS, registry=registry)
        self.queue_seconds = Histogram("inpaintrt_job_queue_seconds", "Time a job waited for a worker", ["task"],
                                       buckets=RUN_BUCKETS, registry=registry)
        self.steps = Counter("inpaintrt_denoising_steps", "Model calls of the denoising loops run (rate = steps/s)",
                             registry=registry)
        self.batch = Histogram("inpaintrt_unet_batch_images", "Images denoised together in the UNet batch each "
                               "job ran in", buckets=(1, 2, 4, 8, 16, 32), registry=registry)
        self.batched = Histogram("inpaintrt_job_batch_requests", "Requests whose UNet calls each job shared, itself "
                                 "included (1: alone; --max-batch)", buckets=(1, 2, 3, 4, 6, 8, 12, 16),
                                 registry=registry)
        registry.register(_Live(manager))
        manager.listeners.append(self.job_finished)
        if not ACCESS.handlers:  # a line on stderr unless the host application routes this logger itself
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            ACCESS.addHandler(handler)
            ACCESS.setLevel(logging.INFO)
            ACCESS.propagate = False

    def job_finished(self, job) -> None:
        """Called by the JobManager (its lock held) as each job finishes: cheap, and a bug here must not
        take the worker down, so it is logged instead of raised."""
        try:
            self._record(job)
        except Exception:
            logging.getLogger("inpaintrt").exception("recording job %s for metrics failed", job.id)

    def _record(self, job) -> None:
        ran = job.finished - job.started if job.started is not None else None
        waited = (job.started or job.finished) - job.created
        self.queue_seconds.labels(job.task).observe(waited)
        if ran is not None:
            self.run_seconds.labels(job.task, job.status).observe(ran)
        self.steps.inc(job.step)
        if job.started is not None:
            self.batch.observe(job.batch_images or job.arguments.get("num_images_per_prompt", 1) or 1)
            self.batched.observe(job.batch_size)
        line = {"event": "job", "id": job.id, "task": job.task, "status": job.status, "width": job.width,
                "height": job.height, "steps": job.step, "queue_ms": round(1000 * waited, 1),
                "run_ms": None if ran is None else round(1000 * ran, 1), "seed": job.seed}
        if job.status != "done":
            line["error"] = job.error
        if self.log_prompts:
            line.update(prompt=job.arguments.get("prompt"), negative_prompt=job.arguments.get("negative_prompt"))
        ACCESS.info(json.dumps(line))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Live:
    """The figures Prometheus reads from the manager at scrape time."""

    def __init__(self, manager):
        self.manager = manager

    def collect(self):
        stats = self.manager.stats()
        for name, text, value in (
                ("inpaintrt_queue_depth", "Jobs waiting for a worker", stats["queued"]),
                ("inpaintrt_queue_size", "Queue slots (beyond them: 429)", stats["queue_size"]),
                ("inpaintrt_workers_busy", "Workers running a job", stats["busy"]),
                ("inpaintrt_workers", "Workers (engines) loaded", stats["workers"]),
                ("inpaintrt_draining", "1 while shutting down", int(stats["draining"])),
                ("inpaintrt_engine_load_seconds", "Time the engines took to load at start",
                 getattr(self.manager, "load_seconds", 0.0))):
            yield GaugeMetricFamily(name, text, value=value)


class RequestCounter:
    """ASGI middleware counting every HTTP answer by its route template (not the raw path: job ids stay out)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status.get("code", 500))).inc()
