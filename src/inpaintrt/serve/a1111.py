"""AUTOMATIC1111's web API (/sdapi/v1/*) on the same server, queue and limits as the native routes.

A request's fields are mapped onto the native ones (a1111_fields.py), checked by the same code as a
native request (inputs.check), and every refusal names the A1111 field the client sent. Each image of
a request (batch_size x n_iter) is its own job with seed, seed + 1, ..., so image i equals
Engine.inpaint with the mapped arguments and generator=seed + i, as A1111's all_seeds say.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import ValidationError

from .. import __version__
from ..engine.families import family
from ..runtime.errors import InvalidArgument
from .a1111_fields import FILL, MAPPED, SAMPLERS, SCHEDULES, WHAT, DEFAULT_ONLY, Img2Img, Txt2Img, controlnet_units, \
    features_asked, sampler_choice
from .errors import ApiError, json_object, validation_error
from .inputs import InpaintParameters, check, decode_base64
from .jobs import CANCELLED, DONE, FINISHED
from .pictures import png_bytes


@dataclass
class Server:
    """What the routes need from the app: its queue, limits and the model's facts (filled at startup)."""
    manager: object
    settings: object
    limits: object
    facts: dict
    submit: Callable  # Parsed -> Job, or ApiError (queue full, shutting down)
    wait: Callable  # async (job, request): returns once the job is finished (cancels it if the client left)
    png_of: Callable  # finished Job -> PNG bytes, or the ApiError its failure means
    models: object = None  # engines.ServedEngines: every engine; POST /options picks the one A1111 requests use


class Tracker:
    """The A1111 requests in flight, oldest first: /progress reports the oldest, /interrupt stops them all."""

    def __init__(self):
        self.tasks: list[list] = []
        self.interrupted: set[str] = set()

    def progress(self) -> dict:
        idle = {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                "state": {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "0",
                          "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
        if not self.tasks:
            return idle
        jobs = self.tasks[0]
        done = sum(job.status in FINISHED for job in jobs)
        current = next((job for job in jobs if job.status not in FINISHED), jobs[-1])
        fraction = current.step / current.total if current.total and current.status not in FINISHED else 0.0
        progress = min(1.0, (done + fraction) / len(jobs))
        elapsed = time.monotonic() - jobs[0].created
        eta = elapsed / progress - elapsed if progress > 0 else 0.0
        state = {"skipped": False, "interrupted": any(job.id in self.interrupted for job in jobs),
                 "job": f"Batch {min(done + 1, len(jobs))} out of {len(jobs)}", "job_count": len(jobs),
                 "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": done,
                 "sampling_step": current.step, "sampling_steps": current.total}
        return {**idle, "progress": progress, "eta_relative": eta, "state": state}


def a1111_router(server: Server, guarded: list) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"], dependencies=guarded)
    tracker = Tracker()
    checkpoints = []  # (title, sha256, model) of each engine, the default first
    for model in server.models:
        sha256 = hashlib.sha256((Path(model.directory) / "manifest.json").read_bytes()).hexdigest()
        checkpoints.append((f"{model.name} [{sha256[:10]}]", sha256, model))
    options = {"sd_model_checkpoint": checkpoints[0][0], "sd_checkpoint_hash": checkpoints[0][1],
               "samples_format": "png", "CLIP_stop_at_last_layers": 1, "eta_ddim": 0.0, "eta_ancestral": 1.0}
    selected = [checkpoints[0]]  # as in A1111, the checkpoint POST /options chose serves every later request

    async def generate(request: Request, model) -> dict:
        params = await _read(request, model)
        title, sha256, engine = selected[0]
        parsed, seed, sampler = _parse(params, server, engine)
        count = params.batch_size * params.n_iter
        jobs = []
        try:
            for i in range(count):  # a job per image: image i is exactly the seed + i result
                jobs.append(server.submit(dataclasses.replace(parsed, seed=seed + i)))
        except ApiError:
            for job in jobs:
                server.manager.cancel(job.id)
            raise
        tracker.tasks.append(jobs)
        try:
            for job in jobs:
                await server.wait(job, request)
            images, interrupted = [], False
            for job in jobs:
                if job.status == CANCELLED and job.id in tracker.interrupted:
                    interrupted = True  # A1111 answers an interrupted request with what it finished
                else:  # done, or a failure png_of turns into its error
                    images.append(base64.b64encode(server.png_of(job)).decode())
        finally:
            tracker.tasks.remove(jobs)
            for job in jobs:
                tracker.interrupted.discard(job.id)
                server.manager.forget(job.id)
        info = _info(params, seed, count, sampler, title, sha256, engine.facts, interrupted)
        # A1111 has no field for it: ours, per image returned (None where no safety checker ran)
        info["nsfw_content_detected"] = [(job.nsfw_content_detected or [None])[0]
                                         for job in jobs if job.status == DONE]
        shown = params.model_dump(exclude={"init_images", "mask"})
        return {"images": images if params.send_images else [], "parameters": shown, "info": json.dumps(info)}

    def body(model) -> dict:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}

    @router.post("/img2img", summary="AUTOMATIC1111 img2img; with a mask, inpainting", openapi_extra=body(Img2Img))
    async def img2img(request: Request):
        return await generate(request, Img2Img)

    @router.post("/txt2img", summary="AUTOMATIC1111 txt2img: the whole canvas repainted", openapi_extra=body(Txt2Img))
    async def txt2img(request: Request):
        return await generate(request, Txt2Img)

    @router.get("/samplers")
    async def samplers():
        return [{"name": name, "aliases": aliases, "options": {}} for name, (_, aliases) in SAMPLERS.items()]

    @router.get("/schedulers")
    async def schedulers():
        return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for name, label in SCHEDULES.items()]

    @router.get("/sd-models")
    async def sd_models():
        return [{"title": title, "model_name": model.name, "hash": sha256[:10], "sha256": sha256,
                 "filename": model.directory, "config": None} for title, sha256, model in checkpoints]

    @router.get("/options")
    async def get_options():
        return options

    @router.post("/options", summary="Accepts the loaded model and the values GET /options shows")
    async def set_options(request: Request):
        given = await json_object(request)
        chosen = selected[0]
        for name, value in given.items():
            if name == "sd_model_checkpoint":
                chosen = next((c for c in checkpoints if value in (c[0], c[2].name, c[1], c[1][:10])), None)
                if chosen is None:
                    raise ApiError(422, name, f"{name}={value!r} is not a checkpoint of this server",
                                   "send a title GET /sdapi/v1/sd-models lists")
            elif options.get(name, object()) != value:
                raise ApiError(422, name, f"{name}={value!r} cannot be set: this server's settings are fixed",
                               f"send the value GET /sdapi/v1/options shows, or leave {name} out")
        selected[0] = chosen  # only once every value was accepted
        options.update(sd_model_checkpoint=chosen[0], sd_checkpoint_hash=chosen[1])
        return None

    @router.get("/progress")
    async def progress():
        return tracker.progress()

    @router.post("/interrupt", summary="Stop every A1111 request in flight after its current step")
    async def interrupt():
        for jobs in tracker.tasks:
            for job in jobs:
                if job.status not in FINISHED:
                    tracker.interrupted.add(job.id)
                    server.manager.cancel(job.id)
        return {}

    @router.get("/scripts")
    async def scripts():
        return {"txt2img": [], "img2img": []}

    return router


async def _read(request: Request, model):
    body = await json_object(request)
    try:
        params = model.model_validate(body)
    except ValidationError as e:
        raise validation_error(e.errors(), known=model.model_fields) from None
    for name, value in features_asked(params):
        default = DEFAULT_ONLY[name][-1]
        raise ApiError(422, name, f"{name}={value!r} asks for {WHAT[name]}, which this engine does not do",
                       f"send {json.dumps(default)} or leave {name} out")
    return params


def _parse(params, server: Server, engine):
    """(the checked native job, its first seed, the A1111 sampler name reported back)."""
    record = family(engine.facts["family"])
    if record.eraser or record.segmenter:  # A1111's fields are all diffusion settings, sent with every request
        what, instead = (("an eraser", "erase with POST /v1/inpaint: image and mask_image, no prompt") if record.eraser
                         else ("a mask maker", "make masks with POST /v1/segment"))
        raise ApiError(422, "sd_model_checkpoint", f"the selected checkpoint {engine.name} is {what} "
                       f"({record.title}): it takes no prompt or sampling settings, which every AUTOMATIC1111 "
                       "request carries", "select a diffusion checkpoint with POST /sdapi/v1/options (GET "
                       f"/sdapi/v1/sd-models lists them), or {instead}")
    count, cap = params.batch_size * params.n_iter, server.settings.queue_size
    if count > cap:
        field = "batch_size" if params.batch_size > cap else "n_iter"
        raise ApiError(422, field, f"batch_size x n_iter = {count} images, over this server's {cap} queue slots",
                       f"ask for at most {cap} images per request")
    try:
        scheduler, scheduler_options = sampler_choice(params.sampler_name or params.sampler_index, params.scheduler)
    except InvalidArgument as e:
        raise ApiError(422, e.field, str(e), e.fix) from None
    if params.eta is not None and scheduler == "ddim":
        scheduler_options = {**(scheduler_options or {}), "eta": params.eta}
    seed = params.seed if params.seed >= 0 else secrets.randbelow(2**32)
    fields = {"prompt": params.prompt, "negative_prompt": params.negative_prompt or None, "seed": seed,
              "num_inference_steps": params.steps, "guidance_scale": params.cfg_scale, "scheduler": scheduler,
              "scheduler_options": scheduler_options, "height": params.height, "width": params.width}
    if isinstance(params, Img2Img):
        files = _img2img(params, fields)
        try:  # the ControlNet extension's units: the native ControlNet fields, checked alike
            control, images = controlnet_units(params.alwayson_scripts)
        except InvalidArgument as e:
            raise ApiError(422, e.field, str(e), e.fix) from None
        fields.update(control)
        if images:
            files["control_image"] = [None if text is None else decode_base64(text, MAPPED["control_image"])
                                      for text in images]
    else:  # a blank canvas, all of it repainted: its size is checked before it is made
        limit = server.limits.max_output_pixels
        if params.width * params.height > limit:
            raise ApiError(422, "height", f"height={params.height} with width={params.width} is "
                           f"{params.width * params.height} pixels, more than this server's max_output_pixels={limit}",
                           f"send a smaller height and width (height x width at most {limit})")
        canvas = Image.new("RGB", (params.width, params.height))
        files = {"image": png_bytes(canvas), "mask_image": png_bytes(Image.new("L", canvas.size, 255))}
        fields["strength"] = 1.0
    field = "n_iter" if params.n_iter > 1 else "batch_size"
    pictures = (count, field, count if params.batch_size == 1 or params.n_iter == 1 else
                f"{count} (batch_size {params.batch_size} x n_iter {params.n_iter})")
    try:  # the native checks, the work and memory rule for all the request's pictures included
        parsed = check(InpaintParameters.model_validate(fields), files, server.limits, engine.facts, pictures)
    except ValidationError as e:
        raise _renamed(validation_error(e.errors())) from None
    except ApiError as e:
        raise _renamed(e) from None
    if isinstance(params, Img2Img) and not params.inpaint_full_res:  # A1111's resize mode 0: just resize
        size = (params.width, params.height)
        parsed.arguments["image"] = parsed.arguments["image"].convert("RGB").resize(size, Image.LANCZOS)
        parsed.arguments["mask_image"] = parsed.arguments["mask_image"].resize(size, Image.LANCZOS)
        if parsed.arguments.get("control_image"):  # checked at the image's size, resized with it
            parsed.arguments["control_image"] = [None if c is None else c.convert("RGB").resize(size, Image.LANCZOS)
                                                 for c in parsed.arguments["control_image"]]
    name = next((n for n, (s, _) in SAMPLERS.items() if s == (scheduler or "").replace("_karras", "")), "Automatic")
    return dataclasses.replace(parsed, model=engine.name), seed, name


def _img2img(params: Img2Img, fields: dict) -> dict:
    blur = params.mask_blur
    if params.mask_blur_x is not None or params.mask_blur_y is not None:
        x, y = params.mask_blur_x, params.mask_blur_y
        if x is None or y is None or x != y:
            raise ApiError(422, "mask_blur_x", f"mask_blur_x={x} and mask_blur_y={y} differ; this engine blurs the "
                           "mask equally in both directions", "send mask_blur alone, or equal mask_blur_x and _y")
        blur = x
    if not 0 < params.denoising_strength <= 1:
        raise ApiError(422, "denoising_strength", f"denoising_strength={params.denoising_strength} is outside (0, 1]",
                       "send a number greater than 0 and at most 1")
    fields.update(strength=params.denoising_strength, blur_factor=blur, masked_content=FILL[params.inpainting_fill],
                  mask_invert=bool(params.inpainting_mask_invert), keep_unmasked=not params.inpaint_full_res,
                  padding_mask_crop=params.inpaint_full_res_padding if params.inpaint_full_res else None)
    image = decode_base64(params.init_images[0], "init_images")
    if params.mask is not None:
        return {"image": image, "mask_image": decode_base64(params.mask, "mask")}
    try:  # no mask: the whole picture is repainted (plain img2img)
        size = Image.open(io.BytesIO(image)).size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        size = (8, 8)  # inputs.check names what is wrong with the picture itself
    return {"image": image, "mask_image": png_bytes(Image.new("L", size, 255))}


_NATIVE_NAMES = re.compile(r"\b(" + "|".join(sorted(map(re.escape, MAPPED), key=len, reverse=True)) + r")\b")


def _renamed(e: ApiError) -> ApiError:
    """A native refusal, told in the A1111 names the client sent (all names replaced at once)."""
    say = lambda text: _NATIVE_NAMES.sub(lambda m: MAPPED[m.group(1)], text)  # noqa: E731
    return ApiError(e.status, MAPPED.get(e.field, e.field), say(e.message), say(e.fix), e.headers)


def _info(params, seed: int, count: int, sampler: str, title: str, sha256: str, facts: dict,
          interrupted: bool) -> dict:
    seeds = [seed + i for i in range(count)]
    return {"prompt": params.prompt, "all_prompts": [params.prompt] * count,
            "negative_prompt": params.negative_prompt or "", "all_negative_prompts": [params.negative_prompt or ""] * count,
            "seed": seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
            "width": params.width, "height": params.height, "sampler_name": sampler,
            "scheduler": SCHEDULES.get((params.scheduler or "automatic").lower(), "Automatic"),
            "cfg_scale": params.cfg_scale, "steps": params.steps, "batch_size": params.batch_size,
            "n_iter": params.n_iter, "denoising_strength": getattr(params, "denoising_strength", None),
            "restore_faces": False, "sd_model_name": title.split(" [")[0], "sd_model_hash": sha256[:10],
            "seed_resize_from_w": -1, "seed_resize_from_h": -1, "styles": [], "clip_skip": 1,
            "is_using_inpainting_conditioning": facts.get("unet_in_channels") == 9, "interrupted": interrupted,
            "version": f"inpaintrt {__version__}", "engine_family": facts.get("family")}
