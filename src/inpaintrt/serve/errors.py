"""One error shape for every refusal: {"error": {"status", "field", "message", "fix"}}.

A client (or a person reading the page) learns which field was wrong and what to send instead;
nothing a request contains should reach the user as a bare 500.
"""
from __future__ import annotations

import difflib

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.argument_specs import SPECS
from .numbers import NOT_A_NUMBER


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str, fix: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.fix, self.headers = status, field, message, fix, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.field, self.message, self.fix, self.headers)


def error_response(status: int, field: str, message: str, fix: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"status": status, "field": field, "message": message, "fix": fix}}
    return JSONResponse(body, status_code=status, headers=headers)


MAX_PROMPT = 2000  # characters of a prompt field, on every route

# the fix for a field pydantic refused that the argument table does not describe (or describes only in part)
FIELD_FIXES = {
    "model": "send the name of one of the engines GET /v1/info lists under models, or leave it out",
    "prompt": f"send a text of at most {MAX_PROMPT} characters",
    "negative_prompt": f"send a text of at most {MAX_PROMPT} characters, or leave it out",
    "negative_prior_prompt": f"send a text of at most {MAX_PROMPT} characters, or leave it out",
    "num_inference_steps": "send a whole number from 1 to the server's max_steps (GET /v1/info)",
    "prior_num_inference_steps": "send a whole number from 2 to the server's max_steps (GET /v1/info)",
    "scheduler": "send one of the names GET /v1/info lists under schedulers, or leave it out",
    "scheduler_options": "send a JSON object of scheduler settings, e.g. {\"use_karras_sigmas\": true}",
    "seed": "send an integer from 0 to 2**63 - 1, or leave it out for a random one",
    "height": "send height as a multiple of 8 (at least 8), or leave it out for the model's default",
    "width": "send width as a multiple of 8 (at least 8), or leave it out for the model's default",
    "response_format": "send png or json",
    "image": "send the picture as a PNG, JPEG or WebP file (multipart) or base64 text (JSON)",
    "mask_image": "send the mask (white = repaint) as a PNG file (multipart) or base64 text (JSON)",
    **{name: f"send {name} as a number {SPECS[name].served().range_text()}, or one per ControlNet (GET /v1/info "
             "lists them)"
       for name in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")},
    "guess_mode": "send guess_mode as true or false",
    "image_prompt_weight": "send one finite number per image_prompt, in the same order",
}


def request_fix(fix: str | None, otherwise: str) -> str:
    """The fix an engine's InvalidArgument carries, worded for a request ("pass" becomes "send")."""
    if not fix:
        return otherwise
    return "send" + fix[4:] if fix.startswith("pass ") else fix


def field_fix(field: str, otherwise: str = "see GET /docs for this field") -> str:
    """What to send for a field whose value pydantic refused: FIELD_FIXES, else its line of the
    engines' argument table with this server's bounds (engine/argument_specs.py)."""
    if field in FIELD_FIXES:
        return FIELD_FIXES[field]
    spec = SPECS.get(field)
    if spec is None or spec.kind == "other":
        return otherwise
    optional = ", or leave it out" if spec.default is None else ""
    return f"send {field} as {spec.served().wanted()}{optional}"


# names other tools give the same fields
ALIASES = {"steps": "num_inference_steps", "num_steps": "num_inference_steps", "cfg_scale": "guidance_scale",
           "cfg": "guidance_scale", "guidance": "guidance_scale", "generator": "seed", "denoising_strength": "strength",
           "sampler": "scheduler", "sampler_name": "scheduler", "negative": "negative_prompt", "mask": "mask_image",
           "init_image": "image", "init_images": "image", "mask_blur": "blur_factor", "inpaint_full_res_padding":
           "padding_mask_crop", "format": "response_format"}


def did_you_mean(field: str, known) -> str | None:
    """The field an unknown name most likely stands for: a known alias, else the closest spelling."""
    known = sorted(known)
    if ALIASES.get(field.lower()) in known:
        return ALIASES[field.lower()]
    close = difflib.get_close_matches(field.lower(), known, n=1, cutoff=0.7)
    return close[0] if close else None


def validation_error(errors: list[dict], known=()) -> ApiError:
    """The first pydantic error as an ApiError naming its field; `known`: the endpoint's fields."""
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = location[0] if location else "body"
    if first.get("type") == "extra_forbidden":
        meant = did_you_mean(field, known)
        if meant:
            return ApiError(422, field, f"{field} is not a field of this endpoint; did you mean {meant}?",
                            f"send it as {meant}; GET /docs lists every field")
        return ApiError(422, field, f"{field} is not a field of this endpoint",
                        "leave it out; GET /docs lists every field")
    if first.get("type") == "missing":
        return ApiError(422, field, f"{field} is required", field_fix(field, "send it"))
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    otherwise = f"send {field} as a number (true and false are not numbers)" if first.get("type") == NOT_A_NUMBER \
        else "see GET /docs for this field"
    return ApiError(422, field, f"{field}={shown}: {first.get('msg', 'invalid value')}",
                    field_fix(field, otherwise))


def install_handlers(app) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def request_validation(_: Request, e: RequestValidationError):
        return validation_error(list(e.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        fixes = {404: "check the path; GET /docs lists the endpoints", 405: "check the method; see GET /docs"}
        headers = getattr(e, "headers", None)
        if e.status_code == 405:  # every method of every route on this path, not only the first route's
            allowed = allowed_methods(request.app, request.scope)
            headers, fixes[405] = {**(headers or {}), "Allow": ", ".join(allowed)}, f"use {' or '.join(allowed)}"
        return error_response(e.status_code, "path", f"{request.method} {request.url.path}: {e.detail}",
                              fixes.get(e.status_code, "see GET /docs"), headers)


def allowed_methods(app, scope) -> list[str]:
    """The methods the app answers on this request's path, over every route (included routers too)."""
    def routes(found):
        for route in found:
            inner = getattr(route, "original_router", None)  # FastAPI's record of an included router
            yield from routes(inner.routes) if inner is not None else [route]

    return sorted({method for route in routes(app.router.routes) if getattr(route, "methods", None)
                   and getattr(route, "path_regex", None) and route.path_regex.match(scope["path"])
                   for method in route.methods})


async def json_object(request, fix: str = "send one JSON object") -> dict:
    """The request's JSON body, which must be one object: a 400 naming `body` otherwise."""
    import json

    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "body", f"the JSON body could not be parsed: {e}", fix) from None
    if not isinstance(body, dict):
        raise ApiError(400, "body", f"the JSON body is a {type(body).__name__}, not an object", fix)
    return body


async def read_form(request, fix: str, max_files: int, max_fields: int, max_part_size: int):
    """The multipart form (Starlette's FormData). The parser's own complaints (a malformed body, too many parts)
    are a 400 naming the body with `fix`; limits.BodyLimit's 413, raised while the body is read, stays a 413."""
    try:
        return await request.form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)
    except ApiError:
        raise
    except Exception as e:
        detail = getattr(e, "detail", None) or str(e) or type(e).__name__
        raise ApiError(400, "body", f"the multipart body could not be read: {detail}", fix) from None
