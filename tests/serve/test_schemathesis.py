"""The OpenAPI document and the server agree, as an independent fuzzer (schemathesis) reads them: every
route, /sdapi/v1/* and /v1/segment included, every check, against a real `inpaint-serve` (tiny model, and a tiny
Segment Anything engine for /v1/segment), bounded.

Left out, because OpenAPI cannot express it (the field descriptions and docs/reliability.md say it):
- `positive_data_acceptance` on the routes that generate pictures and on POST /sdapi/v1/options. A
  request the schema calls valid may still be refused with a documented 422 there: a base64 string
  must decode to a picture, height x width must stay under max_output_pixels, Kandinsky-only fields
  are refused by SD engines, an option must hold the value GET /sdapi/v1/options shows, and /v1/segment's
  points must lie inside the picture (and CLIPSeg's text is refused by Segment Anything). Every
  other check still runs on those routes (no 5xx, documented statuses, content types and shapes,
  negative data refused), and their schema examples (real 8x8 PNGs) must succeed.
- `use_after_free` (a resource answered after its DELETE): DELETE /v1/jobs/{job_id} cancels a job, and
  the job stays readable (status `cancelled`) so its clients learn how it ended; it removes nothing.
The job routes are fuzzed around a real job's id (created from the schema's example first).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")

from serve_helpers import running_server  # noqa: E402

EXAMPLES = 12  # per operation and phase: with 21 operations the run takes about a minute here
GENERATING = r"^/(v1/(inpaint|jobs|outpaint|outpaint/jobs|segment)|sdapi/v1/(img2img|txt2img|options))$"
CONFIG = f"""
[checks]
enabled = true
use_after_free.enabled = false

[[operations]]
include-path-regex = '{GENERATING}'
include-method = "POST"
checks.positive_data_acceptance.enabled = false

[parameters]
job_id = "{{job_id}}"
"""
# small pictures and few steps keep each generated request to milliseconds on the tiny model
SERVER = ("--max-steps", "50", "--max-output-pixels", "4096", "--max-outpaint-passes", "2", "--queue-size", "64")


def test_the_server_keeps_every_promise_of_its_openapi_document(engine_dir, sam_engine_dir, tmp_path):  # noqa: F811
    config = tmp_path / "schemathesis.toml"
    report = tmp_path / "report.json"
    with running_server(engine_dir, "--engine", str(sam_engine_dir), *SERVER) as server:
        paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
        job_id = _examples_succeed(server.url, paths)
        config.write_text(CONFIG.replace("{job_id}", job_id))
        run = subprocess.run(  # [checks] enabled = true in the config: every check, as --checks all
            [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run",
             f"{server.url}/openapi.json", "--max-examples", str(EXAMPLES), "--seed", "1",
             "--workers", "1", "--generation-database", "none", "--request-timeout", "60", "--no-color",
             "--report", "json", "--report-json-path", str(report)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = run.stdout[-6000:]
    assert run.returncode == 0, f"schemathesis found mismatches:\n{summary}\n{run.stderr[-2000:]}"
    results = json.loads(report.read_text())
    assert "/sdapi/v1/img2img" in paths and results["operations"]["tested"] == results["operations"]["total"]
    assert results["test_cases"]["generated"] > 1000 and not results["failures"] and not results["errors"], summary
    assert not results["warnings"]["missing_test_data"], "the job routes must reach a real job"


def _examples_succeed(url: str, paths: dict) -> str:
    """POST each schema example (each must succeed); returns the id of the job POST /v1/jobs made."""
    job_id = None
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, operations in paths.items():
            body = operations.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" in body:
                answer = client.post(path, json=body["example"])
                assert answer.status_code in (200, 202), f"POST {path} with its example: {answer.text}"
                job_id = answer.json()["id"] if path == "/v1/jobs" else job_id
    assert job_id, "POST /v1/jobs has an example"
    return job_id


def test_a1111_stochastic_sampler_settings_are_refused_by_name(engine_dir):
    """The fuzzer found these answered a bare 500 (no wording for them); now a 422 names the field."""
    with running_server(engine_dir, *SERVER) as server:
        example = httpx.get(f"{server.url}/openapi.json").json()
        body = example["paths"]["/sdapi/v1/img2img"]["post"]["requestBody"]["content"]["application/json"]["example"]
        for name, value in (("s_noise", 0.5), ("s_churn", 1), ("s_tmin", 2.5)):
            answer = httpx.post(f"{server.url}/sdapi/v1/img2img", json={**body, name: value}, timeout=60)
            assert answer.status_code == 422, answer.text
            error = answer.json()["error"]
            assert error["field"] == name and "stochastic sampler settings" in error["message"], json.dumps(error)
