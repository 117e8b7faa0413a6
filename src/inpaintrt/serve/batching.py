"""Cross-request batching in the server (docs/batching.md): a worker that takes a job also takes the waiting
jobs that could share its UNet calls, waits up to the batch window for more, and runs them through
`Engine.inpaint_batch`, each job keeping its own progress, cancel, warnings and result.

The key here is a quick first sort on the request's fields; the engine groups the members again by
what their prepared loops really share (engine/batch.py), so a key that is too loose costs only the
window, never a wrong picture.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..engine.arguments import is_whole
from ..engine.preflight import batchable

# what each member brings of its own; every other field must match for jobs to share a batch
PER_MEMBER = frozenset({"image", "mask_image", "prompt", "negative_prompt", "prompt_2", "negative_prompt_2"})


@dataclass(frozen=True)
class Batching:
    max_batch: int = 1  # requests per batch; 1: each job alone
    window_ms: float = 5.0  # how long a worker holding a batchable job waits for more

    def __post_init__(self):
        if not is_whole(self.max_batch) or self.max_batch < 1:
            raise ValueError(f"--max-batch must be an integer of at least 1 (1: batching off), got {self.max_batch!r}")
        if not 0 <= self.window_ms <= 1000:
            raise ValueError(f"--batch-window-ms must be between 0 and 1000 milliseconds, got {self.window_ms!r}")


def batch_key(job) -> str | None:
    """What must match for two jobs to be gathered together; None: the job runs alone (engine/preflight.py
    `batchable`: outpaint, ControlNet, image prompts and soft masks keep per-picture state)."""
    if not batchable(job.task, job.arguments):
        return None
    shared = {name: value for name, value in job.arguments.items() if name not in PER_MEMBER}
    return json.dumps(shared, sort_keys=True, default=repr)


def gather(manager, first, engine, start) -> list:
    """Call with manager.lock held, `first` already taken: the jobs to run with it, first included. Waiting
    jobs of the same key are taken in queue order (`start(job)` marks each running as it leaves the queue, so
    a cancel never looks for it there); while the batch is short, wait up to the window."""
    batching = manager.batching
    key = batch_key(first) if batching.max_batch > 1 and hasattr(engine, "inpaint_batch") else None
    if key is None:
        return [first]
    members = [first]
    deadline = time.monotonic() + batching.window_ms / 1000
    while True:
        for job in list(manager.waiting):
            if len(members) < batching.max_batch and batch_key(job) == key:
                manager.waiting.remove(job)
                start(job)
                members.append(job)
        left = deadline - time.monotonic()
        if len(members) >= batching.max_batch or left <= 0 or manager.draining:
            if manager.waiting:  # a submit's wake-up may have come here: pass it on to an idle worker
                manager.lock.notify()
            return members
        manager.lock.wait(left)  # a submit wakes it


def run_batch(manager, jobs: list, engine) -> None:
    """The jobs through one `inpaint_batch`; each finishes as its member ends (a cancelled one at once)."""
    images = sum(job.arguments.get("num_images_per_prompt") or 1 for job in jobs)
    for job in jobs:
        job.batch_size, job.batch_images = len(jobs), images
    members = [dict(job.arguments, generator=job.seed, callback_on_step_end=manager.step_callback(job, engine),
                    progress=False, output_type="pil") for job in jobs]

    def finished(index: int, outcome) -> None:
        job = jobs[index]
        manager.run_job(job, engine, lambda: _with_warnings(job, outcome))

    try:
        engine.inpaint_batch(members, on_done=finished)
        broken = RuntimeError("the batch ended without this job's result")
    except Exception as e:  # the batching itself broke: every job not finished yet fails with it
        broken = e
    for job in jobs:  # never leave a job running
        if not job.done.is_set():
            manager.run_job(job, engine, lambda: _raise(broken))


def _with_warnings(job, outcome):
    job.warnings.extend(outcome.warnings)  # the member's notices, issued in its own thread
    return outcome.result()


def _raise(error: Exception):
    raise error
