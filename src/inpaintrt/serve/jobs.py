"""Jobs: a bounded queue, worker threads that each own one Engine, per-job progress and cancellation.

Why threads: ONNX Runtime releases the GIL while a graph runs, so N workers with N engines run N
requests at once; an Engine is never touched by two threads (each worker loads its own). Nothing
here knows about HTTP: the app turns a Job into responses and events.
"""
from __future__ import annotations

import asyncio
import collections
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..runtime import notices
from ..runtime.latent_preview import preview_data_url
from .batching import Batching, gather, run_batch
from .pictures import png_bytes

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
TASKS = ("inpaint", "outpaint")  # the Engine methods a job may call


class QueueFull(Exception):
    """Every waiting slot is taken; the client should retry later."""


class ShuttingDown(Exception):
    """The server is draining for exit and takes no new work."""


class EngineUnavailable(Exception):
    """No engine can run the job now (on Ray Serve: no replica is alive); the client should retry later."""

    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message)
        self.retry_after = retry_after


class JobCancelled(Exception):
    """Raised inside the denoising loop (from the step callback) to stop a cancelled job."""


@dataclass
class Job:
    id: str
    arguments: dict  # keyword arguments for Engine.inpaint / outpaint (pictures already decoded)
    seed: int
    task: str = "inpaint"  # the Engine method that runs it: inpaint or outpaint
    status: str = QUEUED
    step: int = 0
    total: int = 0  # model calls (PNDM adds a warm-up call; strength < 1 makes fewer; outpaint: every pass)
    steps: int = 0  # the num_inference_steps asked for: what progress is shown against
    previews: bool = False  # an event stream asked for live previews
    preview: str | None = None  # the latest: the latents' cheap RGB as a PNG data: URL
    error: str | None = None
    error_field: str | None = None  # a refused input's field and fix, from the engine's InvalidArgument
    error_fix: str | None = None
    warnings: list = field(default_factory=list)  # e.g. a prompt cut at CLIP's 77 tokens (prompt_syntax plain)
    png: bytes | None = None
    nsfw_content_detected: list | None = None  # [True] when the safety checker blacked the picture out
    width: int = 0
    height: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    worker: int | None = None
    replica: str | None = None  # on Ray Serve: the engine replica that ran it
    batch_size: int = 1  # requests whose UNet calls it shared, itself included (batching.py)
    batch_images: int = 0  # images in those UNet calls (0: its own num_images_per_prompt)
    restarts: list = field(default_factory=list)  # on Ray Serve: why the job was rerun from step 0
    retry_after: int | None = None  # failed because no engine was available: retry after these seconds
    # set on the event loop's thread each time the job changes; awaited by the job's event stream
    changed: asyncio.Event | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def snapshot(self) -> dict:
        timings = {"queued_ms": _ms(self.created, self.started or self.finished),
                   "run_ms": _ms(self.started, self.finished)}
        steps = self.steps or self.total
        steps_done = steps if self.status == DONE else min(steps, self.step * steps // max(1, self.total))
        return {"id": self.id, "status": self.status, "step": self.step, "total": self.total, "steps": steps,
                "steps_done": steps_done, "seed": self.seed,
                "error": self.error, "warnings": list(self.warnings), "width": self.width, "height": self.height,
                "nsfw_content_detected": self.nsfw_content_detected,
                "timings": timings, **({"restarted": list(self.restarts)} if self.restarts else {})}


def call_engine(engine, task: str, arguments: dict, seed: int, on_step: Callable, **more):
    """engine.<task>(arguments) with the job's seed and step callback; an eraser (one forward pass, no noise)
    takes neither, so it runs and then counts its one step (which also honours a cancel asked meanwhile)."""
    if getattr(getattr(engine, "record", None), "eraser", False):
        result = getattr(engine, task)(**arguments, progress=False, **more)
        on_step(0, None, None)
        return result
    return getattr(engine, task)(**arguments, generator=seed, callback_on_step_end=on_step, progress=False, **more)


def _preview(latents, space: str | None) -> str | None:
    try:
        return preview_data_url(latents, space)
    except Exception:  # a preview is a nicety: it never fails the job
        return None


def _ms(start, end) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 1)


class JobManager:
    """Owns the queue and the workers. Thread-safe; `loop` is where job change notifications go."""

    def __init__(self, load_engine: Callable[[], Any], workers: int = 1, queue_size: int = 8,
                 keep_finished: int = 64, batching: Batching | None = None):
        self.load_engine, self.worker_count, self.queue_size = load_engine, workers, queue_size
        self.batching = batching or Batching()  # off unless max_batch > 1
        self.keep_finished = keep_finished
        self.jobs: dict[str, Job] = {}
        self.waiting: collections.deque[Job] = collections.deque()
        self.finished_order: collections.deque[str] = collections.deque()
        self.lock = threading.Condition()
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.threads: list[threading.Thread] = []
        self.engines: list[Any] = []
        self.run_seconds = 1.0  # moving average of finished runs, for Retry-After
        self.listeners: list[Callable[[Job], None]] = []  # called as each job finishes, lock held
        self.load_seconds = 0.0  # what loading the engines took at start
        self.unavailable: str | None = None  # why no engine can run jobs now (set by the Ray ingress)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load one engine per worker (here, so a broken directory fails the start) and start the workers."""
        self.loop = loop
        started = time.monotonic()
        self.engines = [self.load_engine() for _ in range(self.worker_count)]
        self.load_seconds = time.monotonic() - started
        for index, engine in enumerate(self.engines):
            thread = threading.Thread(target=self._work, args=(index, engine), name=f"inpaint-worker-{index}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def submit(self, arguments: dict, seed: int, total: int, task: str = "inpaint", steps: int = 0) -> Job:
        """Queue a job; `total` is the number of model calls it will report, `steps` the num_inference_steps
        asked for (progress in the user's terms: `steps_done` of `steps`); `task` the Engine method."""
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {TASKS}")
        job = Job(id=secrets.token_urlsafe(16), arguments=arguments, seed=seed, total=total, task=task,
                  steps=steps)
        if self.loop is not None:
            job.changed = asyncio.Event()
        with self.lock:
            if self.draining:
                raise ShuttingDown()
            if self.unavailable:
                raise EngineUnavailable(self.unavailable)
            if len(self.waiting) >= self.queue_size:
                raise QueueFull()
            self.jobs[job.id] = job
            self.waiting.append(job)
            self.lock.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """A queued job leaves the queue now; a running one stops after its current step."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.status in FINISHED:
                return job
            job.cancel_requested = True
            if job.status == QUEUED:
                self.waiting.remove(job)  # frees its queue slot at once
                self._finish(job, CANCELLED, "cancelled while queued, before it ran")
        return job

    def forget(self, job_id: str) -> None:
        """Drop a finished job's result now (the synchronous endpoint has answered with it)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None and job.status in FINISHED:
                del self.jobs[job_id]

    def stats(self) -> dict:
        with self.lock:
            return {"workers": self.worker_count, "busy": self._busy_workers(), "queued": len(self.waiting),
                    "queue_size": self.queue_size, "draining": self.draining}

    def _busy_workers(self) -> int:
        """Workers holding a running job, read from the jobs themselves (lock held): a job is finished,
        and its worker free, before its answer can be sent, so a client never sees its own job as busy."""
        return len({job.worker for job in self.jobs.values() if job.status == RUNNING})

    def recent_run_seconds(self) -> float:
        return self.run_seconds

    def drain(self) -> None:
        """Shutdown: take no new jobs and cancel the queued ones; running jobs finish."""
        with self.lock:
            self.draining = True
            while self.waiting:
                self._finish(self.waiting.popleft(), CANCELLED, "the server is shutting down; submit again later")
            self.lock.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Exit: drain, cancel what still runs (it stops within one step) and join the workers."""
        self.drain()
        with self.lock:
            for job in self.jobs.values():
                if job.status == RUNNING:
                    job.cancel_requested = True
        for thread in self.threads:
            thread.join(timeout)

    # -- worker side ---------------------------------------------------------------------------

    def _work(self, index: int, engine) -> None:
        while True:
            with self.lock:
                while not self.waiting and not self.draining:
                    self.lock.wait()
                if not self.waiting:
                    return  # draining and nothing left
                job = self.waiting.popleft()
                self._start(job, index)
                jobs = gather(self, job, engine, lambda other: self._start(other, index))  # batching.py
            for each in jobs:
                self._notify(each)
            if len(jobs) > 1:
                run_batch(self, jobs, engine)
            else:
                self.run_job(job, engine)

    def _start(self, job: Job, worker: int) -> None:
        """Call with the lock held, as the job leaves the queue."""
        job.status, job.started, job.worker = RUNNING, time.monotonic(), worker

    def step_callback(self, job: Job, engine) -> Callable:
        """The job's callback_on_step_end: progress, previews, and its cancel."""
        def on_step(step, timestep, latents):  # counted, not read from `step`: outpaint restarts it each pass
            job.step += 1
            job.total = max(job.total, job.step)
            if job.previews and latents is not None:  # a Ray replica reports its steps without latents
                job.preview = _preview(latents, engine.record.preview)
            self._notify(job)
            if job.cancel_requested:
                raise JobCancelled()

        return on_step

    def run_job(self, job: Job, engine, call: Callable | None = None) -> None:
        """Run the job (or take its result from `call`: a batch member's) and finish it."""
        on_step = self.step_callback(job, engine)

        def on_restart(reason: str):  # a remote engine reruns the job from its first step
            job.step = 0
            job.restarts.append(reason)
            self._notify(job)

        rerun = {"on_restart": on_restart} if getattr(engine, "reruns_jobs", False) else {}
        try:
            with notices.collect() as job.warnings:
                result = call() if call is not None else call_engine(engine, job.task, job.arguments, job.seed,
                                                                      on_step, output_type="pil", **rerun)
            job.nsfw_content_detected = getattr(result, "nsfw_content_detected", None)  # None: no checker ran
            if hasattr(result, "png"):  # a Ray replica sends the PNG itself
                job.png, job.width, job.height, job.replica = result.png, result.width, result.height, result.replica
            else:
                picture = result.images[0]
                job.png, (job.width, job.height) = png_bytes(picture, fast=True), picture.size
            outcome, error = DONE, None
        except JobCancelled:
            outcome, error = CANCELLED, f"cancelled after {job.step} of {job.total} steps"
            if self.draining:  # stopped by shutdown, not by its client: the answer says to submit again
                error += "; the server is shutting down; submit again later"
        except EngineUnavailable as e:
            outcome, error, job.retry_after = FAILED, f"engine unavailable: {e}", e.retry_after
        except (ValueError, FloatingPointError) as e:  # the engine's documented bad-input errors
            outcome, error = FAILED, str(e)
            job.error_field, job.error_fix = getattr(e, "field", None), getattr(e, "fix", None)
        except Exception as e:  # a worker must survive anything one request does
            outcome, error = FAILED, f"internal error: {type(e).__name__}: {e}"
        with self.lock:
            if outcome == DONE:
                self.run_seconds = 0.8 * self.run_seconds + 0.2 * (time.monotonic() - job.started)
            self._finish(job, outcome, error)

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        """Call with the lock held."""
        job.status, job.error, job.finished = status, error, time.monotonic()
        for listener in self.listeners:  # metrics and the access log: quick, and they never raise
            listener(job)
        job.arguments = {}  # the decoded pictures are not needed any more
        self.finished_order.append(job.id)
        while len(self.finished_order) > self.keep_finished:  # bounded memory: old results go
            self.jobs.pop(self.finished_order.popleft(), None)
        job.done.set()
        self._notify(job)

    def _notify(self, job: Job) -> None:
        if self.loop is not None and job.changed is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(job.changed.set)
            except RuntimeError:  # the loop closed between the check and the call
                pass
