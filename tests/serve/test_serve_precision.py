"""`inpaint-serve --backend/--precision/--cuda-graph`: the server loads its engines as Engine.load
would with the same choices, reports them in /v1/info, and refuses a pair no backend runs before
anything loads."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import FAST, engine_reference, files, form, pixels, running_server  # noqa: E402


@pytest.mark.parametrize("backend,precision,message", [
    ("ort-cpu", "bf16", "precision='bf16' runs on OpenVINO"),
    ("openvino", "fp16", "precision='fp16' chooses ort-cuda's graphs"),
])
def test_a_precision_the_backend_cannot_run_stops_the_server_before_loading(engines, backend, precision, message):
    command = [sys.executable, "-m", "inpaintrt.serve.cli", "--engine", str(engines[9]), "--port", "0",
               "--backend", backend, "--precision", precision]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "leave precision unset" in done.stderr
    assert "inpaint-serve: http" not in done.stdout  # it never listened


def test_bf16_server_gives_the_bf16_engine_result_and_says_so(engines, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed: `pip install 'inpaintrt[openvino]'`")
    from inpaintrt import Engine
    from inpaintrt.engine.openvino_backend import cpu_has_bf16, load_openvino

    if not cpu_has_bf16(load_openvino().Core()):
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    engine_dir = shutil.copytree(engines[9], tmp_path / "engine")  # its model cache stays out of the shared one
    with running_server(engine_dir, "--precision", "bf16") as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            model = client.get("/v1/info").json()["model"]
            assert (model["backend"], model["precision"]) == ("openvino", "bf16")
            answer = client.post("/v1/inpaint", files=files(), data=form({**FAST, "seed": 11}))
            assert answer.status_code == 200, answer.text
            served = pixels(answer.content)
    bf16 = Engine.load(engine_dir, precision="bf16")
    assert np.array_equal(served, engine_reference(bf16, 11))
    exact = engine_reference(Engine.load(engine_dir), 11)  # fp32: bf16 really ran, so they differ
    assert not np.array_equal(served, exact)
