"""The same API on Ray Serve: an ingress deployment (the FastAPI app, its queue and job events) and an
engine deployment whose replicas each load one Engine once and run one request at a time.

    inpaint-serve --engine DIR --ray --replicas 2
    serve run inpaintrt.serve.ray_app:app_builder engine_dir=DIR replicas=2      # on a running cluster

The ingress keeps the JobManager of the single-process server; its workers, instead of owning an
Engine, stream each request to an engine replica (Ray's router picks one) and turn the replica's
step events into the job's progress, so /v1/jobs, events and cancel behave the same.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import asdict, dataclass

from ray import serve

from .app import Settings, create_app, engine_facts, open_engine
from .jobs import TASKS, JobCancelled, JobManager

APP_NAME = "inpaintrt"
ENGINE_DEPLOYMENT = "InpaintEngine"


@serve.deployment(name=ENGINE_DEPLOYMENT, max_ongoing_requests=1)  # one Engine, one request at a time
class InpaintEngine:
    def __init__(self, settings: dict):
        self.engine = open_engine(Settings(**settings))  # once per replica
        self.replica = serve.get_replica_context().replica_id.unique_id

    def facts(self) -> dict:
        return engine_facts(self.engine)

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
                picture = getattr(self.engine, task)(**arguments, generator=seed, callback_on_step_end=on_step,
                                                     progress=False).images[0]
                events.put(("done", encode_png(picture), picture.width, picture.height, self.replica))
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


def encode_png(picture) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class RemoteResult:
    png: bytes
    width: int
    height: int
    replica: str


class RemoteEngine:
    """What a JobManager worker calls instead of a local Engine: one streamed call to a replica."""

    def __init__(self, handle):
        self.handle = handle
        self.remote_facts = handle.facts.remote().result()

    def inpaint(self, **arguments):
        return self._run("inpaint", **arguments)

    def outpaint(self, **arguments):
        return self._run("outpaint", **arguments)

    def _run(self, task, *, generator, callback_on_step_end, progress=False, output_type="pil", **arguments):
        stream = self.handle.options(stream=True).run.remote(arguments, generator, task)
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


def build_application(settings: Settings, replicas: int | str = 1, num_gpus: float | None = None):
    """The bound Serve application: ingress -> engine replicas. replicas: a count, or "auto" to autoscale
    between 1 and settings.workers replicas."""
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

    def build_app():
        # this runs in the ingress replica: the engine deployment is in the same application
        app_name = serve.get_replica_context().app_name
        handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=app_name)
        ingress_settings = Settings(**fields)
        manager = JobManager(lambda: RemoteEngine(handle), workers, ingress_settings.queue_size,
                             ingress_settings.keep_finished)
        return create_app(ingress_settings, manager=manager)

    ingress = serve.deployment(serve.ingress(build_app)(), name="InpaintIngress",
                               ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(engine)


def uses_gpu(settings: Settings) -> bool:
    from ..engine.manifest import read_manifest

    if settings.backend in ("tensorrt", "ort-cuda") or settings.precision == "fp16":
        return True
    return settings.backend == "auto" and "tensorrt" in read_manifest(settings.engine_dir, verify_hashes=False)


def deploy(settings: Settings, host: str = "127.0.0.1", port: int = 8000, replicas: int | str = 1) -> str:
    """Start Serve's HTTP proxy on host:port and deploy; returns the URL once every replica is up."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(settings, replicas), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def run_on_ray(settings: Settings, host: str, port: int, replicas: int) -> int:
    """`inpaint-serve --ray`: join the cluster in RAY_ADDRESS (or start a local one), deploy, serve until
    SIGTERM / Ctrl+C, then shut Serve down (running jobs are cancelled)."""
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
    finally:
        serve.shutdown()
        ray.shutdown()
    print("inpaint-serve: stopped", flush=True)
    return 0


def app_builder(args: dict):
    """`serve run inpaintrt.serve.ray_app:app_builder engine_dir=DIR replicas=2 [backend=auto precision=bf16
    token=... loras=FILE:SCALE,FILE:SCALE]`."""
    replicas = args.get("replicas", "1")
    from ..engine.lora import lora_pairs

    settings = Settings(engine_dir=args["engine_dir"], backend=args.get("backend", "auto"),
                        precision=args.get("precision"), cuda_graph=args.get("cuda_graph") in ("1", "true"),
                        workers=int(args.get("max_replicas", 2)), token=args.get("token"),
                        queue_size=int(args.get("queue_size", 16)),
                        loras=lora_pairs([s for s in args.get("loras", "").split(",") if s]))
    return build_application(settings, replicas if replicas == "auto" else int(replicas))
