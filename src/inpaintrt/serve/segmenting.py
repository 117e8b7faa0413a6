"""POST /v1/segment: the mask makers (Segment Anything: clicks and a box; CLIPSeg: a phrase) behind the server.

A request names its engine with `model` (left out: the first mask maker served), is checked before any engine
time is spent (the picture's size, then engine/segmenter.py's own checks of points, labels, box and text, the
one home of those rules), and answers with the best mask as a PNG (white inside) or every mask as JSON.

Why not a JobManager job: a job is an inpaint or outpaint call whose result is a picture with progress steps
(jobs.py); a segment call is one short forward pass whose result is masks and scores. The mask maker's
JobManager still loads its engines at startup (one per --workers), and `EnginePool` lends each to one request
at a time, in the order the requests came, run on a worker thread so the event loop keeps answering; requests
waiting for an engine are bounded by --queue-size (over it: 429).
"""
from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from typing import Annotated, Literal, Optional

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field, ValidationError

from ..engine.argument_specs import MAX_POINTS, SEGMENT_SPECS
from ..engine.families import family
from ..engine.manifest import SEGMENTER
from ..engine.segmenter import check_box, check_points, check_prompt, check_text
from ..runtime.errors import InvalidArgument
from .errors import MAX_PROMPT, ApiError, json_object, read_form, request_fix, validation_error
from .numbers import NumbersOnly
from .pictures import decode_base64, decode_picture, png_bytes
from .schema import tiny_png

THRESHOLD = SEGMENT_SPECS["threshold"].default  # CLIPSeg's, when the request leaves it out
LIST_EXAMPLES = {"points": [[120, 80], [40, 30]], "labels": [1, 0], "box": [10, 20, 200, 160]}
LISTS = tuple(LIST_EXAMPLES)  # JSON text in a multipart form
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # strict: true / false are not numbers
Point = Annotated[list[Number], Field(min_length=2, max_length=2)]
FIXES = {"points": "send points as a JSON list of [x, y] pixel pairs, e.g. [[120, 80], [40, 30]]",
         "labels": "send labels as a JSON list of 0 and 1, one per point, e.g. [1, 0]",
         "box": "send box as a JSON list [x0, y0, x1, y1] of pixels",
         "multimask_output": "send true or false", "text": "send a phrase such as 'the sky'",
         "threshold": f"send a number between 0 and 1 (both excluded), or leave it out for {THRESHOLD}",
         "format": "send png or json", "model": "send the name of a mask maker GET /v1/info lists (kind segmenter)"}
SUMMARY = ("Make a mask: Segment Anything from clicks (points, labels) or a box, CLIPSeg from a phrase (text); "
           "the best mask's PNG (X-Scores header) or every mask as JSON")


def _help(name: str) -> str:
    """The argument table's help; the lists say how a multipart form carries them."""
    multipart = f" In multipart, JSON text: {json.dumps(LIST_EXAMPLES[name])}." if name in LIST_EXAMPLES else ""
    return SEGMENT_SPECS[name].help + multipart


class SegmentParameters(NumbersOnly):
    """The fields of POST /v1/segment besides the picture: Engine.segment's (engine/argument_specs.py SEGMENT)."""
    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = Field(None, max_length=200, description="Which mask maker runs it, by name (GET /v1/info "
                                 "lists `models`, kind segmenter); default: the first one the server has.")
    points: Optional[list[Point]] = Field(None, max_length=MAX_POINTS, description=_help("points"))
    labels: Optional[list[Annotated[int, Field(strict=True)]]] = Field(None, max_length=MAX_POINTS,
                                                                       description=_help("labels"))
    box: Optional[Annotated[list[Number], Field(min_length=4, max_length=4)]] = Field(None, description=_help("box"))
    multimask_output: bool = Field(False, description=_help("multimask_output"))
    text: Optional[str] = Field(None, max_length=MAX_PROMPT, description=_help("text"))  # as long as a prompt
    threshold: Optional[float] = Field(None, gt=0, lt=1, allow_inf_nan=False,
                                       description=_help("threshold") + f" Default {THRESHOLD}.")
    format: Literal["png", "json"] = Field("png", description="png: the best mask (the first; with multimask_output "
                                           "the highest score), white inside, scores in the X-Scores header; json: "
                                           "{masks: [base64 PNG], scores, best, width, height}.")


def segment_schema(binary: bool) -> dict:
    """The request body's schema: the fields plus the picture; multipart carries the lists as JSON text."""
    schema = SegmentParameters.model_json_schema()
    picture = ({"type": "string", "format": "binary"} if binary else
               {"type": "string", "contentEncoding": "base64", "description": "base64 (a data: URL is fine)"})
    properties = dict(schema["properties"])
    if binary:
        for name in LISTS:
            properties[name] = {"type": "string", "description": properties[name]["description"]}
    schema["properties"] = {"image": {**picture, "description": "The picture (PNG, JPEG, WebP, ...)."}, **properties}
    schema["required"] = ["image"]
    return schema


EXAMPLE = {"points": [[4, 4]], "labels": [1]}  # succeeds on a Segment Anything engine


def openapi_body() -> dict:
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": segment_schema(binary=True)},
        "application/json": {"schema": segment_schema(binary=False),
                             "example": {"image": tiny_png(False), **EXAMPLE}}}}}


class EnginePool:
    """A mask maker's loaded engines, each lent to one request at a time, run off the event loop. Requests get an
    engine in the order they came (a freed engine goes to the one waiting longest, never to a newcomer); at most
    queue_size wait, the next is a 429."""

    def __init__(self, engines: list, queue_size: int):
        self.free, self.queue_size = list(engines), queue_size
        # one embedding cache for them all: a user's next click on a picture finds its embedding whichever
        # engine the click is lent (Segment Anything's; the cache is locked and bounded in bytes)
        caching = [engine for engine in engines if hasattr(engine, "embedding_cache")]
        for engine in caching[1:]:
            engine.embedding_cache = caching[0].embedding_cache
        self.waiting: deque[asyncio.Future] = deque()  # one future per waiting request, the first come first

    async def run(self, call):
        engine = await self._lend()
        work = asyncio.ensure_future(asyncio.to_thread(call, engine))
        # back in the pool once the thread is done, not when a client that left cancels its wait
        work.add_done_callback(lambda _: self._hand_on(engine))
        return await asyncio.shield(work)

    async def _lend(self):
        if self.free and not self.waiting:
            return self.free.pop()
        if len(self.waiting) >= self.queue_size:
            raise ApiError(429, "queue", f"all {self.queue_size} waiting places of this mask maker are taken",
                           "retry after the Retry-After seconds", headers={"Retry-After": "1"})
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        try:
            return await turn
        except asyncio.CancelledError:  # its client left
            if turn.done() and not turn.cancelled():  # an engine was handed to it just then: on to the next
                self._hand_on(turn.result())
            elif turn in self.waiting:
                self.waiting.remove(turn)
            raise

    def _hand_on(self, engine) -> None:
        """A finished engine to the request waiting longest, else back to the free ones."""
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():  # a cancelled wait is done: skipped
                turn.set_result(engine)
                return
        self.free.append(engine)


def engine_pool(served_engine) -> EnginePool:
    """The mask maker's engines lent one request at a time, one pool per served engine, kept on it so every route
    that segments (this one, IOPaint's InteractiveSeg) shares it and no engine runs two calls at once."""
    if served_engine.segment_pool is None:
        served_engine.segment_pool = EnginePool(served_engine.manager.engines, served_engine.manager.queue_size)
    return served_engine.segment_pool


def segment_engines(models, served_engine, field: str = "model") -> list:
    """The mask maker's loaded engines, checked before any work of a segmenting route (this one, IOPaint's
    InteractiveSeg): a 503 while the server drains; a 422 naming `field` when none can segment here (the Ray
    Serve ingress's remote engines, or none loaded: an empty pool would wait for ever)."""
    if models.draining:
        raise ApiError(503, "server", "the server is shutting down", "retry against a running server")
    engines = served_engine.manager.engines
    if not engines or not all(hasattr(engine, "segment") for engine in engines):
        raise ApiError(422, field, f"the mask maker {served_engine.name!r} cannot segment on this server (the Ray "
                       "Serve ingress runs inpaint and outpaint only)",
                       "serve the mask maker with inpaint-serve without --ray")
    return engines


def segment_router(models, limits, guarded: list) -> APIRouter:
    """POST /v1/segment over the server's engines (engines.ServedEngines)."""
    router = APIRouter()

    @router.post("/v1/segment", dependencies=guarded, openapi_extra=openapi_body(), summary=SUMMARY,
                 responses={200: {"content": {"image/png": {}, "application/json": {}},
                                  "description": "The best mask (X-Scores, X-Mask-Index headers) or JSON with base64"}})
    async def segment(request: Request):
        params, data = await read_segment_request(request, limits.max_upload_bytes)
        served_engine = pick_segmenter(models, params.model)
        refuse_foreign(segment_engines(models, served_engine)[0], params)
        if data is None:
            raise ApiError(422, "image", "image is required", "send image as a file part or base64 field")
        # decoding and encoding pictures takes a while for big ones: off the event loop, as the engine call
        image = await asyncio.to_thread(decode_picture, data, "image", limits.max_pixels)  # over max_pixels: a 413
        arguments = engine_arguments(params, family(served_engine.facts["family"]), image.size, limits.max_pixels)
        found = await engine_pool(served_engine).run(lambda engine: run_segment(engine, image, arguments))
        return await asyncio.to_thread(answer, found, params.format, params.multimask_output)

    return router


async def read_segment_request(request, max_upload_bytes: int) -> tuple[SegmentParameters, bytes | None]:
    """The checked fields and the picture's bytes (None: not sent), from multipart or JSON."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        fields, data = await _read_multipart(request, max_upload_bytes)
    elif kind == "application/json":
        fields, data = await _read_json(request)
    else:
        raise ApiError(415, "content-type", f"content type {kind or 'none'!r} is not accepted",
                       "send multipart/form-data (the image file) or application/json (image as base64)")
    if "response_format" in fields:  # the painting routes' name for it
        raise ApiError(422, "response_format", "response_format is not a field of /v1/segment; it is called format "
                       "here", "send format=png or format=json")
    try:
        params = SegmentParameters.model_validate(fields)
    except ValidationError as e:
        error = validation_error(e.errors(), set(SegmentParameters.model_fields) | {"image"})
        if error.field in FIXES and e.errors()[0]["type"] not in ("extra_forbidden", "missing"):
            error.fix = FIXES[error.field]  # a value refused: say what fits
        raise error from None
    return params, data


async def _read_multipart(request, max_upload_bytes: int) -> tuple[dict, bytes | None]:
    form = await read_form(request, "send multipart/form-data with the file image and one part per field",
                           max_files=1, max_fields=20, max_part_size=max_upload_bytes)
    fields, data = {}, None
    for name, value in form.multi_items():
        if name in fields or (name == "image" and data is not None):
            raise ApiError(422, name, f"{name} was sent more than once", f"send {name} once")
        if name == "image":
            if isinstance(value, str):
                raise ApiError(422, name, "image arrived as a text field, not a file",
                               "send image as a file part (curl: -F image=@picture.png)")
            data = await value.read()
        elif not isinstance(value, str):
            raise ApiError(422, name, f"{name} arrived as a file; only image is a file", f"send {name} as a text field")
        elif name in LISTS and value:
            try:
                fields[name] = json.loads(value)
            except json.JSONDecodeError:
                raise ApiError(422, name, f"{name}={value[:60]!r} is not JSON", FIXES[name]) from None
        elif value != "":  # an empty form field means "not given"
            fields[name] = value
    return fields, data


async def _read_json(request) -> tuple[dict, bytes | None]:
    fields = await json_object(request, "send one JSON object with image as base64 and the other fields")
    if "image" not in fields:
        return fields, None
    text = fields.pop("image")
    if not isinstance(text, str):
        raise ApiError(422, "image", f"image must be base64 text, got {type(text).__name__}",
                       "send image as base64 text of the file's bytes")
    return fields, decode_base64(text, "image")


def pick_segmenter(models, name: str | None):
    """The engine `model` names, which must be a mask maker; left out, the first mask maker served."""
    if name:
        served_engine = models.pick(name)  # an unknown name: a 422 listing the engines
        if served_engine.kind() != SEGMENTER:
            raise ApiError(422, "model", f"model={name!r} is a {served_engine.kind()} engine, not a mask maker",
                           f"{FIXES['model']}, or leave model out for the first")
        return served_engine
    found = next(iter(models.of_kind(SEGMENTER)), None)
    if found is None:
        raise ApiError(422, "model", f"this server has no mask maker (engines: {', '.join(models.names())})",
                       "start inpaint-serve with a Segment Anything or CLIPSeg engine as one of its --engine "
                       "directories (inpaint-export --kind sam / clipseg)")
    return found


def refuse_foreign(engine, params: SegmentParameters) -> None:
    """The other mask maker's fields given off their defaults: a 422 by the engine's own rule."""
    own = "clicks" if engine.record.clicks else "phrases"
    given = {name: getattr(params, name) for name in SEGMENT_SPECS
             if name in SegmentParameters.model_fields and SEGMENT_SPECS[name].needs not in ("", own)}
    try:
        engine.refuse_foreign(given)
    except InvalidArgument as e:
        raise ApiError(422, e.field, str(e), request_fix(e.fix, f"leave {e.field} out")) from None


def engine_arguments(params: SegmentParameters, record, size: tuple[int, int], max_pixels: int) -> dict:
    """Engine.segment's keyword arguments, checked against the picture by engine/segmenter.py's rules."""
    width, height = size
    try:
        if record.clicks:
            coords, _ = check_points(params.points, params.labels, width, height)
            check_prompt(coords, check_box(params.box, width, height))  # neither given: refused before the engine
            return {"points": params.points or None, "labels": params.labels, "box": params.box,
                    "multimask_output": params.multimask_output, "max_pixels": max_pixels}
        threshold = THRESHOLD if params.threshold is None else params.threshold
        return {"text": check_text(params.text), "threshold": threshold, "max_pixels": max_pixels}
    except InvalidArgument as e:
        raise ApiError(422, e.field, str(e), request_fix(e.fix, FIXES.get(e.field, f"change {e.field}"))) from None


def run_segment(engine, image, arguments: dict):
    """On a worker thread: the engine's call. Its refusals (InvalidArgument) are 422s naming their field; NaN or
    infinite numbers (FloatingPointError) are the engine's precision overflowing, a server setting: a 500 that
    says so; anything else is a bug: a 500 as a failed job's (job_routes.job_refusal)."""
    try:
        return engine.segment(image, **arguments)
    except InvalidArgument as e:
        raise ApiError(422, e.field, str(e), request_fix(e.fix, f"change {e.field}")) from None
    except FloatingPointError as e:
        raise ApiError(500, "server", f"the mask maker's numbers overflowed, which is this server's precision "
                       f"setting, not the request: {e}", "ask the server's operator to serve this engine with "
                       "--precision fp32; another picture may pass meanwhile") from None
    except Exception as e:  # the server keeps serving whatever one request does
        raise ApiError(500, "server", f"internal error: {type(e).__name__}: {e}",
                       "report this with the request that caused it") from None


def best_index(found, multimask: bool) -> int:
    """The mask a PNG answer gives: the first, or with several candidates the highest score."""
    return int(np.argmax(found.scores)) if multimask and len(found.scores) > 1 else 0


def answer(found, response_format: str, multimask: bool) -> Response:
    """The masks as the request asked (on a worker thread: PNG encoding takes a while for big ones)."""
    best = best_index(found, multimask)
    scores = [float(score) for score in found.scores]
    height, width = (int(side) for side in found.masks.shape[1:])
    if response_format == "json":
        masks = [base64.b64encode(png_bytes(found.mask_image(i))).decode() for i in range(len(found.masks))]
        return JSONResponse({"masks": masks, "scores": scores, "best": best, "width": width, "height": height})
    return Response(png_bytes(found.mask_image(best)), media_type="image/png",
                    headers={"X-Scores": json.dumps(scores), "X-Mask-Index": str(best)})
