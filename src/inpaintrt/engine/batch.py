"""Several inpaint requests through one denoising loop (docs/batching.md).

Each member runs the engine's own `inpaint` in a thread of its own, so its checks, set-up and
post-processing are exactly those of a request alone; only the loop is shared. The engine's call
to the loop (`run_loop`) hands the member's prepared Request to a rendezvous which, once every
member has arrived or failed, runs the members whose loops agree in shape and per-row arithmetic
(`loop_key`) as one batch: pictures stacked, each with its own rows and its own generator
(runtime/noise.py StackedGenerator). Set-up and post-processing take turns, one member at a time,
so the engine's sessions never serve two members at once.
"""
from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..runtime import notices
from ..runtime.inpaint import Request, StopDenoising, denoise
from ..runtime.noise import StackedGenerator

_SLOT: contextvars.ContextVar = contextvars.ContextVar("inpaintrt_batch_slot", default=None)


@dataclass
class Outcome:
    """One member's result: the engine's output, or the exception it raised (alone, it would have raised it)."""
    output: Any = None
    error: BaseException | None = None
    warnings: list = field(default_factory=list)  # runtime/notices.py notices issued for this member

    def result(self):
        if self.error is not None:
            raise self.error
        return self.output


@dataclass
class Arrival:
    """A member's prepared loop, waiting for its latents."""
    models: Any
    scheduler: Any
    request: Request
    generator: Any
    xp: Any
    latents: Any = None
    error: BaseException | None = None
    stopped: Any = None  # the latents when the member's callback raised StopDenoising
    ready: threading.Event = field(default_factory=threading.Event)

    def deliver(self, latents=None, error: BaseException | None = None) -> None:
        self.latents, self.error = latents, error
        self.ready.set()


def run_loop(models, scheduler, request: Request, generator, progress: Callable = iter, xp=np):
    """The engine's call to the denoising loop: the loop itself, or inside inpaint_batch this member's rows
    of the batch's loop."""
    slot = _SLOT.get()
    if slot is None:
        return denoise(models, scheduler, request, generator, progress, xp)
    rendezvous, index = slot
    return rendezvous.arrive(index, Arrival(models, scheduler, request, generator, xp))


class Rendezvous:
    def __init__(self, count: int):
        self.pending = set(range(count))  # members neither arrived nor gone
        self.arrivals: dict[int, Arrival] = {}
        self.changed = threading.Condition()
        self.turn = threading.Lock()  # held by the member whose set-up or post-processing runs

    def arrive(self, index: int, arrival: Arrival):
        with self.changed:
            if index not in self.pending:  # the batch's one loop has been run (or is running) without it
                raise RuntimeError(f"batch member {index} reached the denoising loop twice; run such calls alone")
            self.arrivals[index] = arrival
            self.pending.discard(index)
            self.changed.notify_all()
        self.turn.release()  # the next member prepares while this one waits
        arrival.ready.wait()
        self.turn.acquire()
        if arrival.error is not None:
            raise arrival.error
        return arrival.latents

    def gone(self, index: int) -> None:
        with self.changed:
            self.pending.discard(index)
            self.changed.notify_all()

    def all_arrived(self) -> dict[int, Arrival]:
        with self.changed:
            while self.pending:
                self.changed.wait()
            return dict(self.arrivals)


def inpaint_batch(engine, members: list[dict], on_done: Callable | None = None) -> list[Outcome]:
    """`engine.inpaint(**member)` for each member, their loops run together where they agree (docs/batching.md).

    A member's bad input fails that member only (its Outcome holds the error). A member whose step callback
    (the short form only) raises stops: StopDenoising keeps its latents so far, as alone; any other
    exception (a cancel) is its result at once. `on_done(index, outcome)` is called as each member ends."""
    rendezvous = Rendezvous(len(members))
    outcomes: list[Outcome | None] = [None] * len(members)
    threads = [threading.Thread(target=_member, args=(engine, rendezvous, i, arguments, outcomes, on_done),
                                name=f"inpaint-batch-member-{i}", daemon=True) for i, arguments in enumerate(members)]
    with rendezvous.turn:  # members prepare one at a time: none starts before all threads exist
        for thread in threads:
            thread.start()
    arrivals = rendezvous.all_arrived()
    for group in _groups(arrivals):
        _run_group([arrivals[i] for i in group])
    for thread in threads:
        thread.join()
    return outcomes


def _member(engine, rendezvous: Rendezvous, index: int, arguments: dict, outcomes: list, on_done) -> None:
    _SLOT.set((rendezvous, index))  # this thread's own context: other threads' loops run alone
    outcome = Outcome()
    with rendezvous.turn:
        try:
            with notices.collect() as outcome.warnings:
                outcome.output = engine.inpaint(**arguments)
        except Exception as e:  # reported to the caller as this member's result
            outcome.error = e
        finally:
            rendezvous.gone(index)
        outcomes[index] = outcome
        if on_done is not None:
            on_done(index, outcome)


def loop_key(arrival: Arrival):
    """What members must share to share UNet calls: everything that sets the loop's shape or its per-row
    arithmetic. None: this member runs alone (features that keep state per picture, or read more than
    its latents in the step callback)."""
    r, s = arrival.request, arrival.scheduler
    callback_ok = r.callback is None or getattr(r.callback, "diffusers", True) is False
    if (r.control is not None or r.change_map is not None or r.latent_masking is not None or r.latents is not None
            or r.image_latents is not None or r.counts is not None or not callback_ok):
        return None
    feeds = tuple((name, value.shape[1:], str(value.dtype)) for name, value in sorted(r.conditioning.items()))
    return (id(arrival.models), id(arrival.xp), r.image.shape, r.guided, r.guidance_scale, r.num_inference_steps,
            r.strength, r.denoising_start, r.denoising_end, r.masked_content, feeds, type(s).__name__,
            repr(sorted(s.config.items())), repr(sorted(s.options.items())))


def _groups(arrivals: dict[int, Arrival]) -> list[list[int]]:
    """Members in arrival order, grouped by loop key; those without one alone."""
    groups: dict[Any, list[int]] = {}
    for index in sorted(arrivals):
        key = loop_key(arrivals[index])
        groups.setdefault(("alone", index) if key is None else key, []).append(index)
    return list(groups.values())


def _run_group(group: list[Arrival]) -> None:
    """One loop for the group; every member gets its rows (or the loop's error)."""
    first = group[0]
    try:
        if len(group) == 1:
            latents = [denoise(first.models, first.scheduler, first.request, first.generator, iter, first.xp)]
        else:
            latents = _denoise_together(group)
    except Exception as e:  # not one member's input (each was prepared alone): the group's loop failed
        for arrival in group:
            if not arrival.ready.is_set():
                arrival.deliver(error=e)
        return
    for arrival, rows in zip(group, latents):
        if not arrival.ready.is_set():  # a cancelled member has its error already
            arrival.deliver(rows if arrival.stopped is None else arrival.stopped)


def _denoise_together(group: list[Arrival]) -> list:
    first = group[0]
    counts = tuple(a.request.batch for a in group)
    request = Request(
        image=np.concatenate([a.request.image for a in group]), mask=np.concatenate([a.request.mask for a in group]),
        conditioning=_stacked_conditioning(group), batch=sum(counts), guidance_scale=first.request.guidance_scale,
        num_inference_steps=first.request.num_inference_steps, strength=first.request.strength,
        callback=_MemberCallbacks(group), denoising_start=first.request.denoising_start,
        denoising_end=first.request.denoising_end, masked_content=first.request.masked_content, counts=counts)
    generator = StackedGenerator([a.generator for a in group], counts)
    final = denoise(first.models, first.scheduler, request, generator, iter, first.xp)
    return [final[rows] for rows in _row_slices(counts)]


def _row_slices(counts: tuple[int, ...]) -> list[slice]:
    """Each member's rows of the batch's latents, in member order."""
    starts = np.cumsum((0,) + tuple(counts))
    return [slice(int(start), int(end)) for start, end in zip(starts[:-1], starts[1:])]


def _stacked_conditioning(group: list[Arrival]) -> dict:
    """Each feed's rows: guided, every member's uncond rows then every member's cond rows (the loop splits the
    prediction in two halves)."""
    guided = group[0].request.guided
    stacked = {}
    for name in group[0].request.conditioning:
        halves = [[a.request.conditioning[name][:a.request.batch] for a in group]]
        if guided:
            halves.append([a.request.conditioning[name][a.request.batch:] for a in group])
        stacked[name] = np.concatenate([rows for half in halves for rows in half])
    return stacked


class _MemberCallbacks:
    """The batch's step callback: each member's own callback on its rows of the latents."""

    def __init__(self, group: list[Arrival]):
        self.group = group
        self.rows = _row_slices(tuple(a.request.batch for a in group))

    def wants(self, name: str) -> bool:
        return name == "latents"

    def __call__(self, step: int, timestep, arrays: dict) -> tuple[dict, bool]:
        latents, replaced = arrays["latents"], None
        for arrival, rows in zip(self.group, self.rows):
            if arrival.request.callback is None or arrival.ready.is_set() or arrival.stopped is not None:
                continue
            try:
                changed, _ = arrival.request.callback(step, timestep, {"latents": latents[rows]})
            except StopDenoising:  # this member finishes here, as it would alone
                arrival.stopped = latents[rows].copy()
                continue
            except Exception as e:  # e.g. a cancel: the member's result now; the others go on
                arrival.deliver(error=e)
                continue
            if "latents" in changed:
                mine = arrival.xp.asarray(changed["latents"], dtype=np.float32)
                if mine.shape != latents[rows].shape:  # this member's callback is wrong: the others go on
                    arrival.deliver(error=ValueError(
                        f"callback_on_step_end returned latents of shape {mine.shape}; return {latents[rows].shape} "
                        "or None"))
                    continue
                replaced = latents.copy() if replaced is None else replaced
                replaced[rows] = mine
        if all(a.ready.is_set() or a.stopped is not None for a in self.group):
            raise StopDenoising()  # nobody waits for the remaining steps
        return ({} if replaced is None else {"latents": replaced}), False
