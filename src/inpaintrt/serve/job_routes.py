"""The routes that follow a queued job by its id: status, result, server-sent events, cancel; and the
one way a job's outcome becomes a response (its picture, or the refusal that says why not)."""
from __future__ import annotations

import asyncio
import base64
import json
from typing import Literal

from fastapi.responses import JSONResponse, Response, StreamingResponse

from .errors import ApiError, request_fix
from .jobs import CANCELLED, DONE, FINISHED


def add_job_routes(app, manager, guarded: list) -> None:
    """GET /v1/jobs/{id}, its /result and /events, DELETE /v1/jobs/{id}, over `manager` (every engine's jobs)."""
    def find(job_id: str):
        job = manager.get(job_id)
        if job is None:
            raise ApiError(404, "job_id", f"no job {job_id!r} (finished jobs are kept only for a while)",
                           "use the id POST /v1/jobs returned, and fetch results soon after they finish")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=guarded, summary="A job's status, progress, seed and timings")
    async def job_status(job_id: str):
        return job_view(find(job_id))

    @app.get("/v1/jobs/{job_id}/result", dependencies=guarded, summary="The finished job's PNG",
             responses={200: {"content": {"image/png": {}}}})
    async def job_result(job_id: str, response_format: Literal["png", "json"] = "png"):
        return result_response(find(job_id), response_format)

    @app.get("/v1/jobs/{job_id}/events", dependencies=guarded,
             summary="Server-sent events of this job only: `progress` (steps_done of steps; step of total model "
                     "calls), then `done`, `failed` or `cancelled`. `?previews=1`: each progress event also "
                     "carries `preview`, a PNG data: URL of the latents' cheap RGB at 1/8 size (not Kandinsky)")
    async def job_events(job_id: str, previews: bool = False):
        job = find(job_id)
        if previews:
            job.previews = True

        async def stream():
            last = None
            while True:
                view = job_view(job)
                if previews and job.preview and view["status"] not in FINISHED:
                    view["preview"] = job.preview
                if view != last:
                    kind = view["status"] if view["status"] in FINISHED else "progress"
                    yield f"event: {kind}\ndata: {json.dumps(view)}\n\n"
                    last = view
                if view["status"] in FINISHED:
                    return
                try:
                    await asyncio.wait_for(job.changed.wait(), 15.0)
                except asyncio.TimeoutError:
                    yield ": still running\n\n"  # a heartbeat, so proxies keep the stream open
                job.changed.clear()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/v1/jobs/{job_id}", dependencies=guarded,
                summary="Cancel: a queued job leaves the queue, a running one stops after its current step")
    async def cancel_job(job_id: str):
        find(job_id)
        return job_view(manager.cancel(job_id))


def job_view(job) -> dict:
    """A job as GET /v1/jobs/{id} shows it, with its result's URL once it is done."""
    view = job.snapshot()
    if job.status == DONE:
        view["result_url"] = f"/v1/jobs/{job.id}/result"
    return view


def result_response(job, response_format: str) -> Response:
    """A done job's picture (PNG, or JSON with base64), else the refusal job_refusal says."""
    refusal = job_refusal(job)
    if refusal is not None:
        raise refusal
    timings = job.snapshot()["timings"]
    if response_format == "json":
        return JSONResponse({"seed": job.seed, "width": job.width, "height": job.height, "timings": timings,
                             "replica": job.replica, "warnings": job.warnings,
                             "nsfw_content_detected": job.nsfw_content_detected,
                             "image": base64.b64encode(job.png).decode()})
    headers = {"X-Seed": str(job.seed), "X-Timings": json.dumps(timings), "X-Job-Id": job.id}
    if job.warnings:  # ASCII JSON: header values must be latin-1
        headers["X-Warnings"] = json.dumps(job.warnings)
    if job.replica:
        headers["X-Replica"] = job.replica
    if job.nsfw_content_detected is not None:
        headers["X-NSFW-Content-Detected"] = json.dumps(job.nsfw_content_detected)
    return Response(job.png, media_type="image/png", headers=headers)


def job_refusal(job) -> ApiError | None:
    """Why a job has no picture to answer with (None: it is done), as the refusal every route that waits on a job
    answers: cancelled, not run, failed (the request's fault or a bug), or still running."""
    if job.status == DONE:
        return None
    if job.status == CANCELLED and "shutting down" in (job.error or ""):
        return ApiError(503, "server", f"job {job.id} was not run: {job.error}", "retry against a running server")
    if job.status == CANCELLED:
        return ApiError(409, "job_id", f"job {job.id} was {job.error or 'cancelled'}", "submit it again")
    if job.status in FINISHED and job.retry_after is not None:  # no engine could run it: not the request's fault
        return unavailable_error(f"job {job.id} did not run: {job.error}", job.retry_after)
    if job.status in FINISHED:  # failed
        internal = (job.error or "").startswith("internal error")
        fix = ("report this with the request that caused it" if internal
               else request_fix(job.error_fix, "change the request as the message says and retry"))
        return ApiError(500 if internal else 422, job.error_field or "request", job.error or "failed", fix)
    return ApiError(409, "job_id", f"job {job.id} is {job.status} ({job.step}/{job.total})",
                    "wait for its `done` event or poll GET /v1/jobs/{id}")


def unavailable_error(message: str, retry_after: int) -> ApiError:
    """No engine can run the work now (not the request's fault): a 503 with the seconds to wait."""
    return ApiError(503, "server", message, "retry after the Retry-After seconds",
                    headers={"Retry-After": str(retry_after)})
