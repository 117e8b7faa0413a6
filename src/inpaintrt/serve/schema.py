"""The OpenAPI document says every status a route can answer, and the one error shape they share.

FastAPI lists only a route's success (and its own 422 for path parameters, with a shape this server
never sends). A client generated from /openapi.json must know the refusals too, so each operation
gets the statuses of its kind below, all pointing at one `Error` component
(`{"error": {"status", "field", "message", "fix"}}`, errors.py), and the limits the server was
started with appear as `maximum`s, so a request the schema calls valid is accepted.
"""
from __future__ import annotations

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
       503: "The server is shutting down"}
SUBMIT = (400, 401, 413, 415, 422, 429, 503)  # every route that queues work
# (method, path) -> the refusals it can answer; a path not listed answers 401 only where a token guards it
STATUSES = {
    ("post", "/v1/inpaint"): SUBMIT + (500,), ("post", "/v1/outpaint"): SUBMIT + (500,),
    ("post", "/v1/jobs"): SUBMIT, ("post", "/v1/outpaint/jobs"): SUBMIT,
    ("get", "/v1/jobs/{job_id}"): (401, 404), ("delete", "/v1/jobs/{job_id}"): (401, 404),
    ("get", "/v1/jobs/{job_id}/events"): (401, 404),
    ("get", "/v1/jobs/{job_id}/result"): (401, 404, 409, 422, 500, 503),
    ("post", "/sdapi/v1/img2img"): SUBMIT + (500,), ("post", "/sdapi/v1/txt2img"): SUBMIT + (500,),
    ("post", "/sdapi/v1/options"): (400, 401, 422),
}
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
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def _cap(prop: dict, maximum: int) -> None:
    """Set a `maximum` on a property, also inside anyOf (Optional fields)."""
    for option in prop.get("anyOf", [prop]):
        if option.get("type") in ("integer", "number"):
            option["maximum"] = min(option.get("maximum", maximum), maximum)
