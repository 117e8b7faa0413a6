"""Several engines in one server: each has its own JobManager (workers and queue), so one model's jobs
never wait behind another's; a request picks one by its `model` field (left out: the first engine).

`ServedEngines` also stands in for one JobManager where the server watches them all (metrics, health,
shutdown, finding a job by id): figures are summed, job ids are looked up in every manager.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.manifest import DIFFUSION
from .errors import ApiError
from .jobs import JobManager


def engine_name(engine_dir) -> str:
    """An engine's name in requests: its directory's basename."""
    path = Path(engine_dir)
    return path.name or path.resolve().name


def check_names(engine_dirs: list) -> list[str]:
    """The names, or a ValueError naming --engine when two directories share one."""
    names: dict[str, str] = {}
    for directory in engine_dirs:
        name = engine_name(directory)
        if name in names:
            raise ValueError(f"--engine {names[name]} and --engine {directory} are both named {name!r}; requests "
                             "pick an engine by its directory's name, so give each --engine directory its own name")
        names[name] = str(directory)
    return list(names)


@dataclass
class ServedEngine:
    name: str
    directory: str
    manager: JobManager
    facts: dict = field(default_factory=dict)  # filled once its engines are loaded
    # a mask maker's engines lent one request at a time (segmenting.EnginePool), made on first use; server state,
    # not a fact: public_facts leaves it out, and it takes no part in repr or comparison
    segment_pool: object = field(default=None, repr=False, compare=False)

    def kind(self) -> str:
        return self.facts.get("kind", DIFFUSION)  # hand-made facts (a test's) may not say it

    def public_facts(self) -> dict:
        return {"name": self.name, **{k: v for k, v in self.facts.items() if k != "scheduler_config"}}


class ServedEngines:
    """The server's engines by name, the first the default."""

    def __init__(self, entries: list[tuple[str, JobManager]]):
        names = check_names([directory for directory, _ in entries])
        self.models = {name: ServedEngine(name, str(directory), manager)
                       for name, (directory, manager) in zip(names, entries)}
        self.default = self.models[names[0]]
        self.listeners: list = []  # one list shared by every manager: metrics and the access log see all jobs
        for model in self:
            model.manager.listeners = self.listeners

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def names(self) -> list[str]:
        return list(self.models)

    def of_kind(self, *kinds: str) -> list[ServedEngine]:
        """The engines whose kind (engine/families.py: diffusion, eraser, segmenter) is one of `kinds`, in order."""
        return [model for model in self if model.kind() in kinds]

    def pick(self, name: str | None, field_name: str = "model") -> ServedEngine:
        if name is None or name == "":
            return self.default
        if name not in self.models:
            listed = ", ".join(self.models)
            raise ApiError(422, field_name, f"{field_name}={name!r} is not an engine of this server ({listed})",
                           f"send one of {listed}, or leave {field_name} out for the default, {self.default.name}")
        return self.models[name]

    def facts_for(self, name: str | None) -> dict:
        return self.pick(name).facts

    async def start(self, loop: asyncio.AbstractEventLoop, facts_of) -> None:
        """Load every model's engines at once (each in its own thread), then read their facts."""
        await asyncio.gather(*(asyncio.to_thread(model.manager.start, loop) for model in self))
        for model in self:
            model.facts.update(facts_of(model.manager.engines[0]))

    # -- what stands in for one JobManager --------------------------------------------------------

    def manager_of(self, job_id: str) -> JobManager | None:
        for model in self:
            if model.manager.get(job_id) is not None:
                return model.manager
        return None

    def get(self, job_id: str):
        manager = self.manager_of(job_id)
        return manager.get(job_id) if manager else None

    def cancel(self, job_id: str):
        manager = self.manager_of(job_id)
        return manager.cancel(job_id) if manager else None

    def forget(self, job_id: str) -> None:
        manager = self.manager_of(job_id)
        if manager:
            manager.forget(job_id)

    @property
    def draining(self) -> bool:
        return any(model.manager.draining for model in self)

    @property
    def unavailable(self) -> str | None:
        return next((model.manager.unavailable for model in self if model.manager.unavailable), None)

    @property
    def worker_count(self) -> int:
        return sum(model.manager.worker_count for model in self)

    @property
    def load_seconds(self) -> float:
        return max(model.manager.load_seconds for model in self)  # loaded side by side

    def stats(self) -> dict:
        """Summed over the engines (health and /metrics); `models` splits them when there are several."""
        each = {model.name: model.manager.stats() for model in self}
        total = {"workers": 0, "busy": 0, "queued": 0, "queue_size": 0, "draining": self.draining}
        for stats in each.values():
            for key in ("workers", "busy", "queued", "queue_size"):
                total[key] += stats[key]
        return total if len(each) == 1 else {**total, "models": each}

    def drain(self) -> None:
        for model in self:
            model.manager.drain()

    def stop(self) -> None:
        for model in self:
            model.manager.stop()
