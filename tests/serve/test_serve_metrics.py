"""GET /metrics (Prometheus text) and the access log against a real `inpaint-serve` on 127.0.0.1: the
counters move with the requests that were made, job ids stay out of the route labels, the gauges
read the live queue, and the access log has one JSON line per job without prompts unless asked."""
from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

from serve_helpers import FAST, files, form, running_server  # noqa: E402


def scrape(url: str) -> dict[tuple, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in parser.text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def access_lines(output: list[str]) -> list[dict]:
    return [json.loads(line) for line in output if line.startswith('{"event": "job"')]


@pytest.mark.parametrize("log_prompts", [False, True])
def test_metrics_and_access_log_follow_the_requests(engines, log_prompts):
    args = ("--log-prompts",) if log_prompts else ()
    with running_server(engines[9], "--workers", "1", *args) as server:
        before = scrape(server.url)
        assert value(before, "inpaintrt_workers") == 1 and value(before, "inpaintrt_queue_size") == 16
        assert value(before, "inpaintrt_engine_load_seconds") > 0
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for seed in (1, 2):
                fields = {**FAST, "seed": seed, "prompt": "a secret garden"}
                assert client.post("/v1/inpaint", files=files(), data=form(fields)).status_code == 200
            assert client.post("/v1/inpaint", files=files(), data=form({**FAST, "num_inference_steps": 0})
                               ).status_code == 422
            job = client.post("/v1/jobs", files=files(), data=form({**FAST, "seed": 3})).json()
            client.get(f"/v1/jobs/{job['id']}")
        after = scrape(server.url)
        ok = value(after, "inpaintrt_http_requests_total", method="POST", route="/v1/inpaint", status="200")
        assert ok - value(before, "inpaintrt_http_requests_total", method="POST", route="/v1/inpaint",
                          status="200") == 2
        assert value(after, "inpaintrt_http_requests_total", method="POST", route="/v1/inpaint", status="422") == 1
        assert value(after, "inpaintrt_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") == 1
        assert not any(job["id"] in str(key) for key in after)  # route templates, never raw ids
        assert value(after, "inpaintrt_job_run_seconds_count", task="inpaint", status="done") >= 2
        assert value(after, "inpaintrt_denoising_steps_total") >= 4  # 2 steps each, PNDM adds its warm-up call
        assert value(after, "inpaintrt_unet_batch_images_count") >= 2
        lines = access_lines(server.output)
        assert {line["seed"] for line in lines} >= {1, 2}
        done = [line for line in lines if line["seed"] in (1, 2)]
        assert all(line["status"] == "done" and line["width"] == 64 and line["run_ms"] > 0 for line in done)
        logged = "a secret garden" in "".join(server.output)
        assert logged == log_prompts
