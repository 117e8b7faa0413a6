"""The OpenAPI document a real `inpaint-serve` serves describes what it answers: every refusal status of
each route with the one Error component, the limits it was started with as maxima, and 405 answers that
list every method of the path in Allow."""
from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")

from serve_helpers import AUTH, FAST, TOKEN, files, form, running_server  # noqa: E402


@pytest.fixture(scope="module")
def server(engines):
    with running_server(engines[9], "--token", TOKEN, "--max-steps", "77", "--queue-size", "5") as s:
        yield s


@pytest.fixture(scope="module")
def schema(server):
    return httpx.get(f"{server.url}/openapi.json", timeout=30).json()


def test_every_route_documents_its_refusals_with_the_error_shape(schema):
    error = {"$ref": "#/components/schemas/Error"}
    assert set(schema["components"]["schemas"]["Error"]["properties"]["error"]["required"]) == {
        "status", "field", "message", "fix"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            refusals = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
            if path != "/v1/health":
                assert "401" in refusals, (method, path)  # the server was started with a token
            for code, response in refusals.items():
                assert response["content"]["application/json"]["schema"] == error, (method, path, code)
    inpaint = schema["paths"]["/v1/inpaint"]["post"]["responses"]
    assert {"400", "413", "415", "422", "429", "503"} <= set(inpaint)
    assert {"404", "409"} <= set(schema["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # a shape this server never sends


def test_the_limits_the_server_runs_with_are_in_the_schema(schema):
    def prop(path, name):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        found = body["properties"][name]
        return next(o for o in found.get("anyOf", [found]) if o.get("type") == "integer")

    assert prop("/v1/inpaint", "num_inference_steps")["maximum"] == 77
    assert prop("/v1/jobs", "num_inference_steps")["maximum"] == 77
    assert prop("/sdapi/v1/img2img", "steps")["maximum"] == 77
    assert prop("/sdapi/v1/txt2img", "batch_size")["maximum"] == 5


def test_the_documented_shape_is_what_a_refusal_sends(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        for answer in (client.post("/v1/inpaint", files=files(), data=form({**FAST, "num_inference_steps": 78})),
                       client.get("/v1/jobs/nothing-here"), httpx.get(f"{server.url}/v1/info")):
            assert answer.status_code in (401, 404, 422)
            assert set(answer.json()) == {"error"} and set(answer.json()["error"]) == {"status", "field", "message",
                                                                                       "fix"}


@pytest.mark.parametrize("method, path, allowed", [
    ("OPTIONS", "/v1/jobs/abc", "DELETE, GET"), ("PUT", "/v1/inpaint", "POST"), ("GET", "/sdapi/v1/img2img", "POST"),
    ("DELETE", "/sdapi/v1/options", "GET, POST"),
])
def test_405_lists_every_method_of_the_path(server, method, path, allowed):
    answer = httpx.request(method, f"{server.url}{path}", headers=AUTH, timeout=30)
    assert answer.status_code == 405 and answer.headers["allow"] == allowed
    assert answer.json()["error"]["fix"] == f"use {allowed.replace(', ', ' or ')}"
