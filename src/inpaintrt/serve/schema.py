"""The OpenAPI document says every status a route can answer, and the one error shape they share.

FastAPI lists only a route's success (and its own 422 for path parameters, with a shape this server
never sends). A client generated from /openapi.json must know the refusals too, so each operation
gets the statuses of its kind below, all pointing at one `Error` component
(`{"error": {"status", "field", "message", "fix"}}`, errors.py), and the limits the server was
started with appear as `maximum`s, so a request the schema calls valid is accepted. JSON bodies that
carry pictures get a working example (an 8x8 PNG), so a client (or a fuzzer) can start from a request
that succeeds. What JSON Schema cannot say (a string that decodes to a picture, height x width under
max_output_pixels, fields of another model family) is in the field descriptions; docs/reliability.md.
"""
from __future__ import annotations

import base64

from fastapi.openapi.utils import get_openapi

WHY = {400: "The body could not be read (malformed JSON or multipart)",
       401: "The bearer token is missing or wrong (servers started with --token)",
       404: "No such job (finished jobs are kept only for a while)",
       409: "The job is not done: still running, or cancelled",
       413: "The upload is over the size or pixel limit",
       415: "The content type is not accepted",
       422: "A field is wrong; `field` names it and `fix` says what to send",
       429: "Every queue slot is taken; retry after Retry-After seconds",
       500: "The job failed inside the engine (a bug to report)",
       503: "The server is shutting down, or no engine can run jobs now; retry after Retry-After seconds"}
SUBMIT = (400, 401, 413, 415, 422, 429, 503)  # every route that queues work
# (method, path) -> the refusals it can answer; a path not listed answers 401 only where a token guards it
STATUSES = {
    ("post", "/v1/inpaint"): SUBMIT + (500,), ("post", "/v1/outpaint"): SUBMIT + (500,),
    ("post", "/v1/jobs"): SUBMIT, ("post", "/v1/outpaint/jobs"): SUBMIT,
    ("get", "/v1/jobs/{job_id}"): (401, 404), ("delete", "/v1/jobs/{job_id}"): (401, 404),
    ("get", "/v1/jobs/{job_id}/events"): (401, 404, 422),
    ("get", "/v1/jobs/{job_id}/result"): (401, 404, 409, 422, 500, 503),
    ("post", "/sdapi/v1/img2img"): SUBMIT + (500,), ("post", "/sdapi/v1/txt2img"): SUBMIT + (500,),
    ("post", "/sdapi/v1/options"): (400, 401, 422),
    ("post", "/v1/segment"): SUBMIT + (500,),  # 429: every engine of the mask maker busy and its queue full
    ("get", "/v1/health"): (503,),  # no engine can run jobs (on Ray Serve: no replica is running)
}
EVENTS = {"description": "Server-sent events: `progress`, then one of `done`, `failed`, `cancelled`; each `data:` is "
                         "the job's JSON as GET /v1/jobs/{job_id} shows it",
          "content": {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {
              "event": {"enum": ["progress", "done", "failed", "cancelled"]},
              "data": {"type": "string", "contentMediaType": "application/json"}}}}}}
OPTIONS_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "Values as GET /sdapi/v1/options shows them; sd_model_checkpoint picks the "
                                     "engine (GET /sdapi/v1/sd-models lists them)"}}}}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["status", "field", "message", "fix"], "properties": {
        "status": {"type": "integer"}, "field": {"type": "string", "description": "the field (or part) at fault"},
        "message": {"type": "string"}, "fix": {"type": "string", "description": "what to send instead"}}}}}


def openapi_with_errors(app, limits_maximum: dict[str, int], guarded: bool) -> dict:
    """The app's schema with every refusal documented; cached on the app like FastAPI's own."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    for schemas in schema["components"]["schemas"].values():
        for name, maximum in limits_maximum.items():
            if name in schemas.get("properties", {}):
                _cap(schemas["properties"][name], maximum)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            statuses = STATUSES.get((method, path), (401,) if guarded and path != "/v1/health" else ())
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation shape, which this server never sends
            for status in statuses:
                responses[str(status)] = {"description": WHY[status], "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for body in operation.get("requestBody", {}).get("content", {}).values():
                for name, maximum in limits_maximum.items():
                    if name in body.get("schema", {}).get("properties", {}):
                        _cap(body["schema"]["properties"][name], maximum)
            _add_example(operation)
    schema["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"] = EVENTS
    if "/sdapi/v1/options" in schema["paths"]:  # the route reads the raw body: FastAPI cannot see it
        schema["paths"]["/sdapi/v1/options"]["post"]["requestBody"] = OPTIONS_BODY
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def _cap(prop: dict, maximum: int) -> None:
    """Set a `maximum` on a property, also inside anyOf (Optional fields)."""
    for option in prop.get("anyOf", [prop]):
        if option.get("type") in ("integer", "number"):
            option["maximum"] = min(option.get("maximum", maximum), maximum)


def tiny_png(mask: bool) -> str:
    """base64 of an 8x8 PNG: grey, or a white mask (all repainted: it survives A1111's mask blur)."""
    from PIL import Image

    from .pictures import png_bytes

    picture = Image.new("L", (8, 8), 255) if mask else Image.new("RGB", (8, 8), (128, 128, 128))
    return base64.b64encode(png_bytes(picture)).decode()


def _add_example(operation: dict) -> None:
    """A small request that succeeds on any engine: 64x64, 2 steps, the example pictures."""
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is None or "example" in body:  # a route with its own example (POST /v1/segment's)
        return
    fields = body["schema"].get("properties", {})
    example = {"height": 64, "width": 64, "seed": 1}
    if "num_inference_steps" in fields:
        example["num_inference_steps"] = 2
    if "steps" in fields:
        example["steps"] = 2
    if "image" in fields:
        example["image"] = tiny_png(False)
    if "mask_image" in fields and "left" not in fields:
        example["mask_image"] = tiny_png(True)
    if "left" in fields:
        example["left"] = 8
    if "init_images" in fields:
        example.update(init_images=[tiny_png(False)], mask=tiny_png(True))
    body["example"] = example
