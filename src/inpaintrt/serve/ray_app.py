"""The same API on Ray Serve: an ingress deployment (the FastAPI app, its queue and job events) and an
engine deployment whose replicas each load one Engine once and run one request at a time.

    inpaint-serve --engine DIR --ray --replicas 2
    serve run inpaintrt.serve.ray_app:app_builder engine_dir=DIR replicas=2      # on a running cluster

The ingress keeps the JobManager of the single-process server; its workers, instead of owning an
Engine, stream each request to an engine replica (Ray's router picks one) and turn the replica's
step events into the job's progress, so /v1/jobs, events and cancel behave the same.

A replica that dies mid-job costs the job its progress, not its answer: the job reruns once, from step
0, with the same arguments and seed (so the same picture) on a replica that is alive; its status says
`restarted`. See docs/reliability.md.
"""
from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

from ..engine.load_options import LoadOptions
from .app import Settings, create_app, engine_facts, open_engine
from .jobs import RUNNING, TASKS, EngineUnavailable, JobCancelled, JobManager, call_engine
from .pictures import png_bytes

APP_NAME = "inpaintrt"
ENGINE_DEPLOYMENT = "InpaintEngine"
INGRESS_DEPLOYMENT = "InpaintIngress"
REPLICA_WAIT_S = 60.0  # how long a job whose replica died waits for a live one before it fails with 503
# what a call raises when the replica running it dies (ActorDiedError, ActorUnavailableError are RayActorErrors)
REPLICA_GONE = (RayActorError, ReplicaUnavailableError)


@serve.deployment(name=ENGINE_DEPLOYMENT, max_ongoing_requests=1)  # one Engine, one request at a time
class InpaintEngine:
    def __init__(self, settings: dict):
        self.engine = open_engine(Settings(**settings))  # once per replica
        self.replica = serve.get_replica_context().replica_id.unique_id

    def facts(self) -> dict:
        return engine_facts(self.engine)

    def pid(self) -> int:
        """The replica's process id (the fault tests kill it)."""
        return os.getpid()

    async def run(self, arguments: dict, seed: int, task: str = "inpaint"):
        """Stream ("step", n) while denoising, then ("done", png, width, height, replica), ("cancelled",) or
        ("failed", message). Closing the stream (a cancelled job) stops the engine after its current step.
        task: the Engine method (inpaint or outpaint)."""
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {TASKS}")
        events: queue.Queue = queue.Queue()
        stop = threading.Event()

        def on_step(step, timestep, latents):
            events.put(("step", step + 1))
            if stop.is_set():
                raise JobCancelled()

        def work():
            try:
                result = call_engine(self.engine, task, arguments, seed, on_step)  # an eraser takes no seed
                picture = result.images[0]
                events.put(("done", png_bytes(picture, fast=True), picture.width, picture.height, self.replica,
                            result.nsfw_content_detected))
            except JobCancelled:
                events.put(("cancelled",))
            except (ValueError, FloatingPointError) as e:
                events.put(("failed", str(e)))
            except Exception as e:  # the replica must survive anything one request does
                events.put(("failed", f"internal error: {type(e).__name__}: {e}"))

        thread = threading.Thread(target=work, name="inpaint-run", daemon=True)
        thread.start()
        try:
            while True:
                event = await asyncio.to_thread(events.get)
                yield event
                if event[0] != "step":
                    return
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)  # the next request must not share the engine


@dataclass
class RemoteResult:
    png: bytes
    width: int
    height: int
    replica: str
    nsfw_content_detected: list | None = None  # from the replica's safety checker


class RemoteEngine:
    """What a JobManager worker calls instead of a local Engine: one streamed call to a replica, and
    one rerun on another when that replica dies."""

    reruns_jobs = True  # JobManager passes on_restart

    def __init__(self, handle, replica_wait_s: float = REPLICA_WAIT_S, unavailable=lambda: None):
        self.handle, self.replica_wait_s, self.unavailable = handle, replica_wait_s, unavailable
        self.remote_facts = handle.facts.remote().result()

    def inpaint(self, **arguments):
        return self._run("inpaint", **arguments)

    def outpaint(self, **arguments):
        return self._run("outpaint", **arguments)

    def _run(self, task, *, generator, callback_on_step_end, on_restart=None, progress=False, output_type="pil",
             **arguments):
        if self.unavailable():  # fail fast instead of waiting on a replica that cannot start
            raise EngineUnavailable(self.unavailable(), retry_after=round(self.replica_wait_s))
        try:
            return self._stream(task, arguments, generator, callback_on_step_end)
        except REPLICA_GONE as e:
            gone = type(e).__name__
        if on_restart is not None:
            on_restart(f"the engine replica running it stopped ({gone}); rerun from step 0 on a live replica")
        self._wait_for_a_replica()
        try:
            return self._stream(task, arguments, generator, callback_on_step_end)
        except REPLICA_GONE as e:
            raise EngineUnavailable(f"the engine replicas running it stopped twice ({gone}, {type(e).__name__})",
                                    retry_after=round(self.replica_wait_s)) from e

    def _stream(self, task, arguments, seed, callback_on_step_end):
        stream = self.handle.options(stream=True).run.remote(arguments, seed, task)
        for event in stream:
            if event[0] == "step":
                try:
                    callback_on_step_end(event[1] - 1, None, None)
                except JobCancelled:
                    stream.cancel()
                    raise
            elif event[0] == "done":
                return RemoteResult(*event[1:])
            elif event[0] == "cancelled":
                raise JobCancelled()
            elif event[1].startswith("internal error"):
                raise RuntimeError(event[1])
            else:
                raise ValueError(event[1])
        raise RuntimeError("the engine replica ended the stream without a result")

    def _wait_for_a_replica(self) -> None:
        """Returns once a replica answers (Serve restarts dead ones); EngineUnavailable after replica_wait_s."""
        deadline = time.monotonic() + self.replica_wait_s
        while (left := deadline - time.monotonic()) > 0 and not self.unavailable():
            ping = self.handle.pid.remote()
            try:
                ping.result(timeout_s=left)
                return
            except TimeoutError:  # the job fails now: a ping left waiting would take a replica that comes back
                ping.cancel()
                break
            except REPLICA_GONE:
                time.sleep(min(0.5, max(0.0, left)))
        raise EngineUnavailable(self.unavailable() or f"no engine replica answered within {self.replica_wait_s:g} s",
                                retry_after=round(self.replica_wait_s))


class ReplicaWatch:
    """Polls Serve's status of the engine deployment, so /v1/health and new requests learn at once that
    no replica can run a job (e.g. a replica's engine folder is unreadable) instead of waiting forever."""

    def __init__(self, manager: JobManager, app_name: str, grace_s: float, every_s: float = 2.0):
        self.manager, self.app_name, self.grace_s, self.every_s = manager, app_name, grace_s, every_s
        self.none_running_since: float | None = None
        threading.Thread(target=self._watch, name="replica-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self.manager.draining:
            try:
                self.manager.unavailable = self.problem(serve.status().applications[self.app_name]
                                                        .deployments[ENGINE_DEPLOYMENT])
            except Exception:  # Serve is shutting down or the controller restarts: keep the last answer
                pass
            time.sleep(self.every_s)

    def problem(self, deployment) -> str | None:
        running = deployment.replica_states.get("RUNNING", 0)
        if running:
            self.none_running_since = None
            return None
        self.none_running_since = self.none_running_since or time.monotonic()
        failed = deployment.status in ("UNHEALTHY", "DEPLOY_FAILED")  # a str Enum
        if failed or time.monotonic() - self.none_running_since > self.grace_s:
            why = (deployment.message or "").strip().splitlines()
            return "no engine replica is running" + (f": {why[-1][:300]}" if why else "")
        return None


@serve.ingress()
class InpaintIngress:
    """The FastAPI app (built in the replica, so its JobManager lives here) and `drain`, which the CLI
    calls on SIGTERM before Serve shuts down."""

    def __init__(self, fields: dict, engine_handle, workers: int, replica_wait_s: float = REPLICA_WAIT_S):
        self.fields, self.engine_handle, self.workers, self.replica_wait_s = fields, engine_handle, workers, replica_wait_s
        self.manager: JobManager | None = None

    def __serve_build_asgi_app__(self):
        settings = Settings(**self.fields)
        manager = JobManager(lambda: RemoteEngine(self.engine_handle, self.replica_wait_s,
                                                  lambda: manager.unavailable),
                             self.workers, settings.queue_size, settings.keep_finished)
        self.manager = manager
        ReplicaWatch(manager, serve.get_replica_context().app_name, self.replica_wait_s)
        return create_app(settings, manager=manager)

    async def drain(self, finish_s: float) -> dict:
        """Queued jobs end at once (503); running ones get finish_s to finish, then stop at their next
        step (503 as well). Returns once no job runs, so every waiting client has its answer. Async:
        the event loop keeps sending those answers meanwhile."""
        manager = self.manager
        manager.drain()
        deadline = time.monotonic() + finish_s
        while self._running(manager) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stopped = self._running(manager)
        with manager.lock:
            for job in manager.jobs.values():
                if job.status == RUNNING:
                    job.cancel_requested = True
        while self._running(manager) and time.monotonic() < deadline + 10:
            await asyncio.sleep(0.1)
        return {"stopped": stopped, "still_running": self._running(manager)}

    @staticmethod
    def _running(manager: JobManager) -> int:
        return manager.stats()["busy"]


def build_application(settings: Settings, replicas: int | str = 1, num_gpus: float | None = None,
                      replica_wait_s: float = REPLICA_WAIT_S):
    """The bound Serve application: ingress -> engine replicas. replicas: a count, or "auto" to autoscale
    between 1 and settings.workers replicas. replica_wait_s: how long a job whose replica died waits for
    a live one."""
    if settings.max_batch > 1:  # the ingress hands each job to a replica that runs one request at a time
        raise ValueError("max_batch batches within one process; on Ray Serve leave it at 1 and scale with replicas")
    if settings.more_engines:  # the ingress routes to one engine deployment
        raise ValueError("Ray Serve serves one engine; pass a single --engine (or serve each on its own)")
    if num_gpus is None:
        num_gpus = 1 if uses_gpu(settings) else 0
    engine_options = {"ray_actor_options": {"num_cpus": 1, "num_gpus": num_gpus}}
    if replicas == "auto":
        engine_options["autoscaling_config"] = {"min_replicas": 1, "max_replicas": max(1, settings.workers),
                                                "target_ongoing_requests": 1}
        workers = max(1, settings.workers)
    else:
        engine_options["num_replicas"] = int(replicas)
        workers = int(replicas)  # one in-flight call per replica keeps every replica busy
    engine = InpaintEngine.options(**engine_options).bind(asdict(settings))
    fields = {**asdict(settings), "workers": workers}
    ingress = serve.deployment(InpaintIngress, name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=1000)
    return ingress.bind(fields, engine, workers, replica_wait_s)


def uses_gpu(settings: Settings) -> bool:
    from ..engine.manifest import read_manifest

    if settings.load.backend in ("tensorrt", "ort-cuda") or settings.load.precision == "fp16":
        return True
    return settings.load.backend == "auto" and "tensorrt" in read_manifest(settings.engine_dir, verify_hashes=False)


def deploy(settings: Settings, host: str = "127.0.0.1", port: int = 8000, replicas: int | str = 1,
           replica_wait_s: float = REPLICA_WAIT_S) -> str:
    """Start Serve's HTTP proxy on host:port and deploy; returns the URL once every replica is up."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(settings, replicas, replica_wait_s=replica_wait_s), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def drain(finish_s: float = 10.0) -> dict:
    """Ask the ingress to finish (or, after finish_s, stop) its jobs so every client gets an answer
    before Serve's shutdown closes the HTTP proxy."""
    ingress = serve.get_deployment_handle(INGRESS_DEPLOYMENT, app_name=APP_NAME)
    return ingress.drain.remote(finish_s).result(timeout_s=finish_s + 15)


def run_on_ray(settings: Settings, host: str, port: int, replicas: int) -> int:
    """`inpaint-serve --ray`: join the cluster in RAY_ADDRESS (or start a local one), deploy, serve until
    SIGTERM / Ctrl+C, then drain (queued jobs answer 503, running ones get 10 s to finish, then stop
    with a 503) and shut Serve down."""
    import signal

    import ray

    ray.init(include_dashboard=False)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        url = deploy(settings, host, port or 8000, replicas)
        print(f"inpaint-serve: {url}/  (Ray Serve, {replicas} engine replica(s); API docs: {url}/docs)", flush=True)
        while not stopping.wait(1.0):
            pass
        print("inpaint-serve: stopping: finishing running jobs (up to 10 s)", flush=True)
        try:
            drained = drain()
            print(f"inpaint-serve: jobs stopped by the shutdown: {drained['stopped']}", flush=True)
            time.sleep(0.5)  # the ingress sends the answers it just learned
        except Exception as e:  # the ingress is gone: nothing is left to answer
            print(f"inpaint-serve: could not drain the ingress ({type(e).__name__}: {e})", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    print("inpaint-serve: stopped", flush=True)
    return 0


def app_builder(args: dict):
    """`serve run inpaintrt.serve.ray_app:app_builder engine_dir=DIR replicas=2 [backend=auto precision=bf16
    token=... loras=FILE:SCALE,FILE:SCALE embeddings=FILE:TOKEN,FILE max_megapixel_steps=N
    max_request_memory_mb=MB]`."""
    replicas = args.get("replicas", "1")
    from ..engine.lora import lora_pairs
    from ..engine.textual_inversion import embedding_pairs

    loras = [tuple(pair) for pair in lora_pairs([s for s in args.get("loras", "").split(",") if s])]
    embeddings = [tuple(pair) for pair in embedding_pairs([s for s in args.get("embeddings", "").split(",") if s])]
    load = LoadOptions(backend=args.get("backend", "auto"), precision=args.get("precision"),
                       cuda_graph=args.get("cuda_graph") in ("1", "true"), loras=loras or None,
                       embeddings=embeddings or None)
    settings = Settings(engine_dir=args["engine_dir"], load=load, workers=int(args.get("max_replicas", 2)),
                        token=args.get("token"), queue_size=int(args.get("queue_size", 16)),
                        max_megapixel_steps=float(args["max_megapixel_steps"]) if "max_megapixel_steps" in args
                        else None,
                        max_request_memory_mb=float(args["max_request_memory_mb"]) if "max_request_memory_mb" in args
                        else None)
    return build_application(settings, replicas if replicas == "auto" else int(replicas))
