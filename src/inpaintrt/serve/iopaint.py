"""`inpaint-serve --page iopaint`: IOPaint's own web page, from an installed `iopaint` package, at / and the
/api/v1 routes it calls, answered as IOPaint's server answers them (iopaint/api.py), over this server's queue,
limits and request checks.

The page is IOPaint's built bundle (Apache-2.0), found with importlib.util.find_spec without importing IOPaint
(which imports torch). Its paths are absolute (/assets/..., /api/v1/...), so it sits at /. An inpaint request is
mapped onto the native fields (iopaint_fields.py) and checked by inputs.check like a native one, then queued on
the engine's JobManager; refusals carry IOPaint's `errors` text, which the page shows as a toast, beside this
server's {"error": {...}}. Socket.IO progress is not served (a clean 404): the page only hides its progress bar.
docs/iopaint.md lists what maps, what is ignored and what is left out.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import io
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engine.argument_specs import HD_STRATEGIES, MAX_POINTS
from ..engine.families import family
from ..engine.manifest import DIFFUSION, ERASER, SEGMENTER
from .errors import ApiError, json_object, read_form, validation_error
from .iopaint_fields import (COMPUTED, DEFAULT_ONLY, MAPPED, PLUGIN, SAMPLERS, UNMAPPED_SAMPLERS, InpaintRequest,
                             features_asked, mask_blur_factor, model_info, prompts_from_png)
from .iopaint_pictures import SEGMENT_DILATION, adjusted_mask, encode_answer, page_mask, read_mask, read_upload
from .inputs import InpaintParameters, check
from .job_routes import job_refusal
from .numbers import NumbersOnly
from .pictures import decode_picture, png_bytes
from .segmenting import (Number, SegmentParameters, engine_arguments, engine_pool, run_segment,
                         segment_engines)

PACKAGE = "iopaint"
INSTALL = "pip install --no-deps iopaint"
RANDOM_SEEDS = 99_999_999  # IOPaint draws sd_seed = -1 from 1..99999999
NATIVE_NAMES = re.compile(r"\b(" + "|".join(sorted(map(re.escape, MAPPED), key=len, reverse=True)) + r")\b")
CLICKS_FIX = "send clicks as [[x, y, 1 or 0], ...]"


def web_app_folder() -> Path:
    """IOPaint's built page (iopaint/web_app) from the installed package; a ValueError naming the install line."""
    spec = importlib.util.find_spec(PACKAGE)  # a top-level package is found, not imported
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "web_app"
        if (folder / "index.html").is_file():
            return folder
    found = "is not installed" if spec is None else "has no web_app/index.html"
    raise ValueError(f"--page iopaint serves IOPaint's web page from its Python package, which {found}; install "
                     f"it with: {INSTALL}  (--no-deps: only the page's files are used, not IOPaint's torch code)")


class PageError(APIRoute):
    """Refusals with IOPaint's `errors` text (the page's toast reads it) beside this server's error object."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request):
            try:
                return await handler(request)
            except ApiError as e:
                body = {"error": {"status": e.status, "field": e.field, "message": e.message, "fix": e.fix},
                        "errors": f"{e.field}: {e.message}. {e.fix}", "detail": e.message}
                return JSONResponse(body, status_code=e.status, headers=e.headers)

        return route


@dataclass
class PageServer:
    """What the routes need from the app (filled at startup): the engines, limits and the queue's calls."""
    models: object  # engines.ServedEngines
    limits: object
    submit: Callable  # Parsed -> Job (or the ApiError of a full queue, a shutdown)
    finished: Callable  # async (job, request): returns once the job is finished
    # IOPaint's one current model (POST /api/v1/model): server-wide, as in IOPaint, a single-user program; with
    # one inpainting engine server-config says disableModelSwitch, so no page offers a switch
    current: str | None = None
    segmenter: str | None = None  # the InteractiveSeg plugin's engine, server-wide too

    def inpainters(self) -> list:
        return self.models.of_kind(DIFFUSION, ERASER)

    def segmenters(self) -> list:  # Segment Anything: prompted by clicks, as IOPaint's plugin is
        return [m for m in self.models.of_kind(SEGMENTER) if m.facts.get("clicks")]

    def model(self):
        found = self.inpainters()
        if not found:
            raise ApiError(422, "name", "this server has no inpainting engine: only mask makers",
                           "start inpaint-serve with a Stable Diffusion or eraser --engine beside them")
        return next((m for m in found if m.name == self.current), found[0])

    def plugin_engine(self):
        found = self.segmenters()
        if not found:
            raise ApiError(422, "name", f"plugin {PLUGIN} needs a Segment Anything engine; this server has none",
                           "start inpaint-serve with a Segment Anything --engine (inpaint-export --kind sam)")
        return next((m for m in found if m.name == self.segmenter), found[0])


class SwitchModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., max_length=200)


class SwitchPluginModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plugin_name: str = Field(..., max_length=200)
    model_name: str = Field(..., max_length=200)


class RunPlugin(NumbersOnly):
    model_config = ConfigDict(extra="forbid")
    text_numbers = False
    name: str = Field(..., max_length=200)
    image: str
    # each number strict and finite: NumbersOnly looks at the outer list only, and a NaN label is no 0 or 1
    clicks: list[list[Number]] = Field([], max_length=MAX_POINTS,
                                       description="[[x, y, label, ...], ...]: 1 adds, 0 removes")
    scale: float = Field(2.0, allow_inf_nan=False)  # the upscalers': unused by InteractiveSeg


class AdjustMask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mask: str
    operate: Literal["expand", "shrink", "reverse"]
    kernel_size: int = Field(5, ge=0, le=100)


async def parsed_body(request: Request, model, fixes: dict | None = None):
    """The JSON body as `model`; a refused value of a field in `fixes` gets that fix (what fits)."""
    try:
        return model.model_validate(await json_object(request))
    except ValidationError as e:
        error = validation_error(e.errors(), set(model.model_fields))
        if error.field in (fixes or {}) and e.errors()[0]["type"] not in ("extra_forbidden", "missing"):
            error.fix = fixes[error.field]
        raise error from None


def add_iopaint_page(app, server: PageServer, guarded: list) -> None:
    """IOPaint's page at / (its assets under /assets) and the /api/v1 routes it calls; /socket.io/ a clean 404."""
    folder = web_app_folder()
    app.mount("/assets", StaticFiles(directory=folder / "assets"), name="iopaint-assets")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(folder / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(folder / "favicon.ico")

    @app.api_route("/socket.io/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def no_progress(rest: str = ""):
        raise ApiError(404, "socket.io", "this server sends no Socket.IO progress events; IOPaint's page only hides "
                       "its progress bar without them", "nothing to do: results arrive with the inpaint answer")

    app.include_router(iopaint_router(server, guarded))


def iopaint_router(server: PageServer, guarded: list) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["IOPaint"], dependencies=guarded, route_class=PageError)
    limits = server.limits

    @router.get("/server-config", summary="IOPaint's ServerConfigResponse: models, plugins, samplers")
    async def server_config():
        segmenters = [m.name for m in server.segmenters()]
        inpainters = server.inpainters()
        return {"plugins": [{"name": PLUGIN, "support_gen_image": False, "support_gen_mask": True}] if segmenters
                else [], "modelInfos": [model_info(m.name, m.facts) for m in inpainters],
                "removeBGModel": "", "removeBGModels": [], "realesrganModel": "", "realesrganModels": [],
                "interactiveSegModel": server.plugin_engine().name if segmenters else "",
                "interactiveSegModels": segmenters, "enableFileManager": False, "enableAutoSaving": False,
                "enableControlnet": False, "controlnetMethod": None, "disableModelSwitch": len(inpainters) <= 1,
                "isDesktop": False, "samplers": list(SAMPLERS)}

    @router.get("/samplers", summary="IOPaint's sampler names this server maps to a scheduler")
    async def samplers():
        return list(SAMPLERS)

    @router.get("/model", summary="The current model, as IOPaint's ModelInfo")
    async def current_model():
        model = server.model()
        return model_info(model.name, model.facts)

    @router.post("/model", summary="Switch the current model to another --engine (by its directory's name)")
    async def switch_model(request: Request):
        name = (await parsed_body(request, SwitchModel)).name
        names = [m.name for m in server.inpainters()]
        if name not in names:
            raise ApiError(422, "name", f"name={name!r} is not an inpainting engine of this server "
                           f"({', '.join(names)})",
                           f"send one of {', '.join(names)} (GET /api/v1/server-config lists modelInfos)")
        server.current = name
        model = server.model()
        return model_info(model.name, model.facts)

    @router.post("/switch_plugin_model", summary="Pick the Segment Anything engine InteractiveSeg uses")
    async def switch_plugin_model(request: Request):
        body = await parsed_body(request, SwitchPluginModel)
        if body.plugin_name != PLUGIN:
            raise ApiError(422, "plugin_name", f"plugin_name={body.plugin_name!r}: this server has no such plugin; "
                           f"its only plugin is {PLUGIN}", f"send plugin_name {PLUGIN!r}")
        names = [m.name for m in server.segmenters()]
        if body.model_name not in names:
            raise ApiError(422, "model_name", f"model_name={body.model_name!r} is not a Segment Anything engine of "
                           f"this server ({', '.join(names) or 'none'})", "send a name interactiveSegModels lists")
        server.segmenter = body.model_name
        return None

    @router.get("/inputimage", summary="No input picture is configured: 200 without one, as IOPaint answers")
    async def input_image():
        return {"detail": "No input image configured"}

    @router.post("/gen-info", summary="The prompts of an A1111 PNG's parameters text (multipart `file`)")
    async def gen_info(request: Request):
        form = await read_form(request, "send multipart/form-data with the picture as the file part `file`",
                               max_files=1, max_fields=4, max_part_size=limits.max_upload_bytes)
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise ApiError(422, "file", "file is required as a file part", "send the picture as the file part `file`")
        prompt, negative = await asyncio.to_thread(file_prompts, await part.read(), limits.max_pixels)
        return {"prompt": prompt, "negative_prompt": negative}

    @router.post("/inpaint", summary="IOPaint's InpaintRequest: the picture in the upload's format, X-Seed header",
                 responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}})
    async def inpaint(request: Request):
        params = await parsed_body(request, InpaintRequest)
        model = server.model()
        seed = params.sd_seed if params.sd_seed != -1 else secrets.randbelow(RANDOM_SEEDS) + 1
        # decoding and checking pictures takes a while for big ones: off the event loop
        parsed, upload = await asyncio.to_thread(prepared, params, model, seed, limits)
        job = server.submit(dataclasses.replace(parsed, model=model.name))
        try:
            await server.finished(job, request)
            refusal = job_refusal(job)  # a failed or cancelled job: the ApiError it means
            if refusal is not None:
                raise renamed(refusal)
            content, kind = await asyncio.to_thread(encode_answer, _picture(job.png), upload)
        finally:
            server.models.forget(job.id)
        return Response(content, media_type=kind, headers={"X-Seed": str(seed)})

    @router.post("/run_plugin_gen_mask", summary="InteractiveSeg: the clicked object's mask from Segment Anything")
    async def run_plugin_gen_mask(request: Request):
        body = await parsed_body(request, RunPlugin, {"clicks": CLICKS_FIX})
        if body.name != PLUGIN:
            raise ApiError(422, "name", f"name={body.name!r}: this server's only mask plugin is {PLUGIN}",
                           f"send name {PLUGIN!r}")
        served_engine = server.plugin_engine()
        segment_engines(server.models, served_engine, "name")  # before any work: draining, Ray, none loaded
        params = clicked(body.clicks)
        upload = await asyncio.to_thread(read_upload, body.image, "image", limits.max_pixels)
        found = await segment(served_engine, upload.rgb, params, limits.max_pixels)
        mask = await asyncio.to_thread(page_mask, found.masks[0], SEGMENT_DILATION)
        return Response(mask, media_type="image/png")

    @router.post("/run_plugin_gen_image", summary="No picture plugins here (RemoveBG, RealESRGAN, GFPGAN, ...)")
    async def run_plugin_gen_image(request: Request):
        body = await json_object(request)
        name = body.get("name")
        raise ApiError(422, "name", f"name={name!r}: this server has no picture plugins (RemoveBG, RealESRGAN, "
                       "GFPGAN, RestoreFormer, AnimeSeg)", "none to run; server-config lists the plugins")

    @router.post("/adjust_mask", summary="The mask expanded, shrunk or reversed, in the page's brush colour")
    async def adjust_mask(request: Request):
        body = await parsed_body(request, AdjustMask)
        found = await asyncio.to_thread(adjusted_mask, body.mask, body.operate, body.kernel_size, limits.max_pixels)
        return Response(found, media_type="image/png")

    return router


def file_prompts(data: bytes, max_pixels: int) -> tuple[str, str]:
    """gen-info's prompts, once the file is known to be a picture within max_pixels (pictures.decode_picture:
    the size from its header first, so a decompression bomb is a 413 naming `file`, a broken file a 422)."""
    decode_picture(data, "file", max_pixels)
    return prompts_from_png(data)


def prepared(params: InpaintRequest, model, seed: int, limits):
    """(the checked native job, the upload): the pictures decoded as IOPaint decodes them, the fields mapped for
    the engine's kind, then inputs.check, the native routes' checks, with refusals named as the page sent them."""
    upload = read_upload(params.image, "image", limits.max_pixels)
    mask = read_mask(params.mask, "mask", upload.rgb.size, limits.max_pixels)
    record = family(model.facts["family"])
    fields = eraser_fields(params) if record.eraser else diffusion_fields(params, seed, upload.rgb.size, limits)
    try:
        pictures = {"image": png_bytes(upload.rgb, fast=True), "mask_image": png_bytes(mask, fast=True)}
        return check(InpaintParameters.model_validate(fields), pictures, limits, model.facts), upload
    except ValidationError as e:
        raise renamed(validation_error(e.errors())) from None
    except ApiError as e:
        raise renamed(e) from None


def diffusion_fields(params: InpaintRequest, seed: int, size: tuple[int, int], limits) -> dict:
    """The native fields of an IOPaint request to a diffusion engine; features it lacks refused by name."""
    for name, value in features_asked(params):
        default, what = DEFAULT_ONLY[name]
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ApiError(422, name, f"{name}={shown} asks for {what}, which this server does not do",
                       f"send {str(default).lower() if default is not None else 'null'} or leave {name} out")
    if params.sd_sampler not in SAMPLERS:
        known = ", ".join(SAMPLERS)
        why = "has no scheduler here" if params.sd_sampler in UNMAPPED_SAMPLERS else "is not an IOPaint sampler"
        raise ApiError(422, "sd_sampler", f"sd_sampler={params.sd_sampler!r} {why}", f"send one of {known}")
    scheduler, options = SAMPLERS[params.sd_sampler]
    height, width = generation_size(size, params.sd_scale, limits.max_output_pixels)
    return {"prompt": params.prompt, "negative_prompt": params.negative_prompt or None, "seed": seed,
            "num_inference_steps": params.sd_steps, "guidance_scale": params.sd_guidance_scale,
            "strength": params.sd_strength, "scheduler": scheduler, "scheduler_options": options,
            "blur_factor": mask_blur_factor(params.sd_mask_blur), "keep_unmasked": params.sd_keep_unmasked_area,
            "height": height, "width": width}


def generation_size(size: tuple[int, int], scale: float, max_pixels: int) -> tuple[int, int]:
    """(height, width) the engine generates at: the picture's size times sd_scale, within max_output_pixels, rounded
    down to multiples of 8 (IOPaint pads up to them instead); keep_unmasked pastes the result back at full size."""
    width, height = size[0] * scale, size[1] * scale
    shrink = min(1.0, (max_pixels / (width * height)) ** 0.5)
    return max(8, int(height * shrink) // 8 * 8), max(8, int(width * shrink) // 8 * 8)


def eraser_fields(params: InpaintRequest) -> dict:
    """An eraser takes IOPaint's hd_strategy fields; IOPaint ignores the diffusion settings for its erasers too."""
    given = params.hd_strategy
    strategy = given.lower() if given.lower() in HD_STRATEGIES else given  # IOPaint's "Crop"; unknown: the check's
    return {"hd_strategy": strategy, "hd_strategy_crop_margin": params.hd_strategy_crop_margin,
            "hd_strategy_crop_trigger_size": params.hd_strategy_crop_trigger_size,
            "hd_strategy_resize_limit": params.hd_strategy_resize_limit}


def renamed(e: ApiError) -> ApiError:
    """A native refusal told in the IOPaint field names the page sent: the error's field, and in its text each
    native name written as a field (with an underscore, `name`, name=, "send name"), so ordinary words stay (a
    picture's height, a random seed). Fields computed from an IOPaint one (COMPUTED) keep their native name in the
    text: their values are not the IOPaint field's (height=512 is no sd_scale)."""
    def field_name(match: re.Match) -> str:
        name, text, start, end = match[1], match.string, match.start(), match.end()
        written = ("_" in name or text[end:end + 1] == "=" or text[max(0, start - 5):start] == "send "
                   or (text[start - 1:start] == "`" and text[end:end + 1] == "`"))
        return MAPPED[name] if written and name not in COMPUTED else name

    def say(text: str) -> str:
        return NATIVE_NAMES.sub(field_name, text)

    return ApiError(e.status, MAPPED.get(e.field, e.field), say(e.message), say(e.fix), e.headers)


def _picture(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def clicked(clicks: list[list[float]]) -> SegmentParameters:
    """The page's clicks [x, y, label, index] as the native route's points and labels. Built unvalidated: each
    number is finite already (RunPlugin), and the labels go as sent to engine/segmenter.py check_points (via
    engine_arguments), the one home of the rule that a label is 0 or 1."""
    if not clicks:
        raise ApiError(422, "clicks", "no clicks: Segment Anything needs at least one", "click on the object")
    for i, click in enumerate(clicks):
        if len(click) < 3:
            raise ApiError(422, "clicks", f"clicks[{i}] has {len(click)} numbers; a click is [x, y, label]",
                           CLICKS_FIX)
    return SegmentParameters.model_construct(points=[click[:2] for click in clicks],
                                             labels=[click[2] for click in clicks])


async def segment(served_engine, rgb, params: SegmentParameters, max_pixels: int):
    """Engine.segment with the clicks as points and labels, checked by the native segment route's rules, its
    refusals naming clicks."""
    try:
        arguments = engine_arguments(params, family(served_engine.facts["family"]), rgb.size, max_pixels)
    except ApiError as e:
        def say(text: str) -> str:
            return re.sub(r"\blabels\b", "clicks' labels", re.sub(r"\bpoints\b", "clicks", text))
        raise ApiError(e.status, "clicks", say(e.message), say(e.fix)) from None
    return await engine_pool(served_engine).run(lambda engine: run_segment(engine, rgb, arguments))
